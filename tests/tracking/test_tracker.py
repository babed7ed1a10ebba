"""MLflow naming and config flattening."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.tracking.tracker import MlflowTracker, flatten, mlflow_key


def test_flatten_nested_config() -> None:
    assert flatten({"train": {"epochs": 2, "loss": {"name": "dice"}}, "seed": 0}) == {
        "train.epochs": 2, "train.loss.name": "dice", "seed": 0}


def test_names_mlflow_refuses_are_made_safe(tmp_path: Path) -> None:
    assert mlflow_key("test_dice_GCL+IPL") == "test_dice_GCL_IPL"
    assert mlflow_key("test_NFL/GCL_um") == "test_NFL/GCL_um"
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = MlflowTracker("exp", uri, "run", {})
    tracker.log_metrics({"test_dice_GCL+IPL": 0.5, "nan_is_skipped": float("nan")})
    tracker.log_params({"model.channels": [8, 16]})
    tracker.end()
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.metrics == {"test_dice_GCL_IPL": 0.5}
    assert run.data.params == {"model.channels": "[8, 16]"} and run.info.status == "FINISHED"
