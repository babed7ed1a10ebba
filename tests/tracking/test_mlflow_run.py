"""What an MLflow run of ``pipeline run`` holds, that an unchanged rerun makes no twin, and that runs never mix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config.loader import load_workflow
from pipeline.stages import run_workflow
from pipeline.tracking.mlflow_hook import RUN_FILE
from pipeline.tracking.tracker import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, NOTE_TAG
from tests.utils import blob_dataset, tiny_workflow

TRACKED = {"tracking.enabled": True, "tracking.system_metrics": 0.2}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny workflow in a git checkout, run once with tracking: ``(workflow, run_dir, uri)``."""
    tmp = tmp_path_factory.mktemp("tracked")
    manifest = blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=2)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "project").mkdir()
    wf = tiny_workflow(tmp / "project" / "wf.yaml", manifest, **TRACKED, **{"tracking.tracking_uri": uri,
                                                                             "description": "Blobs in 3D."})
    git = ["git", "-C", str(wf.parent), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(wf.parent)], check=True)
    subprocess.run([*git, "add", "wf.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "wf"], check=True)
    assert main(["run", str(wf), "--run-dir", str(tmp / "run")]) == 0
    return wf, tmp / "run", uri


def test_experiment_opens_as_model_training_with_a_description(tracked: tuple[Path, Path, str]) -> None:
    wf, _, uri = tracked
    exp = MlflowClient(uri).get_experiment_by_name("tiny")
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert "Blobs in 3D." in exp.tags[NOTE_TAG] and str(wf) in exp.tags[NOTE_TAG]
    assert "1 outer, 2 inner" in exp.tags[NOTE_TAG]


def test_run_holds_tags_note_dataset_metrics_images_and_tables(tracked: tuple[Path, Path, str]) -> None:
    wf, run_dir, uri = tracked
    client = MlflowClient(uri)
    run_id = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    run = client.get_run(run_id)
    tags = run.data.tags
    head = subprocess.run(["git", "-C", str(wf.parent), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["git_dirty"] == "false"
    assert tags["pipeline.version"] and tags["workflow"] == "tiny" and tags["model"] == "vnet"
    assert tags["device"] == "cpu" and len(tags["manifest_sha256"]) == 64
    assert tags["mlflow.source.name"] == str(wf) and tags["run_dir"] == str(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    note = tags[NOTE_TAG]
    assert f"test Dice {summary['dice_mean']:.4f}" in note and "- **inner**: Dice" in note and "- **outer**: Dice" in note
    assert "`vnet`" in note and str(run_dir) in note and "2 training, 1 validation, 2 test" in note
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == tags["manifest_sha256"][:16]
    assert json.loads(dataset.dataset.profile)["splits"] == {"training": 2, "validation": 1, "test": 2}
    # per-epoch series with the epoch as step; final test metrics; system metrics while stages ran
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "val_dice")] == [1, 2]
    assert run.data.metrics["test_dice_mean"] == pytest.approx(summary["dice_mean"])
    cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert cpu and [m.step for m in cpu] == list(range(len(cpu)))
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    files = _artifacts(client, run_id)
    for name in ("workflow.yaml", "train/learning_curve.png", "evaluate/overview.png", "evaluate/cases.csv",
                 "evaluate/cases_table.json", "evaluate/overlays/case3.png", "evaluate/overlays/case4.png"):
        assert name in files
    images = [f for f in files if f.startswith("images/") and f.endswith(".png")]
    assert {f.split("+")[0] for f in images} == {"images/learning_curve", "images/overlay~case3",
                                                  "images/overlay~case4"}
    table = json.loads(Path(client.download_artifacts(run_id, "evaluate/cases_table.json")).read_text())
    assert {"case", "class", "dice"} <= set(table["columns"]) and len(table["data"]) == 4  # 2 cases x 2 classes


def test_unchanged_rerun_keeps_the_run_and_a_changed_one_makes_a_new_tagged_run(
        tracked: tuple[Path, Path, str]) -> None:
    wf, run_dir, uri = tracked
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    first = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    result = run_workflow(load_workflow(wf, []), run_dir=run_dir)
    assert result.executed == [] and result.mlflow_run_id == first
    assert len(client.search_runs([exp.experiment_id])) == 1
    result = run_workflow(load_workflow(wf, ["infer.overlap=0.5"]), run_dir=run_dir)
    assert result.executed == ["infer", "postprocess", "evaluate"] and result.mlflow_run_id != first
    second = client.get_run(result.mlflow_run_id)
    assert second.data.tags["pipeline.previous_run_id"] == first and second.data.params["infer.overlap"] == "0.5"
    assert second.info.run_name == f"{client.get_run(first).info.run_name}.2"
    assert "test_dice_mean" in second.data.metrics and "train_loss" in second.data.metrics  # the whole result
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == result.mlflow_run_id


def _two_workflows(tmp: Path, uri: str) -> list[Path]:
    out = []
    for i, n_test in enumerate((1, 2)):
        manifest = blob_dataset(tmp / f"data{i}", n_train=2, n_val=1, n_test=n_test)
        out.append(tiny_workflow(tmp / f"wf{i}.yaml", manifest, **TRACKED, **{
            "name": f"mix{i}", "tracking.tracking_uri": uri, "tracking.experiment": "mix", "seed": i}))
    return out


def _check_separate(uri: str, run_dirs: list[Path]) -> None:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mix").experiment_id])
    assert len(runs) == 2
    by_dir = {r.data.tags["run_dir"]: r for r in runs}
    for d in run_dirs:
        run = by_dir[str(d)]
        summary = json.loads((d / "summary.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_dice_mean"] == pytest.approx(summary["dice_mean"])
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2  # its own epochs only
        assert run.data.params["data.manifest"] == json.loads((d / "prepare" / "_stage.json").read_text())[
            "record"]["manifest"]


def test_two_workflows_in_one_process_at_once_never_mix(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workflows = _two_workflows(tmp_path, uri)
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    errors: list[BaseException] = []

    def go(wf: Path, d: Path) -> None:
        try:
            run_workflow(load_workflow(wf, []), run_dir=d)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(wf, d)) for wf, d in zip(workflows, dirs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _check_separate(uri, dirs)


def test_two_processes_on_one_store_at_once_never_mix(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workflows = _two_workflows(tmp_path, uri)
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(wf), "--run-dir", str(d)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for wf, d in zip(workflows, dirs, strict=True)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any("failed" in o and "MLflow" in o for o in outputs), outputs
    _check_separate(uri, dirs)


def test_log_model_registers_the_run_model_once(tmp_path: Path) -> None:
    manifest = blob_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"name": "logged", "tracking.enabled": True,
                                                          "tracking.tracking_uri": uri, "tracking.log_model": True})
    first = run_workflow(load_workflow(wf, []), run_dir=tmp_path / "run")
    client = MlflowClient(uri, registry_uri=uri)
    [version] = client.search_model_versions("name = 'logged'")
    assert version.run_id == first.mlflow_run_id
    again = run_workflow(load_workflow(wf, []), run_dir=tmp_path / "run")  # unchanged: no second model
    assert again.mlflow_run_id == first.mlflow_run_id
    assert len(client.search_model_versions("name = 'logged'")) == 1
