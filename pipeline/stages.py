"""The workflow's stages, assembled: every ``<package>/stage.py`` registers its stage in
:data:`pipeline.engine.stage.STAGES`; this module imports them, orders them by their ``requires``
(:func:`pipeline.engine.graph.stage_order`), runs a workflow with its hooks (MLflow when tracking is on) and reads
finished run folders (:func:`load_run`).

Stage packages in graph order: ``data`` (prepare) → ``transforms`` (preprocess) → ``training`` (train) →
``inference`` (infer) → ``postprocess`` → ``evaluation`` (evaluate).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import pipeline
from pipeline.config.loader import LoadedWorkflow
from pipeline.engine.graph import stage_order
from pipeline.engine.hooks import Hook, HookSet, Report, RunStarted
from pipeline.engine.records import RunRecords, read_run
from pipeline.engine.runner import execute, run_name_hash
from pipeline.engine.stage import STAGES, Stage

log = logging.getLogger("pipeline")


def _import_stage_modules() -> None:
    """Import ``pipeline.<package>.stage`` for every sub-package that has one (each registers its stage)."""
    for info in pkgutil.iter_modules(pipeline.__path__):
        if info.ispkg and importlib.util.find_spec(f"pipeline.{info.name}.stage") is not None:
            importlib.import_module(f"pipeline.{info.name}.stage")


def stage_classes() -> list[type[Stage]]:
    """Every registered stage class, in graph order."""
    _import_stage_modules()
    return stage_order({n: STAGES.get(n) for n in STAGES.names()})


def stage_names() -> list[str]:
    """The stage names in graph order (what ``--from`` and ``--only`` accept)."""
    return [s.name for s in stage_classes()]


def run_id(loaded: LoadedWorkflow) -> str:
    """The run folder's name: a hash of the config of the stages that name the run (training and what it needs)."""
    return run_name_hash(loaded.workflow, [cls() for cls in stage_classes()])


def default_run_dir(loaded: LoadedWorkflow) -> Path:
    """Where ``pipeline run`` writes without ``--run-dir``: ``runs/<workflow>/<run-id>`` (absolute).

    Raises:
        PipelineError: the workflow's name is not a plain folder name (``..``, a separator, a leading dot), which
            would put the run folder outside ``runs/`` (the schema refuses such names; this is the last guard).
    """
    from pipeline.config.schema import name_problem
    from pipeline.errors import PipelineError

    name = loaded.workflow.name
    problem = name_problem(name) if isinstance(name, str) else "must be a string"
    runs = Path("runs").absolute()
    folder = runs / str(name) / run_id(loaded)
    if problem is None and Path(os.path.normpath(folder)).parent.parent != runs:
        problem = "must name a folder inside runs/"
    if problem is not None:
        raise PipelineError(f"{loaded.source}: name {str(name)[:80]!r} {problem}")
    return folder.resolve()


def load_run(run_dir: str | Path) -> RunRecords:
    """A finished (or partly finished) run folder: its workflow and the typed record of every finished stage.

    Raises:
        PipelineError: the folder is not a run folder.
    """
    return read_run(Path(run_dir), stage_classes())


@dataclass
class RunResult:
    """What ``pipeline run`` reports."""

    run_dir: Path
    executed: list[str]
    reused: list[str]
    summary: dict[str, Any] | None
    mlflow_run_id: str | None


def default_hooks(loaded: LoadedWorkflow, run_dir: Path, tracking_process: bool = False) -> list[Hook]:
    """MLflow when ``tracking.enabled`` (experiment: ``tracking.experiment`` or the workflow's name), as a
    model-training experiment described by the workflow; the run's source, version and model as tags. With
    ``tracking_process`` the MLflow hook runs in a child process (:mod:`pipeline.tracking.process`)."""
    wf = loaded.workflow
    cfg = wf.tracking
    if not cfg.enabled:
        return []
    from pipeline.tracking.context import source_tags
    from pipeline.tracking.mlflow_hook import make_mlflow_hook
    from pipeline.tracking.note import experiment_note
    from pipeline.tracking.tracker import NOTE_TAG, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking_uri)
    tags = {**source_tags(Path(loaded.source), wf.name, run_dir), "model": wf.model.name}
    experiment_tags = {NOTE_TAG: experiment_note(str(loaded.source), wf.description, _labels(wf))}
    hook = make_mlflow_hook(cfg.experiment or wf.name, uri, process=tracking_process, tags=tags,
                            experiment_tags=experiment_tags, reuse=True, system_metrics=cfg.system_metrics)
    return [hook]


