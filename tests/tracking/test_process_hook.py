"""The MLflow hook in its own process (what ``pipeline run`` uses): the same run as in-process, its warnings in the
parent's log, and an MLflow run that ends (KILLED) however the pipeline process goes: Ctrl-C, SIGKILL, or the
tracking process itself dying (the work goes on)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config.loader import load_workflow
from pipeline.engine.hooks import Hook, StageStarting
from pipeline.stages import default_hooks, run_workflow
from pipeline.tracking.process import HookProcess, available
from pipeline.tracking.tracker import mlflow_client
from tests.utils import blob_dataset, tiny_workflow

pytestmark = pytest.mark.skipif(not available(), reason="the tracking process needs POSIX pipes")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blob_dataset(tmp_path_factory.mktemp("process-data"), n_train=2, n_val=1, n_test=1)


def _runs(uri: str, experiment: str = "tiny") -> list:
    client = mlflow_client(uri)  # under the store's lock: the run may be creating its tables right now
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_run_tracked_from_the_child_process_holds_everything(tmp_path: Path, data: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wf = tiny_workflow(tmp_path / "wf.yaml", data, tracking={"enabled": True, "tracking_uri": uri})
    loaded = load_workflow(wf, [])
    hooks = default_hooks(loaded, tmp_path / "run", tracking_process=True)
    assert isinstance(hooks[0], HookProcess)
    child = hooks[0]._child.proc
    result = run_workflow(loaded, run_dir=tmp_path / "run", hooks=hooks)

    assert child.poll() == 0  # it ended with the run
    (run,) = _runs(uri)
    assert run.info.run_id == result.mlflow_run_id and run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert "test_dice_mean" in run.data.metrics and run.data.tags["model"] == "vnet"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert "evaluate/cases.csv" in artifacts and "evaluate/overlays" in artifacts


def test_the_child_process_warnings_reach_the_parents_log_once(tmp_path: Path, data: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"  # its folder cannot be created
    wf = tiny_workflow(tmp_path / "wf.yaml", data, tracking={"enabled": True, "tracking_uri": uri})
    caplog.set_level(logging.WARNING)
    result = run_workflow(load_workflow(wf, []), run_dir=tmp_path / "run", tracking_process=True)
    assert result.summary is not None and result.mlflow_run_id is None
    (warning,) = _warnings(caplog)
    assert "the run goes on without it" in warning and "tracking.enabled: false" in warning


class KillTrackingAt(Hook):
    """Kills the tracking process when ``stage`` starts."""

    def __init__(self, hook: HookProcess, stage: str) -> None:
        self.hook, self.stage = hook, stage

    def stage_starting(self, event: StageStarting) -> None:
        if event.stage == self.stage:
            self.hook.flush()  # the MLflow run exists
            self.hook._child.proc.kill()
            self.hook._child.proc.wait()


def test_the_tracking_process_dying_is_said_once_and_the_work_goes_on(tmp_path: Path, data: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wf = tiny_workflow(tmp_path / "wf.yaml", data, tracking={"enabled": True, "tracking_uri": uri})
    loaded = load_workflow(wf, [])
    (hook,) = default_hooks(loaded, tmp_path / "run", tracking_process=True)
    caplog.set_level(logging.WARNING)
    result = run_workflow(loaded, run_dir=tmp_path / "run", hooks=[hook, KillTrackingAt(hook, "train")])
    assert result.summary is not None and (tmp_path / "run" / "evaluate" / "_stage.json").is_file()
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"MLflow tracking ({uri}) failed (the tracking process stopped")
    assert "the run goes on without it" in warning


def _start(tmp_path: Path, data: Path) -> tuple[subprocess.Popen[str], str]:
    """A tracked ``pipeline run`` long enough to be stopped during training; returns once its MLflow run holds
    a training epoch."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wf = tiny_workflow(tmp_path / "wf.yaml", data, tracking={"enabled": True, "tracking_uri": uri,
                                                             "system_metrics": 0.2},
                       **{"train.epochs": 100_000, "train.val_every": 100_000})  # killed long before
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(wf), "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        runs = _runs(uri) if (tmp_path / "mlflow.db").exists() else []
        if runs and any(k.startswith("system/") for k in runs[0].data.metrics):  # tracked, and training
            return proc, uri
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the run did not start tracking: {proc.communicate()[1][-2000:]}")


def _status_soon(uri: str, seconds: float = 60) -> str:
    deadline = time.time() + seconds
    while True:
        (run,) = _runs(uri)
        if run.info.status != "RUNNING" or time.time() > deadline:
            return run.info.status
        time.sleep(0.2)


def _tracking_children(parent_pid: int) -> list[int]:
    """The tracking processes whose parent is ``parent_pid`` (from /proc: ``ps`` cuts long lines to 80 columns)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent_pid and b"pipeline.tracking.process" in cmdline:
            found.append(int(proc.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (nobody reaped it yet)


def test_ctrl_c_ends_the_mlflow_run_killed(tmp_path: Path, data: Path) -> None:
    proc, uri = _start(tmp_path, data)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends: every process of the group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _status_soon(uri, 0) == "KILLED"  # ended before the command returned
    assert "Traceback" not in err


def test_a_killed_pipeline_leaves_no_running_mlflow_run(tmp_path: Path, data: Path) -> None:
    proc, uri = _start(tmp_path, data)
    (child,) = _tracking_children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to say anything: the tracking process reads the end of its pipe
    proc.communicate(timeout=60)
    assert _status_soon(uri) == "KILLED"
    deadline = time.time() + 30
    while _running(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(child)  # and it exits
