"""Hostile model files: a bundle's weights or a training checkpoint that would run code when unpickled."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.models import MODELS
from pipeline.training.checkpoint import load_checkpoint
from tests.bundle.test_untrusted_weights import hostile_bundle, hostile_checkpoint
from tests.cohort.test_cohort import Threshold, blob
from tests.hostile.harness import refused, refused_call
from tests.utils import AFFINES, write_nifti


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


def test_bundle_weights_that_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bundle weights.pt that runs code when unpickled → one error naming the file and the object; no code runs."""
    marker = tmp_path / "ran"
    bundle = hostile_bundle(tmp_path / "model", marker)
    scan = write_nifti(tmp_path / "in" / "case.nii.gz", blob((20, 18, 8)), AFFINES["lps"])
    out = tmp_path / "out"
    r = refused(["infer", str(bundle), "--input", str(scan), "--output", str(out), "--no-mlflow", "--quiet"], capsys,
                names=[str(bundle / "weights.pt"), "pickled Python object (exec)", "could run code",
                       "pipeline export"],
                untouched=[bundle, scan.parent])
    assert not marker.exists(), "unpickling the weights ran their code"
    assert not out.exists()
    assert "weights_only" not in r.message and len(r.message.strip().splitlines()) == 1


def test_checkpoint_that_runs_code(tmp_path: Path) -> None:
    """Training checkpoint that runs code when unpickled → one error naming the file and the object; no code runs."""
    marker = tmp_path / "ran"
    ckpt = hostile_checkpoint(tmp_path / "train" / "last.pt", marker)
    r = refused_call(lambda: load_checkpoint(ckpt), PipelineError,
                     names=[str(ckpt), "pickled Python object (exec)", "delete it and re-run training"],
                     untouched=[ckpt.parent])
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert "weights_only" not in r.message and len(r.message.splitlines()) == 1
