"""``pipeline infer --precision`` and ``--compile``: the choice is printed and in report.json (with the hardware
that decided it) and MLflow, it is part of a case's skip key (another precision redoes the case), and the
compiled network writes the eager network's labels with its warm-up reported apart."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.models import MODELS
from pipeline.runtime.precision import resolve_precision
from tests.cohort.test_cohort import blob, threshold_bundle
from tests.utils import AFFINES, Threshold, write_nifti


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


def infer(bundle, inp, out, *extra: str) -> dict:
    assert main(["infer", str(bundle), "--input", str(inp), "--output", str(out), "--no-mlflow", "--quiet",
                 *extra]) == 0
    return json.loads((out / "report.json").read_text())


def labels(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def test_precision_is_reported_and_keys_the_outputs(tmp_path, caplog):
    inp = tmp_path / "in"
    write_nifti(inp / "a.nii.gz", blob(), AFFINES["oblique"])
    bundle, out = threshold_bundle(tmp_path / "model"), tmp_path / "out"
    auto = resolve_precision("auto", "cpu")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        report = infer(bundle, inp, out)
    assert report["precision"] == auto.name and f"precision: {auto.describe()}" in caplog.text
    assert report["hardware"]["cpu_flags"] and report["hardware"]["hardware_bf16"] in ("yes", "no")
    auto_labels = labels(out / "a.nii.gz")
    report = infer(bundle, inp, out, "--precision", auto.name)  # auto is what it resolves to: the same key
    assert report["cases"][0]["status"] == "skipped"
    other = "bf16" if auto.name == "fp32" else "fp32"
    report = infer(bundle, inp, out, "--precision", other)
    assert report["precision"] == other and report["cases"][0]["status"] == "written"  # redone, not skipped
    assert np.array_equal(labels(out / "a.nii.gz"), auto_labels)  # intensities 1 and 101 against 51: no tie
    assert infer(bundle, inp, out, "--precision", other)["cases"][0]["status"] == "skipped"


def test_compiled_network_writes_the_same_labels(tmp_path):
    inp = tmp_path / "in"
    write_nifti(inp / "a.nii.gz", blob(), AFFINES["lps"])
    bundle = threshold_bundle(tmp_path / "model")
    plain = infer(bundle, inp, tmp_path / "plain")
    assert "compile_warm_up_seconds" not in plain
    report = infer(bundle, inp, tmp_path / "compiled", "--compile")
    assert report["compile_warm_up_seconds"] > 0 and report["options"]["compile"] == "True"
    assert report["cases"][0]["seconds"] < report["compile_warm_up_seconds"] + 60  # sanity: a number, in seconds
    assert np.array_equal(labels(tmp_path / "plain" / "a.nii.gz"), labels(tmp_path / "compiled" / "a.nii.gz"))
    again = infer(bundle, inp, tmp_path / "compiled", "--no-compile")  # compile is in the key
    assert again["cases"][0]["status"] == "written"


def test_an_unknown_precision_is_refused_by_name(tmp_path, capsys):
    bundle = threshold_bundle(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_:
        main(["infer", str(bundle), "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--precision", "half"])
    assert exit_.value.code == 2
    assert "argument --precision: invalid choice: 'half' (choose from 'auto', 'fp32', 'bf16', 'fp16')" in capsys.readouterr().err
