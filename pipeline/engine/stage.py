"""The one interface every stage implements, and the context it runs in."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config.schema import Workflow
from pipeline.registry import Registry
from pipeline.tracking.tracker import Tracker

STAGES: Registry = Registry("stage")


@dataclass
class StageContext:
    """What a stage may read and where it writes.

    Attributes:
        workflow: the validated workflow.
        run_dir: the run's folder.
        stage_dir: this stage's own sub-folder (the only place it writes).
        upstream: outputs of the stages it requires, by stage name.
        resume: True when an earlier attempt of this very stage (same key) was interrupted: keep its files.
    """

    workflow: Workflow
    run_dir: Path
    stage_dir: Path
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pipeline"))


class Stage(ABC):
    """A step of a workflow.

    Subclasses set ``name`` and ``requires`` (upstream stage names), say which part of the workflow they depend on
    (:meth:`config`), and implement :meth:`run`, which returns JSON-able outputs (file paths relative to the
    run folder). The runner hashes config + upstream results to decide whether a stage can be reused, writes
    its outputs record, and calls :meth:`track` whether the stage ran or was reused.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def config(self, workflow: Workflow) -> Any:
        """The JSON-able part of the workflow this stage's result depends on."""

    def fingerprint(self, workflow: Workflow, upstream: dict[str, dict[str, Any]]) -> Any:
        """Identity of inputs outside the run folder (e.g. data files); part of the reuse key."""
        return None

    def is_current(self, workflow: Workflow, outputs: dict[str, Any]) -> bool:
        """Whether finished outputs are still valid beyond the key (e.g. external files unchanged)."""
        return True

    @abstractmethod
    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Do the work; write only under ``ctx.stage_dir``, atomically; return the outputs."""

    def track(self, tracker: Tracker, ctx: StageContext, outputs: dict[str, Any]) -> None:
        """Log this stage's results to the experiment tracker (called after running or reusing)."""
