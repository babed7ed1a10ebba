"""Bundles in MLflow: log a bundle folder as an MLflow Model of the run that trained it, and fetch one back
(``models:/NAME/VERSION``, ``runs:/ID/model``) as a bundle folder :func:`~pipeline.bundle.bundle.load_bundle` reads.

MLflow is imported inside the functions; :mod:`pipeline.bundle.bundle` re-exports them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


def log_bundle_to_mlflow(bundle_dir: Path, tracking_uri: str, register_as: str | None) -> dict[str, str]:
    """Log a bundle folder as the MLflow Model ``model`` of the run that trained it (found by its ``run_dir`` tag in
    the run's experiment; a new run there when there is none) and register it as a model version. A later export
    of the same run goes to ``model-<time>``. The model loads with ``mlflow.pyfunc.load_model`` and serves with
    ``mlflow models serve`` (:mod:`pipeline.bundle.pyfunc`).

    Returns:
        ``{"run_id", "runs_uri", "model_uri"?}``: MODEL values ``pipeline infer`` accepts.
    """
    try:
        return _log_bundle(Path(bundle_dir), tracking_uri, register_as)
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"the bundle is written at {bundle_dir}, but logging it to MLflow at {tracking_uri} "
                            f"failed ({exc}); fix the store or export with --no-mlflow") from None


def _log_bundle(bundle_dir: Path, tracking_uri: str, register_as: str | None) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    from pipeline.bundle.bundle import MANIFEST, _read_json
    from pipeline.bundle.pyfunc import log_bundle_model
    from pipeline.tracking.tracker import experiment_id

    meta = _read_json(bundle_dir / MANIFEST)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_name = meta["source"].get("experiment") or meta["source"]["workflow"]
    exp_id = experiment_id(client, experiment_name, tracking_uri)
    from pipeline.tracking.mlflow_hook import previous_run

    run_id = previous_run(Path(meta["source"]["run_dir"]), tracking_uri)  # the run holding the folder's results
    if run_id is None:
        runs = client.search_runs([exp_id], filter_string=f"tags.run_dir = '{meta['source']['run_dir']}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        run_id = runs[0].info.run_id if runs else None
    if run_id is None:
        run_id = client.create_run(exp_id, run_name=f"export-{meta['name']}",
                                   tags={"run_dir": meta["source"]["run_dir"]}).info.run_id
        client.set_terminated(run_id)
    return log_bundle_model(client, run_id, bundle_dir, free_model_name(client, run_id, exp_id), register_as,
                            tracking_uri)


def free_model_name(client: Any, run_id: str, experiment_id: str) -> str:
    """``model``, or ``model-<time>`` when run ``run_id`` has a ``model`` already (a LoggedModel, or the plain
    artifact folder of an export before MLflow Models): each export keeps its own files, so a registered version
    keeps pointing at the files it was made from."""
    artifacts = {f.path for f in client.list_artifacts(run_id)}

    def taken(name: str) -> bool:
        token = None
        while name not in artifacts:
            page = client.search_logged_models([experiment_id], filter_string=f"name = '{name}'", page_token=token)
            if any(m.source_run_id == run_id for m in page):
                return True
            token = page.token
            if not token:
                return False
        return True

    name, n, stamp = "model", 1, time.strftime("%Y%m%d-%H%M%S")
    while taken(name):
        name, n = (f"model-{stamp}" if n == 1 else f"model-{stamp}-{n}"), n + 1
    return name


def resolve_model(model: str, tracking_uri: str, cache: Path) -> Path:
    """A bundle folder for MODEL: a folder as it is; ``models:/NAME/VERSION`` or ``runs:/ID/model`` downloaded
    from MLflow into ``cache``: the bundle inside the MLflow Model ``pipeline export`` logs, or the plain bundle
    folder exports before it logged.

    Raises:
        PipelineError: the folder does not exist, MLflow cannot find the model, or it is no bundle's model.
    """
    if model.startswith(("models:/", "runs:/")):
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per tiny file is noise
        # models:/ is resolved by the process-wide registry URI; set both for this call only (set_*_uri also
        # rewrites the MLFLOW_* variables, which would leak this store into everything the process does next).
        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        before = tracking_utils._tracking_uri, registry_utils._registry_uri
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            dst = Path(tempfile.mkdtemp(prefix="model.", dir=cache))
            local = mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(dst),
                                                        tracking_uri=tracking_uri)
        except Exception as exc:
            raise PipelineError(f"cannot fetch {model} from MLflow at {tracking_uri} ({exc}); check the name and "
                                "version (`pipeline export` prints them) and --tracking-uri") from None
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = before
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return _bundle_in(Path(local), model)
    path = Path(model)
    if not path.is_dir():
        raise PipelineError(f"model {model} not found: give a bundle folder (`pipeline export`), "
                            "models:/NAME/VERSION or runs:/RUN_ID/model")
    return path


def _bundle_in(local: Path, model: str) -> Path:
    """The bundle folder of a downloaded model: the MLflow Model's ``python_function`` artifact ``bundle``, or the
    folder itself (a bundle logged as plain artifacts, before ``pipeline export`` logged MLflow Models).

    Raises:
        PipelineError: an MLflow Model without that artifact (not one ``pipeline export`` logged).
    """
    from pipeline.bundle.bundle import MANIFEST

    if (local / MANIFEST).is_file() or not (local / "MLmodel").is_file():
        return local
    from mlflow.models import Model

    from pipeline.bundle.pyfunc import BUNDLE_ARTIFACT

    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    rel = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT, {}).get("path")
    if not rel or not (local / rel).is_dir():
        raise PipelineError(f"{model} is an MLflow Model but not a medseg-pipeline bundle (no '{BUNDLE_ARTIFACT}' "
                            "artifact); give a model that `pipeline export` logged")
    return local / rel
