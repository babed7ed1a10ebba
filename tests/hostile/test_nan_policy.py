"""NaN and infinite voxels (issue 13, item 6): refused by default with the way to opt in, filled with the scan's
minimum under ``--nan-policy fill`` / ``preprocess.nan_policy: fill`` and counted in the report, the prepare record
and MLflow; a scan with no finite voxel is refused either way.

The real input is nibabel's own test image ``resampled_anat_moved.nii``: an anatomical scan resampled by a
registration tool, with NaN outside the field of view (153 voxels)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.bundle import load_bundle, write_bundle
from pipeline.cli import main
from pipeline.cohort import InferOptions
from pipeline.cohort.report import REPORT_FIELDS, Row
from pipeline.config.schema import InferConfig, PostprocessConfig, PreprocessConfig
from pipeline.models import MODELS
from pipeline.tracking.inference import batch_ended, batch_started
from tests.hostile.harness import refused
from tests.utils import AFFINES, Threshold, blob_dataset, tiny_workflow, write_nifti

RESAMPLED = Path(nib.__file__).parent / "tests" / "data" / "resampled_anat_moved.nii"
RESAMPLED_NAN = 153  # NaN voxels of RESAMPLED (outside the field of view)




@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_nan_threshold", Threshold)


def bundle(folder: Path, nan_policy: str = "refuse") -> Path:
    """A 3D threshold model whose preprocessing is orientation only (voxels map one to one onto the output)."""
    return write_bundle(
        folder, name="nanthresh",
        model={"name": "test_nan_threshold", "kwargs": {}, "in_channels": 1, "out_channels": 2},
        state_dict=Threshold(1, 2).state_dict(), labels={0: "background", 1: "bright"}, channels=["t1"],
        spatial_dims=3,
        preprocess=PreprocessConfig(orientation="RAS", intensity={"mode": "none"}, patch={"size": [16, 16, 8]},
                                    nan_policy=nan_policy),
        infer=InferConfig(roi_size=[16, 16, 8], overlap=0.25), postprocess=PostprocessConfig(),
        source={"workflow": "test"},
    )


def resampled_copy(folder: Path) -> Path:
    """nibabel's resampled scan, copied into a folder of the test (the refusal must leave it untouched)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(RESAMPLED, folder / RESAMPLED.name)).resolve()


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def infer(*argv: str) -> int:
    return main(["infer", *argv, "--quiet"])


def warm(command: str) -> None:
    """Import what ``pipeline COMMAND`` imports on its first call in a process (every stage module; the batch
    runner), so that the refusal's clock measures the refusal, not a first import."""
    import importlib

    modules = (["pipeline.data.stage", "pipeline.transforms.stage", "pipeline.training.stage",
                "pipeline.inference.stage", "pipeline.postprocess.stage", "pipeline.evaluation.stage"]
               if command == "run" else
               ["pipeline.bundle", "pipeline.cohort", "pipeline.cohort.runner", "pipeline.cohort.executors",
                "pipeline.cohort.inputs", "pipeline.tracking.inference", "pipeline.tracking.mlflow_hook"])
    for name in modules:
        importlib.import_module(name)


def nan_dataset(root: Path, voxels: dict[str, float | np.ndarray]) -> Path:
    """The tiny blob dataset (case0, case1 training; case2 validation; case3 test) with some images spoiled:
    ``case id → value`` puts that value (NaN, ±inf) in a few voxels; an array replaces the whole image."""
    manifest = blob_dataset(root, n_train=2, n_val=1, n_test=1)
    for cid, value in voxels.items():
        path = root / "imagesTr" / f"{cid}.nii.gz"
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32).copy()
        if isinstance(value, np.ndarray):
            data = value.astype(np.float32)
        else:
            data[0, :3, 0] = value  # a corner: outside the field of view, as registration tools leave it
        write_nifti(path, data, img.affine)
    return manifest


