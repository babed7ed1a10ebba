"""Stage records on disk: ``<stage>/_stage.json`` holds a finished stage's reuse key, identity and typed record.

``read_run(run_dir, stages)`` is the one way to read a finished run folder (export, compare and any later tool use
it through :func:`pipeline.stages.load_run`), instead of parsing ``_stage.json`` files themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from pipeline.config.schema import Workflow
from pipeline.engine.stage import Stage, StageRecord
from pipeline.errors import PipelineError

RECORD = "_stage.json"
STARTED = "_started.json"

R = TypeVar("R", bound=StageRecord)


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON
        return None
    return rec if isinstance(rec, dict) else None


@dataclass(frozen=True)
class Finished:
    """A finished stage as saved: its typed record and the metadata the engine keeps beside it."""

    record: StageRecord
    key: str
    content_key: str
    version: str
    execution: str
    seconds: float
    finished_at: str
    saved: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole _stage.json as read


def read_finished(stage_dir: Path, stage: type[Stage] | Stage) -> Finished | None:
    """The finished record of ``stage`` in ``stage_dir``, or None (missing, unreadable, or not this stage's record
    type: written by another version)."""
    rec = read_json(stage_dir / RECORD)
    if rec is None:
        return None
    try:
        record = stage.record.model_validate(rec["record"])
        return Finished(record, str(rec["key"]), str(rec["content_key"]), str(rec["version"]), str(rec["execution"]),
                        float(rec["seconds"]), str(rec["finished_at"]), rec)
    except (KeyError, TypeError, ValueError, ValidationError):
        return None


def files_exist(run_dir: Path, record: StageRecord) -> bool:
    return all((run_dir / f).exists() for f in record.files)


def content_id(run_dir: Path, record: StageRecord, upstream: dict[str, str]) -> str:
    """Identity of what a stage produced: its record, the bytes of its files and the identities of its inputs
    (records may refer to upstream files). Downstream keys include it, so a re-run that produces the same results
    does not invalidate later stages."""
    digests = {}
    for f in record.files:
        with open(run_dir / f, "rb") as fh:
            digests[f] = hashlib.file_digest(fh, "sha256").hexdigest()
    return digest({"record": record.model_dump(mode="json"), "files": digests, "upstream": upstream})


@dataclass(frozen=True)
class RunRecords:
    """A run folder as the engine left it: the resolved workflow and the record of every finished stage."""

    run_dir: Path
    workflow: Workflow
    records: dict[str, StageRecord] = field(default_factory=dict)
    legacy: tuple[str, ...] = ()  # stages finished by medseg-pipeline < 0.2.0 (untyped records)

    def get(self, kind: type[R]) -> R | None:
        """The record of type ``kind``, or None when that stage has not finished."""
        return next((r for r in self.records.values() if isinstance(r, kind)), None)

    def need(self, kind: type[R], what: str) -> R:
        """The record of type ``kind``.

        Raises:
            PipelineError: that stage has not finished in this run folder; ``what`` says what needed it.
        """
        rec = self.get(kind)
        stage = kind.__name__.removesuffix("Record").lower()
        if rec is None and stage in self.legacy:
            raise PipelineError(f"{self.run_dir}: its {stage} stage was made by medseg-pipeline before 0.2.0, whose "
                                f"records this version does not read; re-run the workflow into it (pipeline run "
                                f"WORKFLOW --run-dir {self.run_dir}) and then {what} again")
        if rec is None:
            raise PipelineError(f"{self.run_dir} is not a finished run for {what}: its {stage} stage has not "
                                "finished; give the run folder `pipeline run` printed, or finish the run first")
        return rec

    def path(self, rel: str) -> Path:
        return self.run_dir / rel


def read_run(run_dir: Path, stages: Sequence[type[Stage]]) -> RunRecords:
    """Read a run folder: its ``workflow.yaml`` and the records of the stages that finished.

    Raises:
        PipelineError: the folder has no readable ``workflow.yaml`` (it is not a run folder).
    """
    import yaml

    from pipeline.config.loader import _format_pydantic, _yaml_problem, parse_yaml  # the YAML budget of workflow files

    run_dir = Path(run_dir).resolve()
    wf_path = run_dir / "workflow.yaml"
    try:
        workflow = Workflow.model_validate(parse_yaml(wf_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise PipelineError(f"{run_dir} is not a finished run (no workflow.yaml); give the run folder "
                            "`pipeline run` printed") from None
    except ValidationError as exc:  # written by another version, or edited by hand
        problems = "; ".join(_format_pydantic(exc, limit=5))
        raise PipelineError(f"{wf_path} cannot be read as a workflow ({problems}); re-run the workflow into a new "
                            "run folder") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{wf_path} cannot be read as a workflow ({_yaml_problem(exc)})") from None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, a YAML value its tag cannot hold
        raise PipelineError(f"{wf_path} cannot be read as a workflow ({exc})") from None
    records, legacy = {}, []
    for stage in stages:
        done = read_finished(run_dir / stage.name, stage)
        if done is not None and files_exist(run_dir, done.record):
            records[stage.name] = done.record
        elif is_legacy(run_dir / stage.name):
            legacy.append(stage.name)
    return RunRecords(run_dir, workflow, records, tuple(legacy))


def is_legacy(stage_dir: Path) -> bool:
    """Whether ``stage_dir`` holds a stage finished by medseg-pipeline < 0.2.0 (``outputs`` instead of a record)."""
    rec = read_json(stage_dir / RECORD)
    return rec is not None and "outputs" in rec and "record" not in rec
