"""The one interface every stage implements: what it depends on, the typed record it produces, and what it reports.

A stage is a class registered in :data:`STAGES` by the name a workflow's ``--from/--only`` uses. It declares

* ``requires``: the names of the stages whose records it reads (the engine orders stages by these, see
  :mod:`pipeline.engine.graph`);
* ``record``: a frozen pydantic model of its outputs (a subclass of :class:`StageRecord`); the engine saves it in
  ``<stage>/_stage.json`` and gives it, validated, to the stages that require this one (``ctx.need(Record)``);
* :meth:`Stage.config`: exactly the part of the workflow its result depends on (part of its reuse key);
* :meth:`Stage.run`: the work, writing only under ``ctx.stage_dir``;
* :meth:`Stage.report`: what trackers should record about it (params, metrics, per-step series, artifacts); the
  engine passes it to its hooks (:mod:`pipeline.engine.hooks`), so no stage talks to MLflow itself.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.config.schema import Workflow
from pipeline.engine.hooks import Report
from pipeline.registry import Registry

STAGES: Registry = Registry("stage")


class StageRecord(BaseModel):
    """Base of every stage's record: frozen, unknown keys rejected (a record written by other code is not reused).

    Attributes:
        files: the files the stage wrote, relative to the run folder; the engine checks that they exist before
            reusing the stage and hashes their bytes into the stage's identity.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")  # NaN Dice stays NaN
    files: tuple[str, ...] = ()


R = TypeVar("R", bound=StageRecord)


@dataclass
class StageContext:
    """What a stage may read and where it writes.

    Attributes:
        workflow: the validated workflow.
        run_dir: the run's folder.
        stage_dir: this stage's own sub-folder (the only place it writes).
        upstream: records of the stages it requires, by stage name (use :meth:`need` for a typed one).
        resume: True when an earlier attempt of this very stage (same key) was interrupted: keep its files.
    """

    workflow: Workflow
    run_dir: Path
    stage_dir: Path
    upstream: Mapping[str, StageRecord] = field(default_factory=dict)
    resume: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pipeline"))

    def need(self, kind: type[R]) -> R:
        """The record of type ``kind`` among the required stages' records.

        Raises:
            KeyError: no required stage produces a ``kind`` (add the stage to ``requires``).
        """
        for rec in self.upstream.values():
            if isinstance(rec, kind):
                return rec
        raise KeyError(f"no required stage produces a {kind.__name__}; required: {', '.join(self.upstream)}")

    def path(self, rel: str) -> Path:
        """A path of a record (relative to the run folder) as an absolute path."""
        return self.run_dir / rel


class Stage(ABC):
    """A step of a workflow (see the module docstring).

    Class attributes:
        name: the stage's name (its folder in the run directory and its ``--from/--only`` name).
        requires: names of the stages whose records it reads.
        record: the :class:`StageRecord` subclass :meth:`run` returns.
        names_run: the run folder is named by the config of this stage and of every stage it depends on
            (training, so that inference, postprocessing or evaluation settings share the trained model's folder).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    record: ClassVar[type[StageRecord]] = StageRecord
    names_run: ClassVar[bool] = False

    @abstractmethod
    def config(self, workflow: Workflow) -> Any:
        """The JSON-able part of the workflow this stage's result depends on (nothing more, nothing less)."""

    def fingerprint(self, workflow: Workflow) -> Any:
        """Identity of inputs outside the run folder (e.g. data files); part of the reuse key."""
        return None

    def is_current(self, workflow: Workflow, record: StageRecord) -> bool:
        """Whether a finished record is still valid beyond the key (e.g. external files unchanged)."""
        return True

    @abstractmethod
    def run(self, ctx: StageContext) -> StageRecord:
        """Do the work; write only under ``ctx.stage_dir``, atomically; return the record."""

    def upstream_identity(self, name: str, record: StageRecord, execution: str) -> str:
        """The identity of the required stage ``name``'s result that enters this stage's key: by default all of it
        (``execution``); a stage that reads only part of a record narrows it (train and preprocess read only the
        training and validation cases of prepare's record, so a changed test file does not retrain)."""
        return execution

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        """What trackers should record about this stage's result (called after it ran or was reused)."""
        return Report()
