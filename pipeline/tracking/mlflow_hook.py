"""MLflow as an engine hook: one MLflow run per ``pipeline run`` (or ``pipeline infer`` batch).

The run is created when the run starts (its name, tags, params and artifacts come from the event), each stage's
report is logged when the stage finishes or is reused, and the run ends with the engine's status. The hook never
fails the work: :class:`pipeline.engine.hooks.HookSet` turns its first error into one warning and stops calling it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from pipeline.engine.hooks import Hook, Report, RunEnded, RunStarted, StageDone
from pipeline.tracking.tracker import MlflowTracker

log = logging.getLogger("pipeline")


class MlflowHook(Hook):
    """Logs a run's events to the experiment ``experiment`` of the store ``tracking_uri``."""

    def __init__(self, experiment: str, tracking_uri: str, tags: Mapping[str, str] | None = None) -> None:
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.tags = dict(tags or {})
        self.tracker: MlflowTracker | None = None
        self.title = f"MLflow tracking ({tracking_uri})"
        self.hint = ("another store: `tracking.tracking_uri` in the workflow or `--tracking-uri`; no tracking: "
                     "`tracking.enabled: false` or `pipeline infer --no-mlflow`")

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker is not None else None

    def run_started(self, event: RunStarted) -> None:
        self.tracker = MlflowTracker(self.experiment, self.tracking_uri, run_name=event.name,
                                     tags={**self.tags, **event.report.tags})
        log.info("MLflow run %s in %s", self.tracker.run_id, self.tracking_uri)
        try:
            self._log(event.report, tags=False)
        except Exception:  # created but not usable: do not leave it RUNNING
            self._abandon()
            self.tracker = None
            raise

    def stage_done(self, event: StageDone) -> None:
        try:
            self._log(event.report)
        except Exception:  # this hook is left out from now on: end its run instead of leaving it RUNNING
            self._abandon()
            raise

    def run_ended(self, event: RunEnded) -> None:
        if self.tracker is None:
            return
        status = event.status
        try:
            if event.error:
                self.tracker.set_tags({"error": event.error[:5000]})
            self._log(event.report)
        except Exception:
            status = "FAILED"  # the run's record is incomplete
            raise
        finally:
            self.tracker.end(status)

    def _abandon(self) -> None:
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
        for step, values in report.series:
            t.log_metrics(values, step=step)
        if report.metrics:
            t.log_metrics(report.metrics)
        for path, folder in report.artifacts:
            t.log_artifact(path, folder)
