"""Experiment tracking with MLflow: one experiment per workflow, one MLflow run per ``pipeline run``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeline")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


def mlflow_key(name: str) -> str:
    """MLflow accepts letters, digits and ``_-. :/`` in names: other characters (``+`` in ``GCL+IPL``) become ``_``."""
    return _UNSAFE.sub("_", name)[:250]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys: ``{"train": {"epochs": 2}}`` → ``{"train.epochs": 2}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve_tracking_uri(configured: str | None) -> str:
    """The workflow's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the current folder."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if missing. A new experiment in a local SQLite store keeps its
    artifacts in ``mlartifacts/`` beside the database file (MLflow's default, ``./mlruns``, is relative to
    wherever the command happens to run), so the store folder is self-contained."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()
        location = (db.parent / "mlartifacts").as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:
        exp = client.get_experiment_by_name(name)  # another process created it in the meantime
        if exp is None:
            raise
        return str(exp.experiment_id)


class Tracker:
    """Does nothing: used when tracking is disabled. :class:`MlflowTracker` logs for real."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(Tracker):
    """An MLflow run in the workflow's experiment."""

    def __init__(self, experiment: str, tracking_uri: str, run_name: str, tags: Mapping[str, str]) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp_id = experiment_id(self.client, experiment, tracking_uri)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id
        self._mlflow = mlflow

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), ts, step or 0) for k, v in metrics.items() if v is not None and v == v]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
