"""A training run killed (SIGKILL) after some epochs and run again resumes from its last checkpoint and ends exactly
where an uninterrupted run with the same seed ends: the same tensors, bit for bit, and the same history; in one
process and in two (``--nproc 2``, slow: every run starts four Python processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.training.checkpoint import load_checkpoint
from tests.utils import blob_dataset, tiny_workflow

EPOCHS = 6


def command(wf: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(wf), "--run-dir", str(run_dir), *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in every run; kind to a shared machine


def run(wf: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command(wf, run_dir, *extra), check=False, capture_output=True, text=True, timeout=120,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def kill_after_epochs(wf: Path, run_dir: Path, epochs: int, *extra: str) -> None:
    """Start the run and SIGKILL it (its process group: torchrun's workers die with torchrun) once ``epochs``
    epochs are in its history."""
    proc = subprocess.Popen(command(wf, run_dir, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    history = run_dir / "train" / "history.json"  # written after last.pt
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if history.is_file() and len(json.loads(history.read_text())) >= epochs:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal nested checkpoint data, tensors with ``torch.equal``."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("extra", [pytest.param((), id="1-process"),
                                   pytest.param(("--nproc", "2"), id="2-processes", marks=pytest.mark.slow)])
def test_killed_run_resumes_exactly(tmp_path: Path, extra: tuple[str, ...]) -> None:
    wf = tiny_workflow(tmp_path / "wf.yaml", blob_dataset(tmp_path / "data"), **{"train.epochs": EPOCHS})
    reference = tmp_path / "reference"
    run(wf, reference, *extra)

    killed = tmp_path / "killed"
    kill_after_epochs(wf, killed, 2, *extra)
    assert not (killed / "train" / "_stage.json").exists()
    done = load_checkpoint(killed / "train" / "last.pt")["epoch"] + 1  # epochs finished when it died
    assert 2 <= done < EPOCHS

    proc = run(wf, killed, *extra)
    assert f"[train] resuming after epoch {done} of {EPOCHS}" in proc.stderr
    record = json.loads((killed / "train" / "_stage.json").read_text())["record"]
    assert record["resumed_from_epoch"] == done and record["world_size"] == (2 if extra else 1)
    assert json.loads((reference / "train" / "_stage.json").read_text())["record"]["resumed_from_epoch"] is None

    for name in ("last.pt", "best.pt"):
        assert_same(load_checkpoint(killed / "train" / name), load_checkpoint(reference / "train" / name), name)
    assert (json.loads((killed / "train" / "history.json").read_text())
            == json.loads((reference / "train" / "history.json").read_text()))
