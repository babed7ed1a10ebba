"""Events the engine (and ``pipeline infer``) emit to hooks: run started, stage starting (about to run), stage done
(ran or reused), run ended.

Experiment tracking is a hook (:class:`pipeline.tracking.mlflow_hook.MlflowHook`); anything else that wants to
follow runs (a fallback store, a notifier) implements :class:`Hook`. A hook that fails never fails the work:
:class:`HookSet` logs its first error once and stops calling it for the rest of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Report:
    """What a stage or a batch has to say to trackers.

    Attributes:
        params: settings, by dotted name.
        metrics: final values, by name.
        series: ``(step, {name: value})`` rows, e.g. one per epoch.
        artifacts: ``(file, folder in the run's artifacts or None for the top level)``.
        tags: short strings describing the run.
        images: ``(PNG file, key)``: pictures a tracker shows as images (MLflow: ``log_image`` with that key).
        tables: ``(CSV file, name)``: tables a tracker shows as tables (MLflow: ``log_table`` as ``name``.json).
        dataset: the data the run read: ``name``, ``digest``, ``source`` (a path), ``splits`` (split → number of
            cases) and anything else worth a look (``labels``, ``channels``, ``domain``); None when the stage read
            none.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    series: tuple[tuple[int, Mapping[str, float]], ...] = ()
    artifacts: tuple[tuple[Path, str | None], ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    images: tuple[tuple[Path, str], ...] = ()
    tables: tuple[tuple[Path, str], ...] = ()
    dataset: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RunStarted:
    """A run begins: its name, where it writes, and what it starts with."""

    name: str
    folder: Path
    report: Report = Report()


@dataclass(frozen=True)
class StageStarting:
    """A stage is about to run (it was not reused); sent before its work starts."""

    stage: str


@dataclass(frozen=True)
class StageDone:
    """A stage finished (``reused`` False) or was reused unchanged (``reused`` True)."""

    stage: str
    reused: bool
    seconds: float | None
    report: Report = Report()


@dataclass(frozen=True)
class RunEnded:
    """A run ended: ``FINISHED``, ``FAILED`` (``error`` says why) or ``KILLED`` (Ctrl-C or a kill)."""

    status: str
    report: Report = Report()
    error: str | None = None


class Hook:
    """Receives the events of a run; every method does nothing unless overridden."""

    def run_started(self, event: RunStarted) -> None: ...

    def stage_starting(self, event: StageStarting) -> None: ...

    def stage_done(self, event: StageDone) -> None: ...

    def run_ended(self, event: RunEnded) -> None: ...


class HookSet:
    """Calls every hook in turn; a hook that raises is reported once and left out of the rest of the run."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks = list(hooks)
        self.failed: dict[int, str] = {}

    def _emit(self, method: str, event: Any) -> None:
        for i, hook in enumerate(self.hooks):
            if i in self.failed:
                continue
            try:
                getattr(hook, method)(event)
            except Exception as exc:  # tracking must never fail the work it tracks
                self.failed[i] = f"{type(exc).__name__}: {exc}"
                hint = getattr(hook, "hint", "")
                log.warning("%s failed (%s); the run goes on without it%s", getattr(hook, "title", type(hook).__name__),
                            self.failed[i], f" ({hint})" if hint else "")

    def run_started(self, event: RunStarted) -> None:
        self._emit("run_started", event)

    def stage_starting(self, event: StageStarting) -> None:
        self._emit("stage_starting", event)

    def stage_done(self, event: StageDone) -> None:
        self._emit("stage_done", event)

    def run_ended(self, event: RunEnded) -> None:
        self._emit("run_ended", event)
