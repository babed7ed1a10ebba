"""Every bad input gets one clear message, exit code 2, no traceback and no partial output."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import build_parser, main
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
    return "not a NIfTI image (no NIfTI header)"


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


def _subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flag(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_infer_executor_choices_are_the_registered_executors() -> None:
    from pipeline.cohort.executors import EXECUTORS

    action = _flag(_subcommand("infer"), "--executor")
    assert list(action.choices) == EXECUTORS.names() and "local" in EXECUTORS.names()
    assert action.default == "local"


def test_crf_flags_are_the_crf_config_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """Every CRFConfig field but `tune` is a `pipeline crf` flag with the model's default, shown in --help."""
    from pipeline.config.schema import CRFConfig

    parser = _subcommand("crf")
    fields = {name: f for name, f in CRFConfig.model_fields.items() if name != "tune"}
    assert fields
    for name, field in fields.items():
        action = _flag(parser, f"--{name.replace('_', '-')}")
        assert action.dest == name and action.default == field.get_default()
    assert not any(a.dest == "tune" for a in parser._actions)
    for kept in ("--probs", "--image", "--out", "--num-classes"):
        _flag(parser, kept)
    with pytest.raises(SystemExit):
        main(["crf", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name, field in fields.items():
        assert f"--{name.replace('_', '-')}" in shown and f"(default: {field.get_default()})" in shown


@pytest.mark.parametrize("flag", [["--smooth-weight", "-1"], ["--iterations", "0"], ["--bbox-margin-mm", "inf"]])
def test_bad_crf_flag_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    code = main(["crf", "--probs", str(tmp_path / "p.nii.gz"), "--image", str(tmp_path / "i.nii.gz"),
                 "--out", str(tmp_path / "out.nii.gz"), *flag])
    err = capsys.readouterr().err
    assert code == 2 and "invalid CRF option" in err and flag[0] in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_building_the_parser_imports_no_torch() -> None:
    """The parser lists registered executors and CRF fields without importing torch (every command pays for it)."""
    code = "import sys; from pipeline.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
