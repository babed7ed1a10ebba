"""Crash safety of ``pipeline run``: one run per run folder (a second is refused at once), temporaries that a killed
run left are removed by the next one, and SIGTERM ends a run like Ctrl-C (exit 130, no temporary, MLflow run
``KILLED``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, main
from pipeline.config.loader import load_workflow
from pipeline.engine.lock import LOCK_FILE, RunLock
from pipeline.errors import PipelineError
from pipeline.stages import run_workflow
from tests.engine.kill_helper import temporaries, wait_no_running
from tests.utils import blob_dataset, tiny_workflow

STALE = ("._stage.a1b2.part.json", "train/.last.x9y8.part.pt", "infer/validation/.case0.q1.part.nii.gz",
         "evaluate/overlays/.case1.zz.part.png", "infer/.scan.m4.part")  # the last: the .mhd writer's folder


def plant(run_dir: Path) -> None:
    for rel in STALE:
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".part"):
            path.mkdir()
            (path / "scan.raw").write_bytes(b"half")
        else:
            path.write_bytes(b"half")


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    manifest = blob_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    return tiny_workflow(tmp_path / "wf.yaml", manifest)


def test_stale_temporaries_are_removed_at_the_start(workflow: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    plant(run_dir)
    kept = [run_dir / ".notes", run_dir / "train" / "keep.part.txt", run_dir / "mlflow-fallback" / ".x.part.json"]
    for path in kept:  # not temporaries, or not in a stage folder (the fallback store has its own writers)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    handler = signal.getsignal(signal.SIGTERM)
    caplog.set_level(logging.INFO, logger="pipeline")
    run_workflow(load_workflow(workflow), run_dir=run_dir, only="prepare")
    assert temporaries(run_dir) == ["mlflow-fallback/.x.part.json"]
    assert all(p.read_text() == "mine" for p in kept)
    for rel in STALE:
        assert f"removed {run_dir / rel} left by an interrupted run" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == handler, "execute() must put the previous SIGTERM handler back"
    assert (run_dir / LOCK_FILE).read_text() == "", "the lock file names no process once the run is over"


def test_a_locked_run_folder_is_refused_and_left_alone(workflow: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock.acquire(run_dir):
        plant(run_dir)  # the holder's live temporaries: never touched
        with pytest.raises(PipelineError) as info:
            run_workflow(load_workflow(workflow), run_dir=run_dir)
        msg = str(info.value)
        assert str(run_dir) in msg and f"process {os.getpid()}" in msg and "wait for it to finish" in msg, msg
        assert "run the same command again to resume" in msg
        assert all((run_dir / rel).exists() for rel in STALE) and not (run_dir / "workflow.yaml").exists()
        monkeypatch.setenv("RANK", "1")  # a torchrun worker works in its rank 0's folder: no lock, no clean-up
        run_workflow(load_workflow(workflow), run_dir=run_dir, only="prepare")
        assert all((run_dir / rel).exists() for rel in STALE)
    monkeypatch.delenv("RANK")
    run_workflow(load_workflow(workflow), run_dir=run_dir, only="prepare")  # released: runs and cleans up
    assert temporaries(run_dir) == []


def test_second_run_refused_while_first_runs_and_sigterm_ends_it_like_ctrl_c(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = blob_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "train.epochs": 500, "tracking": {"enabled": True, "tracking_uri": uri, "experiment": "sigterm"}})
    run_dir = tmp_path / "run"
    args = ["run", str(wf), "--run-dir", str(run_dir)]
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "RANK": "0"})
    try:
        deadline = time.time() + 120
        while not (run_dir / "train" / "last.pt").is_file():  # training is under way (and tracked)
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)

        t0 = time.perf_counter()
        assert main(args) == EXIT_USER_ERROR  # the same command, while the first works
        err = capsys.readouterr().err
        assert time.perf_counter() - t0 < 10, "refused at once"
        assert f"error: {run_dir} is in use" in err and f"process {first.pid}" in err and "wait for it" in err, err
        assert first.poll() is None and (run_dir / "train" / "last.pt").is_file(), "the refused run touched nothing"

        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == EXIT_INTERRUPTED, first_err[-3000:]
    assert "interrupted; run the same command again to resume" in first_err
    assert temporaries(run_dir) == []
    runs = wait_no_running(uri)
    assert [r.info.status for r in runs] == ["KILLED"], "one MLflow run (none for the refused command), KILLED"
    with RunLock.acquire(run_dir):  # the lock went with the process
        pass
