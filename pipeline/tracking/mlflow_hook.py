"""MLflow as an engine hook: one MLflow run per result of ``pipeline run`` (or per ``pipeline infer`` batch).

The MLflow run is created when the first stage starts to run (its name, tags, params and artifacts come from the
run-started event, the reports of stages reused before it are logged then); each stage's report is logged when the
stage finishes or is reused; system metrics are sampled while stages run; the run's Markdown summary is written
and the run ends with the engine's status.

A rerun that reuses every stage makes no MLflow run: the run folder keeps the id of the MLflow run that holds its
results (``mlflow_run.json``) and the hook reports that one. A rerun that runs a stage again (``--from``, a changed
``infer`` setting, ``--force``) makes a new MLflow run, tagged ``pipeline.previous_run_id`` with the one it
replaces.

Every call to the store runs in one background thread, in order, so the work never waits for MLflow (importing it,
opening the store, writing images and artifacts); the hook waits for that thread when the run ends, so everything
is logged when ``pipeline run`` returns. The hook never fails the work: the first error of that thread is one
warning ("... the run goes on without it", as :class:`pipeline.engine.hooks.HookSet` says it) and the MLflow run
is ended ``FAILED`` instead of being left ``RUNNING``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.engine.hooks import Hook, Report, RunEnded, RunStarted, StageDone, StageStarting
from pipeline.io.atomic import write_json
from pipeline.tracking.note import run_note
from pipeline.tracking.system_metrics import SystemMetricsSampler
from pipeline.tracking.tracker import NOTE_TAG, MlflowTracker, Tracker, mlflow_client

log = logging.getLogger("pipeline")

RUN_FILE = "mlflow_run.json"  # in the run folder: the MLflow run that holds the folder's results
HINT = ("another store: `tracking.tracking_uri` in the workflow or `--tracking-uri`; no tracking: "
        "`tracking.enabled: false` or `pipeline infer --no-mlflow`")


def _saved(run_dir: Path, tracking_uri: str) -> dict[str, Any]:
    import json

    try:
        saved = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) and saved.get("tracking_uri") == tracking_uri else {}


def previous_run(run_dir: Path, tracking_uri: str) -> str | None:
    """The id of the MLflow run recorded in ``run_dir`` for the store ``tracking_uri`` (None if none)."""
    return _saved(run_dir, tracking_uri).get("run_id")


class _Worker:
    """Runs submitted calls in order in one background thread; after the first that raises, ``on_error`` is called
    with its error and the rest are dropped."""

    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        self.on_error = on_error
        self.error: Exception | None = None
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="pipeline-mlflow", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        self._queue.put(call)

    def flush(self) -> None:
        """Wait until every call submitted so far has run."""
        self._queue.join()

    def close(self) -> None:
        """Wait until every submitted call has run, and stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: this thread only yields the cores to the work
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while (call := self._queue.get()) is not None:
            try:
                if self.error is None:
                    call()
            except Exception as exc:  # tracking never fails the work
                self.error = exc
                self.on_error(exc)
            finally:
                self._queue.task_done()


