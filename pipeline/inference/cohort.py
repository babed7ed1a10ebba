"""Batch inference over a cohort of scans (``pipeline infer``).

The model is loaded once. Cases flow through three steps that overlap: reading + preprocessing (prefetch threads),
the sliding window (the model's device) and mapping back + writing (a writer thread). A case already done with the
same input bytes, model and options is skipped; every output is written atomically and checked against its input's
geometry; a case that fails is reported and the others go on. ``report.json`` and ``report.csv`` list every case.

With ``executor="ray"`` the same per-case work runs in Ray actors (one model per actor, a GPU each when the cluster
has them); the report is the same.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import hashlib
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.bundle import Bundle
from pipeline.bundle.bundle import package_versions as bundle_versions
from pipeline.config.schema import CRFConfig
from pipeline.errors import DataError, PipelineError
from pipeline.inference.optimize import tune_allocator
from pipeline.inference.predict import select_device
from pipeline.inference.predictor import NetworkOutput, Predictor
from pipeline.io.atomic import write_json, write_text
from pipeline.io.nifti import spacing_from_affine
from pipeline.io.scan import (
    Scan,
    is_dicom_series,
    mhd_data_file,
    output_name,
    read_scan,
    remove_stale_temporaries,
    scan_suffix,
    write_labels,
    write_probabilities,
)

log = logging.getLogger("pipeline")

STATE_DIR = ".pipeline-infer"  # per-case "done" records (key of input + model + options)
REPORT_FIELDS = ("case", "input", "status", "seconds", "output", "probabilities", "error")


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

    def key_part(self) -> dict[str, Any]:
        """The options that change an output's bytes."""
        return {"suffix": self.suffix, "probabilities": self.probabilities, "crf": self.crf}


@dataclass
class Job:
    """One input and where its outputs go."""

    index: int
    case: str
    input: Path
    output: Path
    probs_output: Path | None


@dataclass
class Row:
    """One line of the report."""

    case: str
    input: str
    status: str  # written | skipped | failed
    seconds: float = 0.0
    output: str = ""
    probabilities: str = ""
    error: str = ""
    index: int = field(default=0, repr=False)


# -- inputs ------------------------------------------------------------------------------------------------------


def _manifest_images(path: Path) -> list[Path]:
    from pipeline.data.manifest import load_manifest

    manifest = load_manifest(path)
    cases = manifest.cases.get("test") or manifest.all_cases()
    return [c.image for c in cases]


def _folder_inputs(folder: Path) -> list[Path]:
    if is_dicom_series(folder):
        return [folder]
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and scan_suffix(p):
            found.append(p)
        elif p.is_dir() and is_dicom_series(p):
            found.append(p)
    return found


def collect_inputs(specs: Sequence[str]) -> list[Path]:
    """Scans named by files, folders (their scans and DICOM series folders), glob patterns or manifests (their test
    cases, else every case).

    Raises:
        PipelineError: a name that matches nothing, or a file in an unsupported format.
    """
    out: list[Path] = []
    for spec in specs:
        matches = [Path(p) for p in sorted(glob.glob(spec))] if any(c in spec for c in "*?[") else [Path(spec)]
        if not matches:
            raise PipelineError(f"--input {spec}: the pattern matches no file")
        for p in matches:
            if p.is_dir():
                found = _folder_inputs(p)
                if not found:
                    raise PipelineError(f"--input {p}: no scans in this folder (.nii, .nii.gz, .mha, .mhd, .nrrd or "
                                        "DICOM series folders)")
                out += found
            elif p.suffix.lower() == ".json":
                out += _manifest_images(p)
            elif not p.exists():
                raise PipelineError(f"--input {p}: no such file or folder")
            elif scan_suffix(p):
                out.append(p)
            elif p.suffix.lower() != ".raw" and not any(c in spec for c in "*?["):
                raise PipelineError(f"--input {p}: not a supported scan (.nii, .nii.gz, .mha, .mhd, .nrrd, a DICOM "
                                    "series folder or a manifest .json)")
    seen: dict[Path, None] = {}
    for p in out:
        seen.setdefault(p.resolve(), None)
    return list(seen)


