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


def mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` on ``tracking_uri`` whose store exists.

    MLflow creates a new SQLite store's tables (and migrates an old one) on first use; two processes doing that
    at once corrupt the migration (``table _alembic_tmp_tags already exists``). The first use is made under an
    exclusive lock on ``<database>.lock``, so two ``pipeline run`` started together on a new store both track.
    """
    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; MLflow's own behaviour
        return MlflowClient(tracking_uri=tracking_uri)
    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            client._tracking_client.store  # noqa: B018 - creates or migrates the tables
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


# MLflow 3 opens an experiment by its kind; without one the UI guesses "GenAI" (traces, judges, prompts).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description of a run or an experiment (Markdown)


def experiment_id(client: Any, name: str, tracking_uri: str, tags: Mapping[str, str] | None = None) -> str:
    """The id of experiment ``name``, created if missing, as a model-training experiment.

    A new experiment in a local SQLite store keeps its artifacts in ``mlartifacts/`` beside the database file
    (MLflow's default, ``./mlruns``, is relative to wherever the command happens to run), so the store folder is
    self-contained. ``tags`` (e.g. the description) are set on a new experiment, and those missing from an
    existing one are added (an experiment made by an older version gets its kind); a tag a user changed is kept.
    """
    wanted = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND, **(tags or {})}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri[len("sqlite:///"):]).resolve()
            location = (db.parent / "mlartifacts").as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location, tags=wanted))
        except Exception:
            exp = client.get_experiment_by_name(name)  # another process created it in the meantime
            if exp is None:
                raise
    for key, value in wanted.items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return str(exp.experiment_id)


class Tracker:
    """Does nothing: used when tracking is disabled. :class:`MlflowTracker` logs for real."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, path: Path, key: str, step: int = 0, timestamp: int | None = None) -> None: ...

    def log_table(self, path: Path, artifact_file: str) -> None: ...

    def log_dataset(self, dataset: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(Tracker):
    """An MLflow run in the workflow's experiment."""

    def __init__(self, experiment: str, tracking_uri: str, run_name: str, tags: Mapping[str, str],
                 experiment_tags: Mapping[str, str] | None = None) -> None:
        self.uri = tracking_uri
        self.client = mlflow_client(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, tracking_uri, experiment_tags)
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags)).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp is None else timestamp
        items = [Metric(mlflow_key(k), float(v), ts, step or 0) for k, v in metrics.items() if v is not None and v == v]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, path: Path, key: str, step: int = 0, timestamp: int | None = None) -> None:
        """A PNG as an image of the run (the UI shows it on the run's metric charts, by ``key``)."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.client.log_image(self.run_id, pixels, key=mlflow_key(key), step=step, timestamp=timestamp,
                              synchronous=True)

    def log_table(self, path: Path, artifact_file: str) -> None:
        """A CSV file as an MLflow table (``artifact_file`` ends in ``.json``; the UI shows it as a table)."""
        import pandas as pd

        self.client.log_table(self.run_id, pd.read_csv(path), artifact_file)

    def log_dataset(self, dataset: Mapping[str, Any]) -> None:
        """The data the run read, as an MLflow dataset input (the runs table's "Dataset" column, lineage)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = {k: v for k, v in dataset.items() if k not in ("name", "digest", "source")}
        entity = Dataset(name=mlflow_key(str(dataset["name"])), digest=str(dataset["digest"])[:36],
                         source_type="local", source=json.dumps({"uri": str(dataset["source"])}),
                         profile=json.dumps(profile, default=str))
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
