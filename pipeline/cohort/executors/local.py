"""The ``local`` executor: one model in this process; reading, the network and writing overlap in threads."""

from __future__ import annotations

from collections import deque
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from pipeline.cohort.executors import EXECUTORS
from pipeline.cohort.report import Row

log = logging.getLogger("pipeline")

if TYPE_CHECKING:
    from pipeline.bundle import Bundle
    from pipeline.cohort import InferOptions
    from pipeline.cohort.inputs import Job
    from pipeline.cohort.runner import CaseRunner, Loaded


@EXECUTORS.register("local")
def local_executor(bundle: Bundle, options: InferOptions, jobs: Sequence[Job], on_row: Callable[[Row], None],
                   address: str | None = None, workers: int | None = None,
                   on_started: Callable[[str, float | None], None] | None = None) -> None:
    """:func:`run_local` with a :class:`~pipeline.cohort.runner.CaseRunner` of ``bundle`` (``address`` and
    ``workers`` do not apply: one model, ``options.prefetch`` cases read ahead). ``on_started`` gets the
    network's resolved precision and, with compile, the warm-up seconds, once the model is ready."""
    from pipeline.cohort.runner import CaseRunner

    runner = CaseRunner(bundle, options)
    if on_started is not None:
        on_started(runner.predictor.precision.name, runner.predictor.warm_up_seconds)
    run_local(runner, jobs, on_row, options.prefetch)


def _background_thread() -> None:
    """Reading and writing threads run their torch ops on one thread (the setting is per thread)."""
    import torch

    torch.set_num_threads(1)


def run_local(runner: CaseRunner, jobs: Sequence[Job], on_row: Callable[[Row], None], prefetch: int = 2) -> None:
    """Read ahead ``prefetch`` cases in threads while the network runs; write in a background thread."""
    import torch

    from pipeline.cohort.runner import failed

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
