"""The instance-aware methods end to end in short 2D runs on generated nuclei: the targets are written by
preprocess, the head is trained and stored, infer writes instance maps on each scan's grid, evaluate scores them
and measures every object."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from tests.evaluation.test_domain_workflow import small_manifest
from tests.utils import tiny_workflow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short run per trained method, shared by the tests of this module (each costs a training)."""
    return {m: _run(tmp_path_factory.mktemp(m), m) for m in ("three_class", "distance")}


def _run(tmp_path: Path, method: str) -> Path:
    manifest = small_manifest(tmp_path, "cells2d_demo", [64, 64])
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "preprocess": {"orientation": "RAS", "spacing": None, "patch": {"size": [32, 32], "num_samples": 1}},
        "model": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
        "infer": {"roi_size": [32, 32], "overlap": 0.25}, "train.epochs": 1,
        "instances": {"method": method}})
    run = tmp_path / "run"
    assert main(["run", str(wf), "--run-dir", str(run)]) == 0
    return run


@pytest.mark.parametrize("method", ["three_class", "distance"])
def test_instance_methods_end_to_end(runs: dict[str, Path], method: str) -> None:
    run = runs[method]
    pre = json.loads((run / "preprocess" / "_stage.json").read_text())["record"]
    extra = "weight" if method == "three_class" else "distance"
    case = pre["cases"]["training"][0]
    assert set(case["extras"]) == {extra}
    target = np.asarray(nib.load(run / case["extras"][extra]).dataobj)
    assert target.dtype == np.float32 and target.max() > (1.5 if extra == "weight" else 0.99)
    record = json.loads((run / "infer" / "_stage.json").read_text())["record"]
    assert len(record["instances"]) == 2
    for cid, rel in record["instances"].items():
        inst = nib.load(run / rel)
        labels = nib.load(run / record["predictions"][cid])
        assert inst.shape == labels.shape
        np.testing.assert_allclose(inst.affine, labels.affine)
        assert np.issubdtype(inst.get_data_dtype(), np.unsignedinteger)
        data = np.asarray(inst.dataobj)
        np.testing.assert_array_equal(data > 0, np.asarray(labels.dataobj) > 0 if data.any() else data > 0)
    summary = json.loads((run / "summary.json").read_text())
    assert {"instance_f1", "instance_precision", "instance_recall", "mean_matched_iou"} <= set(summary["domain"])
    objects = sorted((run / "evaluate" / "instances").glob("*.csv"))
    assert len(objects) == 2
    header = next(csv.reader(objects[0].open()))
    assert "area_um2" in header and "mean_intensity" in header


def test_pipeline_infer_writes_instances_and_measurements(runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["three_class"]
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "bundle.json").read_text())["head"]["method"] == "three_class"
    image = sorted(p for p in (run.parent / "data").rglob("*.nii.gz") if p.parent.name == "imagesTr")[0]
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "model"), "--input", str(image), "--output", str(out), "--no-mlflow", "--quiet"]) == 0
    stem = image.name[: -len(".nii.gz")]
    inst = nib.load(out / f"{stem}_instances.nii.gz")
    labels = nib.load(out / image.name)
    scan = nib.load(image)
    assert inst.shape == labels.shape == scan.shape
    np.testing.assert_allclose(inst.affine, scan.affine)
    data = np.asarray(inst.dataobj)
    np.testing.assert_array_equal(data > 0, np.asarray(labels.dataobj) > 0)
    rows = list(csv.DictReader((out / f"{stem}_instances.csv").open()))
    assert len(rows) == len(np.unique(data[data > 0]))
    if rows:  # areas in µm² at the scan's 0.5 µm pixels
        assert float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["n_voxels"]) * 0.25)
    # A second run skips the case; deleting the instance map makes it run again.
    (out / f"{stem}_instances.nii.gz").unlink()
    assert main(["infer", str(tmp_path / "model"), "--input", str(image), "--output", str(out), "--no-mlflow", "--quiet"]) == 0
    assert (out / f"{stem}_instances.nii.gz").is_file()


def test_3d_nuclei_get_3d_instances_and_volumes(tmp_path: Path) -> None:
    """Anisotropic stacks: 3D instance maps on each stack's grid and volumes in µm³ from its voxel size."""
    manifest = small_manifest(tmp_path, "cells3d_demo", [32, 32, 12])
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "preprocess": {"orientation": "RAS", "spacing": None, "intensity": {"mode": "percentile"},
                       "patch": {"size": [16, 16, 8], "num_samples": 1}},
        "model": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "infer": {"roi_size": [16, 16, 8], "overlap": 0.25}, "train.epochs": 1,
        "instances": {"method": "three_class", "min_size_px": 0}})
    run = tmp_path / "run"
    assert main(["run", str(wf), "--run-dir", str(run)]) == 0
    record = json.loads((run / "infer" / "_stage.json").read_text())["record"]
    cid, rel = sorted(record["instances"].items())[0]
    inst = nib.load(run / rel)
    assert inst.shape == (32, 32, 12)
    np.testing.assert_allclose(inst.header.get_zooms(), (0.0005, 0.0005, 0.001), rtol=1e-5)
    rows = list(csv.DictReader((run / "evaluate" / "instances" / f"{cid}.csv").open()))
    data = np.asarray(inst.dataobj)
    assert len(rows) == len(np.unique(data[data > 0]))
    for r in rows:  # a voxel is 0.5 x 0.5 x 1.0 µm
        assert float(r["volume_um3"]) == pytest.approx(int(r["n_voxels"]) * 0.25)
    assert "instance_f1" in json.loads((run / "summary.json").read_text())["domain"]