@pytest.mark.parametrize("command", ["infer", "run", "crf"])
def test_nan_refused_by_default(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scan with NaN voxels, no policy given → refused naming the file, the count and how to opt in to fill."""
    if command == "crf":  # `pipeline crf` on a scan and its probabilities: the CRF needs a finite image
        data = np.ones((8, 8, 4), np.float32)
        data[0, 0, :2] = np.nan
        image = write_nifti(tmp_path / "in" / "scan.nii.gz", data, AFFINES["ras"])
        probs = write_nifti(tmp_path / "in" / "probs.nii.gz", np.full((8, 8, 4, 2), 0.5, np.float32),
                            AFFINES["ras"])
        refused(["crf", "--probs", str(probs), "--image", str(image), "--out", str(tmp_path / "out.nii.gz")],
                capsys, names=[str(image), "2 NaN or infinite", "preprocess.nan_policy: fill"],
                untouched=[tmp_path / "in"])
        assert not (tmp_path / "out.nii.gz").exists()
        return
    if command == "infer":
        scan = resampled_copy(tmp_path / "in")
        out = tmp_path / "out"
        warm(command)
        refused(["infer", str(bundle(tmp_path / "model")), "--input", str(scan), "--output", str(out),
                 "--no-mlflow", "--quiet"], capsys, names=[str(scan), f"{RESAMPLED_NAN} NaN or infinite",
                                                             "--nan-policy fill"],
                code=1, untouched=[tmp_path / "in"])
        assert not (out / scan.name).exists()
        assert report_of(out)["cases"][0]["status"] == "failed"
    else:
        manifest = nan_dataset(tmp_path / "data", {"case1": np.nan})
        wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochs": 1})
        image = tmp_path / "data" / "imagesTr" / "case1.nii.gz"
        warm(command)
        refused(["run", str(wf), "--run-dir", str(tmp_path / "run")], capsys,
                names=["case1", str(image), "3 NaN or infinite", "preprocess.nan_policy: fill"],
                untouched=[tmp_path / "data"])
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("via", ["flag", "bundle"])
def test_nan_filled_with_fill_policy(via: str, tmp_path: Path) -> None:
    """A resampled scan with NaN outside the field of view, --nan-policy fill (or a bundle trained with fill) →
    segmented with the scan's geometry; 153 filled voxels in the report and MLflow; refuse again redoes it."""
    scan = resampled_copy(tmp_path / "in")
    model = str(bundle(tmp_path / "model", "refuse" if via == "flag" else "fill"))
    out = tmp_path / "out"
    policy = ["--nan-policy", "fill"] if via == "flag" else []
    assert infer(model, "--input", str(scan), "--output", str(out), *policy, "--no-mlflow") == 0

    report = report_of(out)
    (case,) = report["cases"]
    assert case["status"] == "written" and case["filled_voxels"] == RESAMPLED_NAN
    assert report["filled_voxels"] == RESAMPLED_NAN and report["options"]["nan_policy"] == "fill"
    with open(out / "report.csv", newline="") as fh:
        assert [int(r["filled_voxels"]) for r in csv.DictReader(fh)] == [RESAMPLED_NAN]
    written, source = nib.load(out / scan.name), nib.load(RESAMPLED)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    # What the batch's MLflow run logs (the hook logs these as they are: tests/cohort/test_infer_tracking.py).
    rows = [Row(**{k: v for k, v in c.items() if k in REPORT_FIELDS}) for c in report["cases"]]
    metrics = batch_ended(rows, 1.0, out).report.metrics
    assert metrics["filled_voxels"] == metrics["filled_voxels.resampled_anat_moved"] == RESAMPLED_NAN
    loaded = load_bundle(Path(model))
    options = InferOptions(output=out, nan_policy="fill" if via == "flag" else None)
    assert batch_started(loaded, model, 1, options, "local").report.params["nan_policy"] == "fill"

    # Done with this policy: skipped, the count kept; the other policy is another key: the case is redone.
    assert infer(model, "--input", str(scan), "--output", str(out), *policy, "--no-mlflow") == 0
    (case,) = report_of(out)["cases"]
    assert case["status"] == "skipped" and case["filled_voxels"] == RESAMPLED_NAN
    assert infer(model, "--input", str(scan), "--output", str(out), "--nan-policy", "refuse", "--no-mlflow") == 1
    (case,) = report_of(out)["cases"]
    assert case["status"] == "failed" and "--nan-policy fill" in case["error"]


def test_run_fills_nan_with_preprocess_policy(tmp_path: Path) -> None:
    """NaN in training, validation and test images, preprocess.nan_policy: fill → the run completes (the CRF too);
    the prepare record and its MLflow metrics count the voxels; every image the model sees is finite."""
    from pipeline.config.loader import load_workflow
    from pipeline.data.stage import PrepareRecord, PrepareStage
    from pipeline.engine.stage import StageContext

    manifest = nan_dataset(tmp_path / "data", {"case0": np.nan, "case2": -np.inf, "case3": np.nan})
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "preprocess.nan_policy": "fill", "train.epochs": 1, "train.iterations_per_epoch": 1,
        "postprocess.crf": {"backend": "pydensecrf", "iterations": 1}})  # the CRF reads the scan itself
    run = tmp_path / "run"
    assert main(["run", str(wf), "--run-dir", str(run)]) == 0

    record = PrepareRecord.model_validate(json.loads((run / "prepare" / "_stage.json").read_text())["record"])
    filled = {c.id: c.filled for s in ("training", "validation", "test") for c in record.split(s)}
    assert filled == {"case0": 3, "case1": 0, "case2": 3, "case3": 3}
    workflow = load_workflow(str(wf), []).workflow
    ctx = StageContext(workflow=workflow, run_dir=run, stage_dir=run / "prepare", upstream={})
    metrics = PrepareStage().report(ctx, record).metrics
    assert metrics == {"filled_voxels": 9, "filled_voxels.case0": 3, "filled_voxels.case2": 3,
                       "filled_voxels.case3": 3}
    for cid in ("case0", "case2"):  # training and validation see filled images
        assert np.isfinite(np.asarray(nib.load(run / "preprocess" / f"{cid}_image.nii").dataobj)).all()
    test_image = nib.load(tmp_path / "data" / "imagesTr" / "case3.nii.gz")
    for prediction in (nib.load(run / "infer" / "case3.nii.gz"), nib.load(run / "postprocess" / "case3.nii.gz")):
        assert prediction.shape == test_image.shape
        np.testing.assert_allclose(prediction.affine, test_image.affine, atol=1e-5)
    history = json.loads((run / "train" / "history.json").read_text())
    assert all(np.isfinite(e["train_loss"]) for e in history)


