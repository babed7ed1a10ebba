"""An interrupted training resumes: the run again executes only the epochs that were left, and keeps the earlier
epochs' history as the checkpoint holds it.

A seeded restart from epoch 0 ends with the same history as a resume (every epoch re-seeds), so comparing
histories with an uninterrupted run (test_resume_exact.py) cannot tell the two apart. Here the resumed process
counts the training steps it executes, and a sentinel written into the checkpoint's history must survive: a
restart would run every epoch and recompute that entry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import EXIT_INTERRUPTED, main
from pipeline.training import trainer
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from tests.utils import blob_dataset, tiny_workflow

EPOCHS, DONE, ITERS = 3, 2, 2  # epochs in all, epochs finished when interrupted, steps per epoch
SENTINEL = 12345.5  # a training loss no run computes


def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the training steps (loss computations) from now on."""
    steps: list[int] = []
    real = trainer.compute_loss

    def counted(*args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_loss", counted)
    return steps


def test_interrupted_training_runs_only_the_remaining_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    wf = tiny_workflow(tmp_path / "wf.yaml", blob_dataset(tmp_path / "data"),
                       **{"train.epochs": EPOCHS, "train.iterations_per_epoch": ITERS,
                          "evaluate": {"metrics": ["dice"], "figures": 0, "overlays": False}})
    run_dir, train_dir = tmp_path / "run", tmp_path / "run" / "train"
    argv = ["run", str(wf), "--run-dir", str(run_dir)]

    # Interrupted (Ctrl-C; the runner turns SIGTERM into the same) once epoch DONE's checkpoint and history are
    # written.
    write_json = trainer.write_json

    def interrupt_after_epoch(path: Path, doc: Any) -> None:
        write_json(path, doc)
        if path.name == "history.json" and len(doc) == DONE:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_json", interrupt_after_epoch)
    steps = count_steps(monkeypatch)
    assert main(argv) == EXIT_INTERRUPTED
    assert len(steps) == DONE * ITERS
    assert not (train_dir / "_stage.json").exists()
    state = load_checkpoint(train_dir / "last.pt")
    assert state["epoch"] + 1 == DONE and len(state["history"]) == DONE
    state["history"][0]["train_loss"] = SENTINEL  # what a resume keeps and a restart recomputes
    save_checkpoint(train_dir / "last.pt", state)
    kept = [dict(row) for row in state["history"]]

    monkeypatch.setattr(trainer, "write_json", write_json)
    steps = count_steps(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert main(argv) == 0
    assert len(steps) == (EPOCHS - DONE) * ITERS, (
        f"the resumed run executed {len(steps)} training steps; only the {EPOCHS - DONE} epoch(s) left "
        f"({(EPOCHS - DONE) * ITERS} steps) should run")
    assert f"[train] resuming after epoch {DONE} of {EPOCHS}" in caplog.messages
    history = json.loads((train_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert history[:DONE] == kept, "the earlier epochs' history was not kept as the checkpoint holds it"
    record = json.loads((train_dir / "_stage.json").read_text())["record"]
    assert record["resumed_from_epoch"] == DONE and record["epochs"] == EPOCHS
    final = load_checkpoint(train_dir / "last.pt")
    assert final["epoch"] + 1 == EPOCHS and final["history"] == history
