"""A model file that would run code when unpickled is refused, and its code never runs: bundles (through the real
loading path, :func:`load_bundle`) and training checkpoints (:func:`load_checkpoint`). The command-line form of
both is in the hostile-input corpus (tests/hostile/test_model_files.py).

The hostile file is what an attacker can ship: a ``weights.pt`` holding an object whose ``__reduce__`` calls
``exec`` (here: writing a marker file), with a ``bundle.json`` whose sha256 matches it. Loading it with
``torch.load(weights_only=False)`` would write the marker; the pipeline must refuse it by name instead."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.bundle import load_bundle
from pipeline.errors import PipelineError
from pipeline.models import MODELS
from pipeline.training.checkpoint import load_checkpoint
from tests.cohort.test_cohort import Threshold, threshold_bundle


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


class RunsCode:
    """Unpickling this calls ``exec`` with a statement that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('the file ran code')",))


def hostile_bundle(folder: Path, marker: Path) -> Path:
    """A valid bundle whose weights file is replaced by one that runs code, its digest updated to match."""
    bundle = threshold_bundle(folder)
    weights = bundle / "weights.pt"
    torch.save({"level": RunsCode(marker)}, weights)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return bundle


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A training checkpoint with an object that runs code in its history."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 3, "model_state": {}, "history": [RunsCode(marker)]}, path)
    return path


def test_the_hostile_files_do_run_code_when_trusted(tmp_path: Path) -> None:
    """The test of the test: loaded without ``weights_only`` the files write their marker."""
    for i, make in enumerate((lambda m: hostile_bundle(tmp_path / "model", m) / "weights.pt",
                              lambda m: hostile_checkpoint(tmp_path / "train" / "last.pt", m))):
        marker = tmp_path / f"ran{i}"
        torch.load(make(marker), weights_only=False)
        assert marker.read_text() == "the file ran code"


def test_load_bundle_refuses_weights_that_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bundle = hostile_bundle(tmp_path / "model", marker)
    with pytest.raises(PipelineError) as info:
        load_bundle(bundle)
    assert not marker.exists(), "loading the bundle ran the code in its weights"
    message = str(info.value)
    assert str(bundle / "weights.pt") in message and "pickled Python object (exec)" in message
    assert "weights_only" not in message and len(message.splitlines()) == 1


def test_load_checkpoint_refuses_a_checkpoint_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ckpt = hostile_checkpoint(tmp_path / "train" / "last.pt", marker)
    with pytest.raises(PipelineError) as info:
        load_checkpoint(ckpt)
    assert not marker.exists(), "loading the checkpoint ran its code"
    message = str(info.value)
    assert str(ckpt) in message and "pickled Python object (exec)" in message
    assert "weights_only" not in message and len(message.splitlines()) == 1
