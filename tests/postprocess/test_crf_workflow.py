"""The dense CRF in a workflow (side-by-side metrics, tuning) and through `pipeline crf`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from tests.utils import AFFINES, blob_case, blob_dataset, tiny_workflow, write_nifti


@pytest.fixture(scope="module")
def crf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("crf")
    manifest = blob_dataset(tmp / "data", n_train=3, n_val=1, n_test=2)
    wf = tiny_workflow(tmp / "wf.yaml", manifest, **{
        "train.epochs": 4, "postprocess": {"crf": {"backend": "pydensecrf", "iterations": 3, "tune": {
            "smooth_weight": [1.0, 3.0], "bilateral_weight": [3.0], "bilateral_sigma_mm": [5.0],
            "bilateral_sigma_intensity": [0.5]}}}})
    assert main(["run", str(wf), "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def test_metrics_with_and_without_crf_side_by_side(crf_run: Path) -> None:
    summary = json.loads((crf_run / "summary.json").read_text())
    assert set(summary["no_crf"]["classes"]) == set(summary["classes"]) == {"outer", "inner"}
    assert "dice_mean" in summary["no_crf"] and summary["crf"]["backend"] == "pydensecrf"
    rows = list(csv.DictReader((crf_run / "evaluate" / "cases.csv").open()))
    assert {"dice", "dice_no_crf", "hd95", "hd95_no_crf"} <= set(rows[0])


def test_tuning_picks_from_the_grid_and_records_it(crf_run: Path) -> None:
    tuning = json.loads((crf_run / "postprocess" / "crf_tuning.json").read_text())
    assert len(tuning["grid"]) == 2
    assert tuning["best_dice"] == max(g["dice"] for g in tuning["grid"])
    summary = json.loads((crf_run / "summary.json").read_text())
    assert summary["crf"]["smooth_weight"] == tuning["best"]["smooth_weight"]


def test_crf_outputs_keep_geometry(crf_run: Path) -> None:
    for path in (crf_run / "postprocess").glob("*.nii.gz"):
        src = nib.load(crf_run.parent / "data" / "imagesTr" / path.name)
        pred = nib.load(path)
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
    probs = nib.load(next((crf_run / "infer").glob("*_probs.nii.gz")))
    assert probs.shape[-1] == 3
    np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-4)


def _probs_and_image(tmp_path: Path, affine=AFFINES["oblique"]) -> tuple[Path, Path]:
    image, label = blob_case(seed=1)
    onehot = np.eye(3, dtype=np.float32)[label] * 0.7 + 0.1  # (x, y, z, class), sums to 1
    img = write_nifti(tmp_path / "image.nii.gz", image, AFFINES["oblique"])
    probs = write_nifti(tmp_path / "probs.nii.gz", onehot, affine)
    return probs, img


def test_cli_writes_labels_on_the_image_grid(tmp_path: Path) -> None:
    probs, img = _probs_and_image(tmp_path)
    out = tmp_path / "labels.nii.gz"
    assert main(["crf", "--probs", str(probs), "--image", str(img), "--out", str(out), "--backend", "pydensecrf",
                 "--iterations", "2", "--num-classes", "3"]) == 0
    ref, lab = nib.load(img), nib.load(out)
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine)
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (lambda p: p * 2, "must sum to 1"),
        (lambda p: np.where(p > 0.5, np.nan, p), "finite and non-negative"),
        (lambda p: p - 0.2, "finite and non-negative"),
        (lambda p: p[:-1], "same grid"),
        (lambda p: p[..., :2] / p[..., :2].sum(-1, keepdims=True), "holds 2 classes"),
    ],
)
def test_cli_bad_probabilities(tmp_path: Path, capsys: pytest.CaptureFixture[str], breaker, expected: str) -> None:
    probs, img = _probs_and_image(tmp_path)
    data = breaker(np.asarray(nib.load(probs).dataobj))
    write_nifti(probs, data.astype(np.float32), AFFINES["oblique"])
    out = tmp_path / "labels.nii.gz"
    code = main(["crf", "--probs", str(probs), "--image", str(img), "--out", str(out), "--num-classes", "3"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_cli_affine_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probs, img = _probs_and_image(tmp_path, affine=AFFINES["lps"])
    assert main(["crf", "--probs", str(probs), "--image", str(img), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "different affines" in capsys.readouterr().err