class MlflowHook(Hook):
    """Logs a run's events to the experiment ``experiment`` of the store ``tracking_uri``.

    Args:
        tags: set on the MLflow run.
        experiment_tags: set on a new experiment (and added to an existing one that lacks them).
        reuse: True for ``pipeline run``: create the MLflow run only when a stage runs, and keep a run folder's
            MLflow run when every stage is reused. False for a ``pipeline infer`` batch: a run at once.
        system_metrics: seconds between system-metric samples while stages run; None for none.
    """

    def __init__(self, experiment: str, tracking_uri: str, tags: Mapping[str, str] | None = None,
                 experiment_tags: Mapping[str, str] | None = None, reuse: bool = False,
                 system_metrics: float | None = None) -> None:
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.tags = dict(tags or {})
        self.experiment_tags = dict(experiment_tags or {})
        self.reuse = reuse
        self.system_metrics = system_metrics
        self.tracker: Tracker | None = None
        self.reused_run_id: str | None = None
        self.title = f"MLflow tracking ({tracking_uri})"
        self.hint = HINT
        self._started: RunStarted | None = None
        self._pending: list[Report] = []
        self._params: dict[str, Any] = {}
        self._metrics: dict[str, float] = {}
        self._dataset: Mapping[str, Any] | None = None
        self._sampler: SystemMetricsSampler | None = None
        self._worker: _Worker | None = None

    @property
    def run_id(self) -> str | None:
        if self.tracker is not None:
            return self.tracker.run_id
        return self.reused_run_id

    @property
    def on_fallback(self) -> bool:
        """Whether the run is recorded in the run folder's fallback store (the tracking server was away)."""
        return bool(getattr(self.tracker, "on_fallback", False))

    def run_started(self, event: RunStarted) -> None:
        self._started = event
        self._note(event.report)
        if not self.reuse:  # a batch: the run and its system metrics start now
            self._begin()

    def stage_starting(self, event: StageStarting) -> None:
        if self._worker is None:
            self._begin()

    def stage_done(self, event: StageDone) -> None:
        self._note(event.report)
        if self._worker is None:
            self._pending.append(event.report)
            return
        report = event.report
        self._worker.submit(lambda: self._log(report))

    def run_ended(self, event: RunEnded) -> None:
        if self._worker is None and self._started is not None:
            previous = previous_run(self._started.folder, self.tracking_uri)
            if event.status == "FINISHED" and previous is not None and self._exists(previous):
                self.reused_run_id = previous
                log.info("MLflow run %s holds these results (every stage was reused)", previous)
                return
            self._begin()
        if self._worker is None:
            return
        self._note(event.report)
        note = (run_note(self._params, self._metrics, self._started.folder, self._dataset)
                if self.reuse and self._started is not None else None)
        self._worker.submit(lambda: self._end(event, note))
        self._worker.close()  # everything is logged when the run's command returns

    def flush(self) -> None:
        """Wait until everything reported so far is logged (or failed)."""
        if self._worker is not None:
            self._worker.flush()

    def _begin(self) -> None:
        """Create the MLflow run, in the background: the work never waits for the store (the run ends with it)."""
        self._worker = _Worker(self._failed)
        self._worker.submit(self._open)
        self._worker.submit(self._sample)

    def _sample(self) -> None:
        """Start sampling system metrics."""
        if self._sampler is None and self.system_metrics and self.tracker is not None:
            self._sampler = SystemMetricsSampler(self.tracker, self.system_metrics)
            self._sampler.start()

    def _end(self, event: RunEnded, note: str | None) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self.tracker is None:
            return
        status = event.status
        try:
            if event.error:
                self.tracker.set_tags({"error": event.error[:5000]})
            self._log(event.report)
            if note is not None:
                self.tracker.set_tags({NOTE_TAG: note})
        except Exception:
            status = "FAILED"  # the run's record is incomplete
            raise
        finally:
            self.tracker.end(status)

    def _failed(self, exc: Exception) -> None:
        """The first error of the background logging: said once (as :class:`HookSet` says it), the run ended."""
        log.warning("%s failed (%s: %s); the run goes on without it (%s)", self.title, type(exc).__name__, exc,
                    self.hint)
        self._abandon()

    def _open(self) -> None:
        """Create the MLflow run and log what was reported so far."""
        from pipeline.tracking.fallback import open_tracker

        event = self._started
        assert event is not None
        saved = _saved(event.folder, self.tracking_uri) if self.reuse else {}
        earlier = [*saved.get("earlier_runs", []), saved["run_id"]] if saved.get("run_id") else []
        tags = {**self.tags, **event.report.tags}
        name = event.name
        if earlier:  # the folder's results changed (a stage ran again): a new run, numbered, pointing back
            tags["pipeline.previous_run_id"] = earlier[-1]
            name = f"{event.name}.{len(earlier) + 1}"

        def factory(uri: str) -> Tracker:
            return MlflowTracker(self.experiment, uri, run_name=name, tags=tags,
                                 experiment_tags=self.experiment_tags)

        self.tracker = open_tracker(self.tracking_uri, factory, event.folder)
        if not getattr(self.tracker, "on_fallback", False):
            log.info("MLflow run %s in %s", self.tracker.run_id, self.tracking_uri)
        try:
            if self.reuse:
                write_json(event.folder / RUN_FILE, {"tracking_uri": self.tracking_uri, "experiment": self.experiment,
                                                     "run_id": self.tracker.run_id, "earlier_runs": earlier})
            self._log(event.report, tags=False)
            for report in self._pending:
                self._log(report)
            self._pending.clear()
        except Exception:  # created but not usable: do not leave it RUNNING
            self._abandon()
            self.tracker = None
            raise

    def _exists(self, run_id: str) -> bool:
        from pipeline.tracking.fallback import check_server, fail_fast_http, is_remote

        if is_remote(self.tracking_uri):
            fail_fast_http()
            if check_server(self.tracking_uri) is not None:  # away: the results stay recorded where they are
                return True
        try:
            return mlflow_client(self.tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    def _note(self, report: Report) -> None:
        self._params.update(report.params)
        self._metrics.update(report.metrics)
        if report.dataset is not None:
            self._dataset = report.dataset

    def _abandon(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self.tracker is not None:
            with contextlib.suppress(Exception):
                self.tracker.end("FAILED")

    def _log(self, report: Report, tags: bool = True) -> None:
        t = self.tracker
        if t is None:
            return
        if tags and report.tags:
            t.set_tags(report.tags)
        if report.params:
            t.log_params(report.params)
        if report.dataset is not None:
            t.log_dataset(report.dataset)
        for step, values in report.series:
            t.log_metrics(values, step=step)
        if report.metrics:
            t.log_metrics(report.metrics)
        for path, folder in report.artifacts:
            t.log_artifact(path, folder)
        for path, key in report.images:
            t.log_image(path, key)
        for path, name in report.tables:
            t.log_table(path, name)


def make_mlflow_hook(experiment: str, tracking_uri: str, process: bool = False, **kwargs: Any) -> Hook:
    """An :class:`MlflowHook` (same arguments), run in a child process when ``process`` and the platform allows
    (:mod:`pipeline.tracking.process`: the CLI's choice, so MLflow's imports and writes never take the cores the
    work uses); in this process otherwise, or when the child cannot be started."""
    if process:
        from pipeline.tracking.process import HookProcess, available

        if available():
            try:
                return HookProcess(f"{__name__}:MlflowHook", title=f"MLflow tracking ({tracking_uri})", hint=HINT,
                                   experiment=experiment, tracking_uri=tracking_uri, **kwargs)
            except OSError as exc:
                log.debug("tracking in this process: the tracking process could not start (%s)", exc)
    return MlflowHook(experiment, tracking_uri, **kwargs)
