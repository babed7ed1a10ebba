"""Batch inference over a cohort of scans (``pipeline infer``): an application on top of the stages, like
:mod:`pipeline.bundle`.

The model is loaded once. Cases flow through three steps that overlap: reading + preprocessing (prefetch threads),
the sliding window (the model's device) and mapping back + writing (a writer thread). A case already done with the
same input bytes, model and options is skipped; every output is written atomically and checked against its input's
geometry; a case that fails is reported and the others go on. ``report.json`` and ``report.csv`` list every case.
A scan with NaN or infinite voxels is refused, or with ``nan_policy="fill"`` filled with its minimum (per channel,
:mod:`pipeline.transforms.finite`) and the count reported (``filled_voxels``).

With ``executor="ray"`` the same per-case work runs in Ray actors (one model per actor, a GPU each when the cluster
has them); the report is the same.

Modules: :mod:`~pipeline.cohort.inputs` (which scans, one job each), :mod:`~pipeline.cohort.runner` (the per-case
work), :mod:`~pipeline.cohort.executors` (how the cases run: ``local``, ``ray``) and :mod:`~pipeline.cohort.report`.
This module imports torch and ITK inside its functions: the command line imports it to build its parser.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.cohort.executors import EXECUTORS
from pipeline.cohort.report import BatchStopped, ReportWriter, Row
from pipeline.errors import PipelineError
from pipeline.io.atomic import make_folder, write_faults

if TYPE_CHECKING:
    from pipeline.bundle import Bundle

log = logging.getLogger("pipeline")


@dataclass
class InferOptions:
    """What ``pipeline infer`` was asked to do (everything but the inputs and the model)."""

    output: Path
    suffix: str = ""
    probabilities: bool = False
    crf: bool = False
    overwrite: bool = False
    device: str = "auto"
    prefetch: int = 2
    # NaN or infinite voxels: "refuse" the case, or "fill" them with the scan's minimum (per channel) and count
    # them; None: what the bundle was trained with (its preprocess.nan_policy), see :meth:`resolve`.
    nan_policy: Literal["refuse", "fill"] | None = None
    max_voxels: int = 2**28  # a scan whose header declares more voxels (times channels) is refused unread
    # The network's arithmetic (auto, fp32, bf16, fp16) and torch.compile; None: the bundle's infer settings.
    precision: str | None = None
    compile: bool | None = None

    def resolve(self, bundle: Bundle) -> InferOptions:
        """These options with the bundle's defaults filled in: ``nan_policy`` (refuse for a bundle that does not
        record one), ``precision`` and ``compile`` (its ``infer`` settings)."""
        return replace(self, nan_policy=self.nan_policy or bundle.preprocess.nan_policy,
                       precision=self.precision or bundle.infer.precision,
                       compile=bundle.infer.compile if self.compile is None else self.compile)

    def infer_config(self, bundle: Bundle) -> Any:
        """The bundle's ``infer`` settings with these options' precision and compile."""
        opts = self.resolve(bundle)
        return bundle.infer.model_copy(update={"precision": opts.precision, "compile": opts.compile})

    def key_part(self) -> dict[str, Any]:
        """The options that change an output's bytes (``nan_policy`` only when ``fill``: refuse is what the keys
        of earlier versions meant)."""
        return {"suffix": self.suffix, "probabilities": self.probabilities, "crf": self.crf,
                **({"nan_policy": "fill"} if self.nan_policy == "fill" else {}),
                **({"compile": True} if self.compile else {})}


def infer_cohort(bundle: Bundle, inputs: Sequence[Path], options: InferOptions, executor: str = "local",
                 ray_address: str | None = None, ray_workers: int | None = None,
                 progress: bool = True) -> list[Row]:
    """Run ``bundle`` over ``inputs`` into ``options.output``; returns the report rows (input order).

    Args:
        executor: a name registered in :data:`~pipeline.cohort.executors.EXECUTORS` (``local``, ``ray``).
        ray_address: the cluster of the ``ray`` executor (default: the running one, else a local instance).
        ray_workers: model copies of the ``ray`` executor (default: one per GPU, else one per 4 CPUs).

    Raises:
        PipelineError: an unknown executor, another batch writing to ``options.output``, nothing to do, or two
            inputs with one output name. Failures of single cases are rows.
        WriteFault: ``options.output`` cannot be a folder or cannot be written (a file, a dangling symlink, a
            read-only filesystem, no permission), named before anything is written.
        PipelineError: the batch stopped at a full disk or a folder that became read-only: the cases done before
            stay, the report lists them (:class:`~pipeline.cohort.report.ReportWriter`).
    """
    from pipeline.cohort.inputs import STATE_DIR
    from pipeline.inference.optimize import tune_allocator

    if executor not in EXECUTORS:
        raise PipelineError(f"--executor: {EXECUTORS.unknown_message(executor)}")
    options = options.resolve(bundle)
    tune_allocator()  # process-wide: reuse freed activation buffers (see its docstring)
    # A file, a dangling symlink, a read-only or forbidden folder: refused by name before anything is written.
    make_folder(options.output, "--output folder")
    make_folder(options.output / STATE_DIR, "--output folder")
    with write_faults(options.output / STATE_DIR / "lock", "--output folder", folder=False):
        lock = open(options.output / STATE_DIR / "lock", "w")  # noqa: SIM115 - held for the whole batch
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise PipelineError(f"another `pipeline infer` is writing to {options.output}; wait for it or use another "
                            "--output") from None
    try:
        return _infer_locked(bundle, inputs, options, executor, ray_address, ray_workers, progress)
    finally:
        lock.close()


def _infer_locked(bundle: Bundle, inputs: Sequence[Path], options: InferOptions, executor: str,
                  ray_address: str | None, ray_workers: int | None, progress: bool) -> list[Row]:
    from tqdm import tqdm

    from pipeline.cohort.inputs import STATE_DIR, earlier_outputs, plan_jobs
    from pipeline.io.scan import remove_stale_temporaries

    earlier = earlier_outputs(options.output)
    inputs = [p for p in inputs if p.resolve() not in earlier]
    if not inputs:
        raise PipelineError("no input scans given (earlier outputs in the output folder are not inputs)")
    stale_found = remove_stale_temporaries(options.output) + remove_stale_temporaries(options.output / STATE_DIR)
    for stale in stale_found:
        log.info("removed %s left by an interrupted run", stale)
    jobs = plan_jobs(inputs, options)
    from pipeline.runtime.device import select_device
    from pipeline.runtime.precision import hardware_summary

    meta = {"model": {"name": bundle.name, "path": str(bundle.path), "digest": bundle.digest},
            "options": {k: str(v) for k, v in asdict(options).items()}, "executor": executor,
            "hardware": hardware_summary(select_device(options.device))}
    report = ReportWriter(options.output, meta, len(jobs))  # a full disk or read-only folder stops the batch

    def on_started(precision: str, warm_up: float | None) -> None:
        """The model is ready (local executor): its resolved precision and compile warm-up, in the report."""
        meta["precision"] = precision
        if warm_up is not None:
            meta["compile_warm_up_seconds"] = round(warm_up, 3)

    rows = report.rows
    bar = tqdm(total=len(jobs), desc="infer", unit="case", disable=not progress, dynamic_ncols=True)

    def on_row(row: Row) -> None:
        bar.update(1)
        bar.set_postfix(failed=sum(r.status == "failed" for r in rows) + (row.status == "failed"), refresh=False)
        if row.status == "failed":
            log.warning("%s: failed: %s", row.case, row.error)
        report.add(row)

    try:
        EXECUTORS.get(executor)(bundle, options, jobs, on_row, address=ray_address, workers=ray_workers,
                                on_started=on_started)
    except BatchStopped:
        pass  # report.outcome() says what happened
    finally:
        bar.close()
        report.write()
    stopped = report.outcome()
    if stopped is not None:
        raise stopped
    return sorted(rows, key=lambda r: r.index)


__all__ = ["InferOptions", "infer_cohort"]
