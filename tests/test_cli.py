"""Every bad input gets one clear message, exit code 2, no traceback and no partial output."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from tests.utils import AFFINES, blob_dataset, tiny_workflow, write_nifti


def _image(root: Path, cid: str = "case0") -> Path:
    return root / "imagesTr" / f"{cid}.nii.gz"


def _label(root: Path, cid: str = "case0") -> Path:
    return root / "labelsTr" / f"{cid}.nii.gz"


def truncate(root: Path) -> str:
    data = _image(root).read_bytes()
    _image(root).write_bytes(data[: len(data) // 2])
    return "truncated or corrupt"


def nan_voxels(root: Path) -> str:
    img = nib.load(_image(root))
    data = np.asarray(img.dataobj).copy()
    data[1, 2, 3] = np.nan
    write_nifti(_image(root), data, img.affine)
    return "1 NaN or infinite voxels"


def shape_mismatch(root: Path) -> str:
    img = nib.load(_label(root))
    write_nifti(_label(root), np.asarray(img.dataobj)[:-2], img.affine)
    return "same grid"


def affine_mismatch(root: Path) -> str:
    img = nib.load(_label(root))
    write_nifti(_label(root), np.asarray(img.dataobj), AFFINES["oblique"])
    return "different affines"


def undeclared_label(root: Path) -> str:
    img = nib.load(_label(root))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    write_nifti(_label(root), data, img.affine)
    return "values [7] that the manifest"


def missing_image(root: Path) -> str:
    _image(root).unlink()
    return "image file not found"


def missing_manifest(root: Path) -> str:
    (root / "dataset.json").unlink()
    return "data.manifest: file not found"


def not_gzip(root: Path) -> str:
    _image(root).write_bytes(gzip.compress(b"not a nifti at all"))
    return "truncated or corrupt"


@pytest.mark.parametrize(
    "breaker",
    [truncate, nan_voxels, shape_mismatch, affine_mismatch, undeclared_label, missing_image, missing_manifest,
     not_gzip],
)
def test_bad_data_is_one_clear_error_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breaker: Callable[[Path], str]
) -> None:
    manifest = blob_dataset(tmp_path / "data")
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest)
    expected = breaker(tmp_path / "data")
    run_dir = tmp_path / "run"
    code = main(["run", str(wf), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert err.startswith("error: ")
    if breaker is not missing_manifest:
        assert "case0" in err
    assert not run_dir.exists(), "a failed run must not leave a partial run folder"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: tiny\ndata: {manifest: [\n", "malformed YAML"),
        ("name: tiny\nbogus_section: 1\n", "bogus_section: unknown key"),
    ],
)
def test_bad_workflow_through_the_command_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.name=unet3000", "unknown model 'unet3000'"),
        ("train.epochs=ten", "train.epochs"),
        ("train.epochz=2", "train.epochz: unknown key"),
    ],
)
def test_bad_config_values_stop_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    wf = tiny_workflow(tmp_path / "wf.yaml", blob_dataset(tmp_path / "data"))
    code = main(["run", str(wf), "--run-dir", str(tmp_path / "run"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_malformed_manifest_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = blob_dataset(tmp_path / "data")
    manifest.write_text(json.dumps({"labels": {"0": "bg"}, "training": [{"image": "x.nii.gz"}]}))
    code = main(["run", str(tiny_workflow(tmp_path / "wf.yaml", manifest)), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "needs 'image' and 'label'" in err
    assert not (tmp_path / "run").exists()
