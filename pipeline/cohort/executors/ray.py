"""The ``ray`` executor: the per-case work in Ray actors, one model per actor (a GPU each when the cluster has
them); the report is the same as the local executor's."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cohort.executors import EXECUTORS
from pipeline.cohort.report import Row
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.bundle import Bundle
    from pipeline.cohort import InferOptions
    from pipeline.cohort.inputs import Job

log = logging.getLogger("pipeline")


class _RayWorker:
    """A Ray actor holding one copy of the model."""

    def __init__(self, bundle_files: dict[str, bytes], options: dict[str, Any], threads: int) -> None:
        import tempfile

        import torch

        from pipeline.bundle import load_bundle
        from pipeline.cohort import InferOptions
        from pipeline.cohort.runner import CaseRunner
        from pipeline.inference.optimize import tune_allocator

        torch.set_num_threads(max(1, threads))
        tune_allocator()
        folder = Path(tempfile.mkdtemp(prefix="bundle."))
        for name, data in bundle_files.items():
            (folder / name).write_bytes(data)
        opts = InferOptions(**{**options, "output": Path(options["output"])})
        self.runner = CaseRunner(load_bundle(folder), opts)

    def run(self, job: Job) -> Row:
        return self.runner.run(job)


@EXECUTORS.register("ray")
def run_ray(bundle: Bundle, options: InferOptions, jobs: Sequence[Job], on_row: Callable[[Row], None],
            address: str | None = None, workers: int | None = None,
            on_started: Callable[[str, float | None], None] | None = None) -> None:
    """Distribute cases over a Ray cluster (``address``; default: the running one, else a local instance).

    One actor per GPU when the cluster has GPUs; otherwise one per 4 CPUs (``workers`` overrides, capped at what
    the cluster has). A case whose actor dies is reported failed and the actor replaced; if actors cannot start,
    the remaining cases fail with the reason. Each actor resolves the precision on its own hardware and compiles
    (``--compile``) when it starts, before its first case (``on_started`` is not called: there is no one model).

    Raises:
        PipelineError: Ray is not installed, or the cluster cannot be reached.
    """
    from pipeline.cohort.runner import failed

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
