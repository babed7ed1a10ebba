"""Runs a workflow's stages in order, reusing every stage whose config and inputs are unchanged.

Layout of a run folder (``runs/<workflow>/<run-id>/`` by default; the id is a hash of the resolved config, so
rerunning an unchanged workflow lands in the same folder and reuses everything)::

    workflow.yaml        the resolved workflow
    summary.json         written by the evaluate stage
    <stage>/_stage.json  reuse key, outputs and timing of a finished stage
    <stage>/...          the stage's files
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.loader import LoadedWorkflow
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.errors import PipelineError
from pipeline.io.atomic import write_json, write_text
from pipeline.tracking.tracker import MlflowTracker, Tracker, flatten, resolve_tracking_uri

log = logging.getLogger("pipeline")

STAGE_ORDER = ("prepare", "preprocess", "train", "infer", "postprocess", "evaluate")
RECORD = "_stage.json"
STARTED = "_started.json"
# The run folder is named by what training depends on: changing inference, postprocessing or evaluation settings
# re-runs only those stages in the same folder instead of training again.
TRAINING_KEYS = ("name", "seed", "data", "preprocess", "model", "train")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_id(loaded: LoadedWorkflow) -> str:
    """A short hash of the resolved config that training depends on (progress bars excluded)."""
    cfg = loaded.resolved()
    ident = {k: cfg[k] for k in TRAINING_KEYS}
    ident["train"] = {k: v for k, v in ident["train"].items() if k != "progress"}
    return _hash(ident)[:10]


def _stages() -> list[Stage]:
    import pipeline.stages  # noqa: F401  (registers the stages)

    return [STAGES.get(name)() for name in STAGE_ORDER]


@dataclass
class RunResult:
    """What ``pipeline run`` reports."""

    run_dir: Path
    executed: list[str]
    reused: list[str]
    summary: dict[str, Any] | None
    mlflow_run_id: str | None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _read_record(stage_dir: Path) -> dict[str, Any] | None:
    return _read_json(stage_dir / RECORD)


def _content_id(run_dir: Path, outputs: dict[str, Any], upstream: dict[str, str]) -> str:
    """Identity of what a stage produced: its outputs, the bytes of its files and the identities of its inputs
    (outputs may refer to upstream files). Downstream keys include it, so a re-run that produces the same results
    does not invalidate later stages."""
    digests = {}
    for f in outputs.get("files", []):
        h = hashlib.sha256()
        with open(run_dir / f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests[f] = h.hexdigest()
    return _hash({"outputs": outputs, "files": digests, "upstream": upstream})


def _outputs_exist(run_dir: Path, outputs: dict[str, Any]) -> bool:
    files = outputs.get("files", [])
    return all((run_dir / f).exists() for f in files)


def _start_tracker(loaded: LoadedWorkflow, run_dir: Path) -> Tracker:
    cfg = loaded.workflow.tracking
    if not cfg.enabled:
        return Tracker()
    uri = resolve_tracking_uri(cfg.tracking_uri)
    tracker = MlflowTracker(
        experiment=cfg.experiment or loaded.workflow.name,
        tracking_uri=uri,
        run_name=f"{loaded.workflow.name}-{run_dir.name}",
        tags={"workflow_file": str(loaded.source), "run_dir": str(run_dir.resolve())},
    )
    log.info("MLflow run %s in %s", tracker.run_id, uri)
    return tracker


def run_workflow(
    loaded: LoadedWorkflow,
    run_dir: Path | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    force: bool = False,
) -> RunResult:
    """Run (or reuse) every stage of a validated workflow.

    Args:
        loaded: the validated workflow.
        run_dir: the run folder (default ``runs/<name>/<run-id>``).
        from_stage: re-run this stage and every later one.
        only: run just this stage (re-running it); earlier stages must be finished.
        force: re-run every stage.

    Returns:
        The run folder, which stages ran and which were reused, the summary and the MLflow run id.

    Raises:
        PipelineError: bad input; a run folder this call created is removed if no stage finished in it.
    """
    for opt, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGE_ORDER:
            raise PipelineError(f"{opt}: unknown stage '{value}'; stages are {', '.join(STAGE_ORDER)}")
    wf = loaded.workflow
    run_dir = (run_dir or Path("runs") / wf.name / run_id(loaded)).resolve()
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    executed: list[str] = []
    reused: list[str] = []
    tracker: Tracker | None = None
    status = "FAILED"
    try:
        for index, stage in enumerate(_stages()):
            stage_dir = run_dir / stage.name
            upstream = {r: results[r] for r in stage.requires}
            key = _hash(
                {
                    "stage": stage.name,
                    "config": stage.config(wf),
                    "fingerprint": stage.fingerprint(wf, upstream),
                    "upstream": {r: results[r]["_execution"] for r in stage.requires},
                }
            )
            rec = _read_record(stage_dir)
            valid = (
                rec is not None
                and rec.get("key") == key
                and _outputs_exist(run_dir, rec.get("outputs", {}))
                and stage.is_current(wf, rec["outputs"])
            )
            rerun = force or (from_stage is not None and index >= STAGE_ORDER.index(from_stage)) or only == stage.name
            if only is not None and only != stage.name:
                if STAGE_ORDER.index(stage.name) > STAGE_ORDER.index(only):
                    break
                if not valid:
                    raise PipelineError(
                        f"--only {only}: stage '{stage.name}' has not finished with the current config in "
                        f"{run_dir}; run the workflow without --only first"
                    )
            ctx = StageContext(workflow=wf, run_dir=run_dir, stage_dir=stage_dir, upstream=upstream)
            if valid and not rerun:
                assert rec is not None
                results[stage.name] = {**rec["outputs"], "_execution": rec["execution"]}
                reused.append(stage.name)
                log.info("[%s] reused (unchanged since %s)", stage.name, rec.get("finished_at", "?"))
            else:
                started = _read_json(stage_dir / STARTED)
                ctx.resume = not rerun and started is not None and started.get("key") == key
                if not ctx.resume and stage_dir.exists():
                    shutil.rmtree(stage_dir)
                stage_dir.mkdir(parents=True, exist_ok=True)
                write_json(stage_dir / STARTED, {"key": key})
                log.info("[%s] %s", stage.name, "resuming" if ctx.resume else "running")
                t0 = time.perf_counter()
                outputs = stage.run(ctx)
                seconds = time.perf_counter() - t0
                execution = _content_id(run_dir, outputs, {r: results[r]["_execution"] for r in stage.requires})
                write_json(
                    stage_dir / RECORD,
                    {"key": key, "execution": execution, "outputs": outputs, "seconds": round(seconds, 3),
                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                )
                (stage_dir / STARTED).unlink(missing_ok=True)
                results[stage.name] = {**outputs, "_execution": execution}
                executed.append(stage.name)
                log.info("[%s] done in %.1f s", stage.name, seconds)
            if stage.name == "prepare":
                write_text(run_dir / "workflow.yaml", yaml.safe_dump(loaded.resolved(), sort_keys=False))
                tracker = _start_tracker(loaded, run_dir)
                tracker.log_params(flatten(loaded.resolved()))
                tracker.log_artifact(run_dir / "workflow.yaml")
            if tracker is not None:
                stage.track(tracker, ctx, results[stage.name])
        status = "FINISHED"
    except BaseException:
        if created and not any(_read_record(p) for p in run_dir.iterdir() if p.is_dir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if tracker is not None:
            tracker.end(status)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return RunResult(run_dir, executed, reused, summary, tracker.run_id if tracker else None)