def plan_jobs(inputs: Sequence[Path], options: InferOptions) -> list[Job]:
    """One job per input; two inputs that would write the same output file are an error."""
    jobs: list[Job] = []
    by_output: dict[Path, Path] = {}
    for i, path in enumerate(inputs):
        name = output_name(path, options.suffix)
        target = options.output / name
        if target in by_output:
            raise PipelineError(f"{path} and {by_output[target]} would both be written to {target}; run them into "
                                "different --output folders or give a --suffix")
        by_output[target] = path
        if target.resolve() == path.resolve():
            raise PipelineError(f"{path} would be overwritten by its own segmentation; choose another --output "
                                "folder or give a --suffix")
        probs = None
        if options.probabilities:
            stem = name[: -len(scan_suffix(Path(name)) or "")]
            probs = options.output / f"{stem}_probs.nii.gz"
            if probs in by_output:
                raise PipelineError(f"{path} and {by_output[probs]} would both write probabilities to {probs}; run "
                                    "them into different --output folders")
            by_output[probs] = path
        case = path.name[: -len(scan_suffix(path) or "")] if path.is_file() else path.name
        jobs.append(Job(i, case, path, target, probs))
    return jobs


# -- one case ----------------------------------------------------------------------------------------------------


def input_digest(path: Path) -> str:
    """sha256 of a scan's bytes: every file of a DICOM folder, an ``.mhd`` with its data file."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if path.is_file() and path.suffix.lower() == ".mhd":
        with contextlib.suppress(OSError):
            data = mhd_data_file(path)
            files += [data] if data is not None and data.is_file() else []
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class Loaded:
    job: Job
    key: str
    scan: Scan
    prepared: dict[str, Any]
    seconds: float = 0.0


class CaseRunner:
    """The per-case work, shared by the local and the Ray executor."""

    def __init__(self, bundle: Bundle, options: InferOptions, device: torch.device | None = None) -> None:
        self.bundle, self.options = bundle, options
        self.device = device or select_device(options.device)
        self.predictor = Predictor(bundle.model, bundle.preprocess, bundle.infer, self.device, bundle.spatial_dims)
        klc = bundle.postprocess.keep_largest_component
        self.klc = list(range(1, bundle.num_classes)) if klc is True else list(klc or [])
        self.crf = (bundle.postprocess.crf or CRFConfig()) if options.crf else None
        self.needs_probs = options.probabilities or self.crf is not None  # on the scan's grid
        # What changes an output's bytes: the model, the options, the code (its version) and the device (float16
        # autocast on CUDA).
        self.model_key = {"bundle": bundle.digest, **options.key_part(), "device": self.device.type,
                          "pipeline": bundle_versions().get("medseg-pipeline")}

    def _state(self, job: Job) -> Path:
        return self.options.output / STATE_DIR / f"{job.output.name}.json"

    def is_done(self, job: Job, key: str) -> bool:
        state = self._state(job)
        try:
            record = json.loads(state.read_text())
        except (OSError, ValueError):
            return False
        outputs = [job.output] + ([job.probs_output] if job.probs_output else [])
        return record.get("key") == key and all(p.is_file() for p in outputs)

    def load(self, job: Job) -> Loaded | Row:
        """Key, skip check, read, check and preprocess (any thread)."""
        t0 = time.perf_counter()
        key = hashlib.sha256(json.dumps({"input": input_digest(job.input), **self.model_key},
                                        sort_keys=True).encode()).hexdigest()
        if not self.options.overwrite and self.is_done(job, key):
            return Row(job.case, str(job.input), "skipped", 0.0, str(job.output),
                       str(job.probs_output or ""), index=job.index)
        scan = read_scan(job.input)
        self.check(scan)
        prepared = self.predictor.prepare(self.model_input(scan), scan.affine, str(job.input))
        return Loaded(job, key, scan, prepared, time.perf_counter() - t0)

    def single_slice(self, scan: Scan) -> bool:
        """A 2D model given a 3D scan one slice thick, ``(x, y, 1)``: how 2D images often come in NIfTI or
        MetaImage. It is segmented as the 2D image and the labels are written back with the scan's shape."""
        return self.bundle.spatial_dims == 2 and scan.spatial_dims == 3 and scan.spatial_shape[2] == 1

    def model_input(self, scan: Scan) -> np.ndarray:
        """The voxels the model takes: ``scan.array``, or its only slice (see :meth:`single_slice`)."""
        return scan.array[:, :, 0] if self.single_slice(scan) else scan.array

    def check(self, scan: Scan) -> None:
        """The scan fits the model: dimensions, channels, no NaN."""
        want = self.bundle.spatial_dims
        if scan.spatial_dims != want and not self.single_slice(scan):
            shape = "x".join(map(str, scan.spatial_shape))
            raise DataError(f"{scan.path}: is a {scan.spatial_dims}D image ({shape}) but the model segments {want}D "
                            f"{'volumes' if want == 3 else 'images (3D scans one slice thick are taken too)'}")
        channels = scan.array.shape[-1] if scan.array.ndim > scan.spatial_dims else 1
        if channels != len(self.bundle.channels):
            raise DataError(f"{scan.path}: has {channels} channel(s) but the model takes "
                            f"{len(self.bundle.channels)} ({', '.join(self.bundle.channels)})")
        if np.issubdtype(scan.array.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(scan.array)))
            if bad:
                raise DataError(f"{scan.path}: has {bad} NaN or infinite voxel(s); fix or mask the scan before "
                                "segmenting it")

    def network(self, loaded: Loaded) -> NetworkOutput:
        t0 = time.perf_counter()
        out = self.predictor.network(loaded.prepared, self.needs_probs)
        loaded.seconds += time.perf_counter() - t0
        return out

    def finish(self, loaded: Loaded, out: NetworkOutput) -> Row:
        """Map back, postprocess, write (probabilities, labels, then the done record) and verify geometry."""
        from pipeline.postprocess.largest_component import keep_largest_component

        t0 = time.perf_counter()
        job, scan = loaded.job, loaded.scan
        labels, probs = self.predictor.restore(out, self.needs_probs)
        if self.crf is not None:
            assert probs is not None
            labels = self._crf(self.model_input(scan), scan.affine, probs)
        if self.klc:
            labels = keep_largest_component(labels, self.klc)
        if job.probs_output is not None:
            assert probs is not None
            probs = np.moveaxis(probs, 0, -1)
            write_probabilities(scan, probs.reshape(*scan.spatial_shape, probs.shape[-1]), job.probs_output)
        write_labels(scan, labels.astype(np.uint8).reshape(scan.spatial_shape), job.output)
        write_json(self._state(job), {"key": loaded.key, "input": str(job.input), "output": str(job.output),
                                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        seconds = loaded.seconds + time.perf_counter() - t0
        return Row(job.case, str(job.input), "written", round(seconds, 3), str(job.output),
                   str(job.probs_output or ""), index=job.index)

    def _crf(self, image: np.ndarray, affine: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Refine ``probs`` ``(K, *spatial)`` with the image the model saw."""
        from pipeline.postprocess.apply_crf import renormalise, run_crf, zscore_channels

        assert self.crf is not None
        nd = probs.ndim - 1
        spacing = spacing_from_affine(affine, nd)
        p = renormalise(np.clip(probs.astype(np.float32), 0, 1) + 1e-8)
        return run_crf(p, zscore_channels(np.asarray(image), nd), spacing, self.crf)

    def run(self, job: Job) -> Row:
        """All steps in sequence, failures caught (the Ray executor's unit of work)."""
        try:
            loaded = self.load(job)
            if isinstance(loaded, Row):
                return loaded
            return self.finish(loaded, self.network(loaded))
        except Exception as exc:
            return failed(job, exc)


def failed(job: Job, exc: BaseException) -> Row:
    """A report row for a case that raised: a user-facing message as it is, anything else with its type."""
    message = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
    return Row(job.case, str(job.input), "failed", 0.0, "", "", message, index=job.index)


# -- executors ---------------------------------------------------------------------------------------------------


def _background_thread() -> None:
    """Reading and writing threads run their torch ops on one thread (the setting is per thread)."""
    torch.set_num_threads(1)


def run_local(runner: CaseRunner, jobs: Sequence[Job], on_row: Callable[[Row], None], prefetch: int = 2) -> None:
    """Read ahead ``prefetch`` cases in threads while the network runs; write in a background thread."""
    # Background threads run their torch ops on one thread each: OpenMP teams of every thread on the same cores
    # spin against each other and slow the network down (the setting is per thread; the network keeps all cores).
    torch.set_num_threads(torch.get_num_threads())  # pin the network's thread count before workers set theirs
    readers = ThreadPoolExecutor(max_workers=max(1, prefetch), thread_name_prefix="read",
                                 initializer=_background_thread)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write", initializer=_background_thread)
    pending: deque[tuple[Job, Future[Loaded | Row]]] = deque()
    writes: deque[tuple[Job, Future[Row]]] = deque()
    todo = iter(jobs)

    def read_next() -> None:
        job = next(todo, None)
        if job is not None:
            pending.append((job, readers.submit(runner.load, job)))

    def collect(job: Job, fut: Future[Row]) -> None:
        try:
            on_row(fut.result())
        except Exception as exc:
            on_row(failed(job, exc))

    try:
        for _ in range(max(1, prefetch)):
            read_next()
        while pending:
            job, fut = pending.popleft()
            read_next()
            try:
                loaded = fut.result()
                if isinstance(loaded, Row):
                    on_row(loaded)
                    continue
                out = runner.network(loaded)
            except Exception as exc:
                on_row(failed(job, exc))
                continue
            writes.append((job, writer.submit(runner.finish, loaded, out)))
            while len(writes) > 1:  # at most one case waiting to be written: bounded memory
                collect(*writes.popleft())
        while writes:
            collect(*writes.popleft())
    finally:
        # On Ctrl-C: drop queued work; a write in progress finishes (atomically) before we return.
        readers.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
        for job, fut in writes:  # interrupted: report the writes that finished anyway
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                on_row(fut.result())


class _RayWorker:
    """A Ray actor holding one copy of the model."""

    def __init__(self, bundle_files: dict[str, bytes], options: dict[str, Any], threads: int) -> None:
        import tempfile

        from pipeline.bundle import load_bundle

        torch.set_num_threads(max(1, threads))
        tune_allocator()
        folder = Path(tempfile.mkdtemp(prefix="bundle."))
        for name, data in bundle_files.items():
            (folder / name).write_bytes(data)
        opts = InferOptions(**{**options, "output": Path(options["output"])})
        self.runner = CaseRunner(load_bundle(folder), opts)

    def run(self, job: Job) -> Row:
        return self.runner.run(job)


def run_ray(bundle: Bundle, options: InferOptions, jobs: Sequence[Job], on_row: Callable[[Row], None],
            address: str | None = None, workers: int | None = None) -> None:
    """Distribute cases over a Ray cluster (``address``; default: the running one, else a local instance).

    One actor per GPU when the cluster has GPUs; otherwise one per 4 CPUs (``workers`` overrides, capped at what
    the cluster has). A case whose actor dies is reported failed and the actor replaced; if actors cannot start,
    the remaining cases fail with the reason.
    """
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError:
        raise PipelineError("--executor ray needs Ray: pip install -c constraints.txt -e \".[ray]\"") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:
            raise PipelineError(f"cannot connect to Ray at {address or 'a new local instance'} ({exc})") from None
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    available = gpus if gpus else cpus
    count = max(1, min(workers or (gpus if gpus else max(1, cpus // 4)), available, len(jobs)))
    threads = max(1, cpus // count)
    actor_cls = ray.remote(num_cpus=1 if gpus else threads, num_gpus=1 if gpus else 0)(_RayWorker)
    payload = {**asdict(options), "output": str(options.output), **({"device": "cuda"} if gpus else {})}
    files_ref = ray.put({p.name: p.read_bytes() for p in bundle.path.iterdir() if p.is_file()})

    def start() -> Any:
        return actor_cls.remote(files_ref, payload, threads)

    log.info("Ray: %d worker(s), %d CPU thread(s) each%s", count, threads, ", 1 GPU each" if gpus else "")
    idle = [start() for _ in range(count)]
    todo = deque(jobs)
    pending: dict[Any, tuple[Job, Any]] = {}
    replaced = 0
    try:
        while todo or pending:
            while todo and idle:
                actor, job = idle.pop(), todo.popleft()
                pending[actor.run.remote(job)] = (job, actor)
            if not pending:  # no actor could be started
                for job in todo:
                    on_row(failed(job, PipelineError("no Ray worker could load the model")))
                break
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job, actor = pending.pop(ref)
            try:
                on_row(ray.get(ref))
                idle.append(actor)
            except RayError as exc:  # the actor died (out of memory, crash) or could not load the model
                on_row(failed(job, exc))
                ray.kill(actor)
                if replaced < len(jobs):
                    replaced += 1
                    idle.append(start())
    finally:
        for actor in idle + [a for _, a in pending.values()]:
            ray.kill(actor)


# -- report ------------------------------------------------------------------------------------------------------


def count_statuses(rows: Iterable[Row]) -> dict[str, int]:
    """How many cases were ``written``, ``skipped`` and ``failed``."""
    statuses = [r.status for r in rows]
    return {s: statuses.count(s) for s in ("written", "skipped", "failed")}


def write_report(folder: Path, rows: Iterable[Row], meta: dict[str, Any]) -> None:
    """``report.json`` (with counts and the model) and ``report.csv``, in input order."""
    ordered = sorted(rows, key=lambda r: r.index)
    cases = [{k: getattr(r, k) for k in REPORT_FIELDS} for r in ordered]
    write_json(folder / "report.json", {**meta, "counts": count_statuses(ordered), "cases": cases})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS)
    w.writeheader()
    w.writerows(cases)
    write_text(folder / "report.csv", buf.getvalue())


def infer_cohort(bundle: Bundle, inputs: Sequence[Path], options: InferOptions, executor: str = "local",
                 ray_address: str | None = None, ray_workers: int | None = None,
                 progress: bool = True) -> list[Row]:
    """Run ``bundle`` over ``inputs`` into ``options.output``; returns the report rows (input order).

    Raises:
        PipelineError: nothing to do, or two inputs with one output name. Failures of single cases are rows.
    """
    tune_allocator()  # process-wide: reuse freed activation buffers (see its docstring)
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / STATE_DIR).mkdir(exist_ok=True)
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


def _earlier_outputs(folder: Path) -> set[Path]:
    """Outputs recorded by earlier runs into ``folder`` (so a folder that is both input and output is not
    segmented twice)."""
    found = set()
    for record in (folder / STATE_DIR).glob("*.json"):
        try:
            found.add(Path(json.loads(record.read_text())["output"]).resolve())
        except (OSError, ValueError, KeyError):
            continue
    return found


def _infer_locked(bundle: Bundle, inputs: Sequence[Path], options: InferOptions, executor: str,
                  ray_address: str | None, ray_workers: int | None, progress: bool) -> list[Row]:
    earlier = _earlier_outputs(options.output)
    inputs = [p for p in inputs if p.resolve() not in earlier]
    if not inputs:
        raise PipelineError("no input scans given (earlier outputs in the output folder are not inputs)")
    stale_found = remove_stale_temporaries(options.output) + remove_stale_temporaries(options.output / STATE_DIR)
    for stale in stale_found:
        log.info("removed %s left by an interrupted run", stale)
    jobs = plan_jobs(inputs, options)
    meta = {"model": {"name": bundle.name, "path": str(bundle.path), "digest": bundle.digest},
            "options": {k: str(v) for k, v in asdict(options).items()}, "executor": executor}
    rows: list[Row] = []
    bar = tqdm(total=len(jobs), desc="infer", unit="case", disable=not progress, dynamic_ncols=True)

    def on_row(row: Row) -> None:
        rows.append(row)
        bar.update(1)
        bar.set_postfix(failed=sum(r.status == "failed" for r in rows), refresh=False)
        if row.status == "failed":
            log.warning("%s: failed: %s", row.case, row.error)
        write_report(options.output, rows, meta)

    try:
        if executor == "ray":
            run_ray(bundle, options, jobs, on_row, ray_address, ray_workers)
        else:
            runner = CaseRunner(bundle, options)
            run_local(runner, jobs, on_row, options.prefetch)
    finally:
        bar.close()
        write_report(options.output, rows, meta)
    return sorted(rows, key=lambda r: r.index)
