"""What a done case's key covers, through `pipeline infer` on a tiny bundle: a case done without ``--crf`` is
segmented again when ``--crf`` is asked for (and back), and a ``.mhd`` scan whose ``.raw`` voxels changed is
segmented again (the header alone is unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.cli import main
from pipeline.models import MODELS
from tests.cohort.test_cohort import Threshold, blob, threshold_bundle, write_itk
from tests.utils import AFFINES, write_nifti


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


def infer(bundle: Path, scans: Path, out: Path, *extra: str) -> dict[str, str]:
    """Run `pipeline infer`; the status of each case (by input file name) in the report."""
    argv = ["infer", str(bundle), "--input", str(scans), "--output", str(out), "--no-mlflow", "--quiet", *extra]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    return {Path(c["input"]).name: c["status"] for c in report["cases"]}


def test_crf_is_part_of_the_key(tmp_path: Path) -> None:
    bundle = threshold_bundle(tmp_path / "model")
    scans = tmp_path / "in"
    write_nifti(scans / "a.nii.gz", blob((20, 18, 8)), AFFINES["lps"])
    out = tmp_path / "out"
    assert infer(bundle, scans, out) == {"a.nii.gz": "written"}
    assert infer(bundle, scans, out) == {"a.nii.gz": "skipped"}
    assert infer(bundle, scans, out, "--crf") == {"a.nii.gz": "written"}, "a case done without --crf was skipped"
    assert infer(bundle, scans, out, "--crf") == {"a.nii.gz": "skipped"}
    assert infer(bundle, scans, out) == {"a.nii.gz": "written"}, "a case done with --crf was skipped without it"


def test_mhd_data_file_is_part_of_the_key(tmp_path: Path) -> None:
    bundle = threshold_bundle(tmp_path / "model")
    scans = tmp_path / "in"
    scans.mkdir()
    data = blob((20, 18, 8))
    header = write_itk(scans / "scan.mhd", data, (1.0, 1.0, 2.0), np.eye(3), (0.0, 0.0, 0.0))
    raw = scans / "scan.raw"
    assert raw.is_file() and f"ElementDataFile = {raw.name}" in header.read_text()
    out = tmp_path / "out"
    assert infer(bundle, scans, out) == {"scan.mhd": "written"}
    assert infer(bundle, scans, out) == {"scan.mhd": "skipped"}
    before = (header.read_bytes(), raw.stat().st_size)
    brighter = np.full_like(data, 101)  # every voxel above the model's threshold now
    raw.write_bytes(np.ascontiguousarray(brighter.T).tobytes())  # ITK's x-fastest order, same size and type
    assert (header.read_bytes(), raw.stat().st_size) == before  # only the voxels in the .raw changed
    assert infer(bundle, scans, out) == {"scan.mhd": "written"}, "a changed .raw file was skipped"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan.mhd")))
    assert (labels == 1).all(), "the output is not the segmentation of the new voxels"