@pytest.mark.parametrize(("command", "value"), [("infer", np.nan), ("infer", np.inf), ("run", np.nan)])
def test_scan_without_finite_voxel_refused_even_with_fill(command: str, value: float, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An image with no finite voxel (all NaN or all inf), fill asked for → refused: no minimum to fill with."""
    if command == "infer":
        scan = write_nifti(tmp_path / "in" / "empty.nii.gz", np.full((16, 16, 8), value, np.float32),
                           AFFINES["lps"]).resolve()
        out = tmp_path / "out"
        warm(command)
        refused(["infer", str(bundle(tmp_path / "model")), "--input", str(scan), "--output", str(out),
                 "--nan-policy", "fill", "--no-mlflow", "--quiet"], capsys,
                names=[str(scan), "no finite voxel"], code=1, untouched=[tmp_path / "in"])
        assert not (out / scan.name).exists()
    else:
        manifest = nan_dataset(tmp_path / "data", {"case1": np.full((24, 20, 12), value)})
        wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"preprocess.nan_policy": "fill"})
        image = tmp_path / "data" / "imagesTr" / "case1.nii.gz"
        warm(command)
        refused(["run", str(wf), "--run-dir", str(tmp_path / "run")], capsys,
                names=["case1", str(image), "no finite voxel"], untouched=[tmp_path / "data"])
        assert not (tmp_path / "run").exists()


def test_infinite_voxels_filled_with_the_channel_minimum(tmp_path: Path) -> None:
    """+inf, -inf and NaN voxels inside and outside the object, --nan-policy fill → each takes its channel's
    minimum (a bright +inf becomes background), counted; multi-channel scans fill per channel."""
    from monai.data import MetaTensor

    from pipeline.transforms.finite import FillNonFinited, fill_non_finite

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in (20, 18, 8)], indexing="ij")
    data = np.where(x**2 + y**2 + z**2 < 0.5, 101.0, 1.0).astype(np.float32)
    inside, outside, nan_at = (10, 9, 4), (0, 0, 0), (9, 9, 4)
    assert data[inside] == data[nan_at] == 101.0 and data[outside] == 1.0
    data[inside], data[outside], data[nan_at] = np.inf, -np.inf, np.nan
    scan = write_nifti(tmp_path / "in" / "inf.nii.gz", data, AFFINES["ras"]).resolve()
    out = tmp_path / "out"
    assert infer(str(bundle(tmp_path / "model")), "--input", str(scan), "--output", str(out), "--nan-policy",
                 "fill", "--no-mlflow") == 0
    (case,) = report_of(out)["cases"]
    assert case["status"] == "written" and case["filled_voxels"] == 3
    labels = np.asarray(nib.load(out / scan.name).dataobj)
    assert labels[inside] == labels[nan_at] == labels[outside] == 0  # filled with 1.0, the scan's minimum
    assert labels[10, 10, 4] == 1  # the object next to them is still found

    two = np.stack([data, data * 10 + 5], axis=-1)  # channel 1 has its own minimum, 15
    filled, count = fill_non_finite(two, channel_axis=-1)
    assert count == 6 and filled[inside].tolist() == [1.0, 15.0] and filled[outside].tolist() == [1.0, 15.0]
    image = MetaTensor(torch.from_numpy(np.moveaxis(two, -1, 0).copy()), affine=torch.as_tensor(AFFINES["lps"]))
    out_image = FillNonFinited(keys="image")({"image": image})["image"]
    assert torch.isfinite(out_image).all() and out_image[:, 10, 9, 4].tolist() == [1.0, 15.0]
    np.testing.assert_allclose(out_image.affine.numpy(), AFFINES["lps"])
    assert not torch.isfinite(image).all()  # the input itself is left as it was