def _labels(wf: Any) -> dict[str, str] | None:
    """The manifest's labels for the experiment's description (None when the manifest cannot be read yet)."""
    from pipeline.data.stage import manifest_for

    try:
        return {str(k): v for k, v in manifest_for(wf).labels.items()}
    except Exception:
        return None


def run_workflow(
    loaded: LoadedWorkflow,
    run_dir: Path | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    force: bool = False,
    hooks: list[Hook] | None = None,
    tracking_process: bool = False,
) -> RunResult:
    """Run (or reuse) every stage of a validated workflow.

    Args:
        loaded: the validated workflow.
        run_dir: the run folder (default ``runs/<name>/<run-id>``).
        from_stage: re-run this stage and every stage that depends on it.
        only: run just this stage (re-running it); the stages it depends on must be finished.
        force: re-run every stage.
        hooks: receive the run's events (default: :func:`default_hooks`).
        tracking_process: the default MLflow hook runs in a child process (what ``pipeline run`` does).

    Returns:
        The run folder, which stages ran and which were reused, the summary and the MLflow run id.

    Raises:
        PipelineError: bad input; a run folder this call created is removed if no stage finished in it.
    """
    from pipeline.evaluation.stage import EvaluateRecord
    from pipeline.tracking.tracker import flatten

    wf = loaded.workflow
    stages = [cls() for cls in stage_classes()]
    if run_dir:  # a dangling symlink or a loop is refused before resolving (a symlink to a folder is followed)
        from pipeline.io.atomic import check_folder

        run_dir = check_folder(run_dir, "run folder (--run-dir)").resolve()
    else:
        run_dir = default_run_dir(loaded)
    hooks = default_hooks(loaded, run_dir, tracking_process) if hooks is None else hooks
    resolved = loaded.resolved()
    workflow_file = run_dir / "workflow.yaml"
    started = RunStarted(f"{wf.name}-{run_dir.name}", run_dir,
                         Report(params=flatten(resolved), artifacts=((workflow_file, None),)))
    result = execute(wf, stages, run_dir, version=pipeline.__version__, hooks=HookSet(hooks), started=started,
                     from_stage=from_stage, only=only, force=force,
                     files={workflow_file.name: yaml.safe_dump(resolved, sort_keys=False)})
    evaluated = next((r for r in result.records.values() if isinstance(r, EvaluateRecord)), None)
    summary = evaluated.summary if evaluated is not None else None
    mlflow = next((h for h in hooks if getattr(h, "run_id", None)), None)
    if wf.tracking.log_model and mlflow is not None and "train" in result.records:
        _log_model(run_dir, mlflow, wf.name)
    return RunResult(run_dir, result.executed, result.reused, summary, mlflow.run_id if mlflow else None)


def _log_model(run_dir: Path, hook: Any, name: str) -> None:
    """``tracking.log_model``: the run's model as an MLflow Model of its MLflow run, registered as ``name``
    (as ``pipeline export`` does). Skipped when that run holds a model already (an unchanged rerun) or is in the
    fallback store; a failure is a warning: the run's results are complete without it."""
    import tempfile

    from pipeline.bundle import export_bundle, log_bundle_to_mlflow

    if getattr(hook, "on_fallback", False):
        log.warning("tracking.log_model: the run is in the fallback store; log the model once the server is back "
                    "with `pipeline export %s --out MODEL_DIR`", run_dir)
        return
    try:
        from pipeline.tracking.tracker import mlflow_client

        client = mlflow_client(hook.tracking_uri)
        run = client.get_run(hook.run_id)
        if client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{hook.run_id}'"):
            return
        with tempfile.TemporaryDirectory(prefix="pipeline-export.") as tmp:
            bundle = export_bundle(run_dir, Path(tmp) / "bundle", name=name)
            uris = log_bundle_to_mlflow(bundle, hook.tracking_uri, register_as=name)
        log.info("model logged to MLflow: %s", uris.get("model_uri", uris["runs_uri"]))
    except Exception as exc:  # tracking never fails the work
        log.warning("tracking.log_model: logging the model failed (%s); export it with `pipeline export %s --out "
                    "MODEL_DIR`", exc, run_dir)
