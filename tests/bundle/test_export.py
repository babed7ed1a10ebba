"""`pipeline export` writes a self-contained bundle, logs it to MLflow, and `pipeline infer` gives the same labels
as the run's own infer stage from the folder, ``models:/`` and ``runs:/``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.bundle import BUNDLE_FORMAT_VERSION, load_bundle
from pipeline.cli import main


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    run_dir, _, uri = tiny_run
    out = tmp_path_factory.mktemp("export") / "model"
    # No --tracking-uri: the bundle goes to the store the workflow logged training to.
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    return out, json.loads((out / "bundle.json").read_text()), uri


def test_bundle_is_self_contained_and_versioned(exported):
    out, meta, _ = exported
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "weights.pt", "workflow.yaml"]
    assert meta["format_version"] == BUNDLE_FORMAT_VERSION and meta["name"] == "tiny"
    assert meta["labels"] == {"0": "background", "1": "outer", "2": "inner"} and meta["channels"] == ["T2"]
    assert meta["model"]["name"] == "vnet" and meta["spatial_dims"] == 3
    assert meta["preprocess"]["spacing"] == [1.5, 1.5, 2.0] and meta["infer"]["roi_size"] == [16, 16, 8]
    assert meta["postprocess"]["keep_largest_component"] is True
    assert {"torch", "monai", "medseg-pipeline", "python"} <= set(meta["versions"])
    # Plain tensors: loadable with weights_only=True, so loading never unpickles arbitrary objects.
    state = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    bundle = load_bundle(out)
    assert bundle.num_classes == 3 and not bundle.model.training


def test_bundle_records_the_runs_real_best_validation_dice(exported, tiny_run):
    out, meta, _ = exported
    run_dir, _, _ = tiny_run
    history = json.loads((run_dir / "train" / "history.json").read_text())
    best = max(history, key=lambda row: row.get("val_dice", -1.0))
    assert isinstance(meta["source"]["best_val_dice"], float)
    assert meta["source"]["best_val_dice"] == best["val_dice"] and meta["source"]["best_epoch"] == best["epoch"]
    train = json.loads((run_dir / "train" / "_stage.json").read_text())["record"]
    assert meta["source"]["train_precision"] == train["precision"] == "fp32"  # auto, pinned to fp32 in the tests
    assert meta["infer"]["precision"] == "auto" and meta["infer"]["compile"] is False  # decided where it runs
    assert torch.load(out / "weights.pt", weights_only=True).keys() == torch.load(
        run_dir / "train" / "best.pt", weights_only=True)["model_state"].keys()


def test_infer_matches_the_run_and_mlflow_uris_work(exported, tiny_run, tmp_path):
    out, _, uri = exported
    run_dir, manifest, _ = tiny_run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (version,) = client.search_model_versions("name='tiny'")
    # Logged to the MLflow run that trained the model (found by its run_dir tag), not a new one.
    assert client.get_run(version.run_id).data.tags["run_dir"] == str(run_dir.resolve())
    # An MLflow Model of that run (tests/bundle/test_pyfunc.py), with the run's test metrics but not its curves.
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    metrics = {m.key for m in logged.metrics}
    assert logged.source_run_id == version.run_id and "test_dice_mean" in metrics and "train_loss" not in metrics
    model_uri, runs_uri = f"models:/tiny/{version.version}", f"runs:/{version.run_id}/model"
    results = {}
    for name, model in (("folder", str(out)), ("registry", model_uri), ("run", runs_uri)):
        assert main(["infer", model, "--input", str(manifest), "--output", str(tmp_path / name), "--quiet",
                     "--tracking-uri", uri]) == 0
        results[name] = {p.name: p.read_bytes() for p in (tmp_path / name).glob("*.nii.gz")}
    assert len(results["folder"]) == 3 and results["folder"] == results["registry"] == results["run"]
    for name in results["folder"]:  # same labels as the run's postprocess stage (keep_largest_component)
        ours = np.asarray(nib.load(str(tmp_path / "folder" / name)).dataobj)
        theirs = np.asarray(nib.load(str(run_dir / "postprocess" / name)).dataobj)
        assert np.array_equal(ours, theirs)


def test_export_refuses_what_is_not_a_finished_run(tiny_run, tmp_path, capsys):
    run_dir, _, _ = tiny_run
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m"), "--no-mlflow"]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(run_dir), "--overwrite", "--no-mlflow"]) == 2
    assert "would replace the run folder" in capsys.readouterr().err and (run_dir / "train" / "best.pt").is_file()
    (tmp_path / "taken").mkdir()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "taken"), "--no-mlflow"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_newer_bundle_format_is_refused(exported, tmp_path):
    out, meta, _ = exported
    copy = tmp_path / "m"
    copy.mkdir()
    (copy / "weights.pt").write_bytes((out / "weights.pt").read_bytes())
    (copy / "bundle.json").write_text(json.dumps({**meta, "format_version": BUNDLE_FORMAT_VERSION + 1}))
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="upgrade medseg-pipeline"):
        load_bundle(copy)


def test_a_version_1_bundle_still_loads(exported, tmp_path):
    """Bundles from before precision and instance heads: no infer.precision / infer.compile, format_version 1."""
    out, meta, _ = exported
    copy = tmp_path / "v1"
    copy.mkdir()
    (copy / "weights.pt").write_bytes((out / "weights.pt").read_bytes())
    infer = {k: v for k, v in meta["infer"].items() if k not in ("precision", "compile")}
    (copy / "bundle.json").write_text(json.dumps({**meta, "format_version": 1, "infer": infer}))
    bundle = load_bundle(copy)
    assert bundle.infer.precision == "auto" and bundle.infer.compile is False and bundle.head.method is None

