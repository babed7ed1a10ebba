"""Remote tracking that loses nothing: a tracking server away at the start or lost mid-run, the local fallback
store, and ``pipeline tracking sync`` (exactly once, also after a sync interrupted half-way).

One real ``mlflow server`` (SQLite store, one worker) serves the module: it is started when the module's first test
begins, so it boots while that test runs on a closed port, and it is stopped and restarted on the same store by the
mid-run test.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from pipeline.config.loader import load_workflow
from pipeline.engine.hooks import Hook, RunEnded, RunStarted, StageDone, StageStarting
from pipeline.errors import PipelineError
from pipeline.stages import default_hooks, run_workflow
from pipeline.tracking.fallback import (
    FAIL_FAST_HTTP,
    ResilientTracker,
    fail_fast_http,
    fallback_uri,
    open_tracker,
    read_pending,
)
from pipeline.tracking.mlflow_hook import RUN_FILE
from pipeline.tracking.sync import sync_run
from pipeline.tracking.tracker import MlflowTracker, Tracker
from pipeline.tracking.ui import wait_ready
from tests.utils import blob_dataset, tiny_workflow

_IMAGE_ID = re.compile(r"\+[0-9a-f-]{36}(?=\.png$|\+compressed\.webp$)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mlflow server`` on a SQLite store and an artifact folder under ``root``, on one port, (re)started at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner process
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 120.0) -> None:
        assert self.proc is not None
        try:
            wait_ready(self.uri, self.proc, timeout)  # what `pipeline ui` waits with
        except PipelineError as exc:
            raise RuntimeError(f"{exc}: {(self.root / 'server.log').read_text()[-3000:]}") from None

    def stop(self) -> None:
        """Kill the server (its process group: the CLI and the uvicorn process it started)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="module", autouse=True)
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The module's tracking server, starting (call ``wait()`` before using it); started with the module's first
    test, so that it boots (about 10 s on 2 cores) while the tests before the first that needs it run."""
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blob_dataset(tmp_path_factory.mktemp("data"), n_train=2, n_val=1, n_test=1)


@pytest.fixture(autouse=True)
def _http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback sets MLflow's HTTP retry variables for the process: unset them here, and again afterwards."""
    for name in FAIL_FAST_HTTP:
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _histories(client: MlflowClient, run: Any) -> dict[str, list[tuple[int, int, float]]]:
    return {k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """A run's artifact files, images named without MLflow's random id."""
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {_IMAGE_ID.sub("", f.path)}
    return out


class Timed(Hook):
    """Another hook, and the seconds spent in it."""

    def __init__(self, hook: Hook) -> None:
        self.hook = hook
        self.seconds = 0.0

    @property
    def run_id(self) -> str | None:
        return getattr(self.hook, "run_id", None)

    def _time(self, method: str, event: Any) -> None:
        t0 = time.perf_counter()
        try:
            getattr(self.hook, method)(event)
        finally:
            self.seconds += time.perf_counter() - t0

    def run_started(self, event: RunStarted) -> None:
        self._time("run_started", event)

    def stage_starting(self, event: StageStarting) -> None:
        self._time("stage_starting", event)

    def stage_done(self, event: StageDone) -> None:
        self._time("stage_done", event)

    def run_ended(self, event: RunEnded) -> None:
        self._time("run_ended", event)


class StopServerAfter(Hook):
    """Kills the tracking server once ``stage`` is done (placed after the MLflow hook, which logged that stage), and
    starts it again (not waiting for it) once the MLflow hook's tracker is on the fallback store: the restart boots
    while the run finishes, and cannot be reached by the run any more."""

    def __init__(self, server: Server, stage: str, mlflow_hook: Any) -> None:
        self.server = server
        self.stage = stage
        self.mlflow_hook = mlflow_hook
        self.restarted = False

    def stage_done(self, event: StageDone) -> None:
        self.mlflow_hook.flush()  # the hook logs in the background: let it log this stage first
        if event.stage == self.stage and not event.reused:
            self.server.stop()
        elif self.server.proc is None and not self.restarted and self.mlflow_hook.tracker.on_fallback:
            self.server.start()
            self.restarted = True


class FlakyServer(Tracker):
    """A stand-in for the run on a server: takes ``ok`` calls, then is away (or refuses calls with ``error``)."""

    def __init__(self, ok: int, error: Exception | None = None) -> None:
        self.run_id = "server-run"
        self.ok = ok
        self.error = error or ConnectionError("[Errno 111] Connection refused")
        self.seen: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def log_metrics(self, metrics: Any, step: int | None = None, timestamp: int | None = None) -> None:
        with self._lock:
            if len(self.seen) >= self.ok:
                raise self.error
            assert timestamp is not None  # filled by the proxy
            self.seen += [(k, step or 0, timestamp) for k in metrics]

    def log_params(self, params: Any) -> None:
        with self._lock:
            if len(self.seen) >= self.ok:
                raise self.error


def test_concurrent_calls_lose_nothing_when_the_server_goes_away(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    opened: list[str] = []

    def factory(uri: str) -> Tracker:
        opened.append(uri)
        return MlflowTracker("exp", uri, "run", {"kind": "test"})

    primary = FlakyServer(ok=30)
    tracker = ResilientTracker("http://server.invalid:5000", factory, tmp_path, primary)
    tracker.log_params({"a": 1})

    def work(i: int) -> None:
        for step in range(20):
            tracker.log_metrics({f"t{i}": float(step)}, step=step)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tracker.log_metrics({"final": 1.0})
    tracker.end()

    assert opened == [fallback_uri(tmp_path)] and tracker.on_fallback and tracker.run_id == "server-run"
    client = MlflowClient(fallback_uri(tmp_path))
    run = client.get_run(str(tracker.fallback_run_id))
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"} and run.data.tags["kind"] == "test"
    hist = _histories(client, run)
    for i in range(4):
        assert [s for s, _, _ in hist[f"t{i}"]] == list(range(20))  # every step exactly once
    assert hist["final"][0][2] == 1.0
    replayed = {(k, s, ts) for k, h in hist.items() for s, ts, _ in h}
    assert len(primary.seen) == 30 and set(primary.seen) <= replayed  # the same timestamps in the replay
    entry = read_pending(tmp_path)["runs"][0]
    assert entry["server_run_id"] == "server-run" and entry["fallback_run_id"] == run.info.run_id
    assert entry["experiment"] == "exp" and entry["server_uri"] == "http://server.invalid:5000"
    (warning,) = _warnings(caplog)
    assert str(tmp_path / "mlflow-fallback") in warning and f"pipeline tracking sync {tmp_path}" in warning


def test_a_call_the_server_refuses_is_not_a_server_outage(tmp_path: Path) -> None:
    def factory(uri: str) -> Tracker:
        raise AssertionError("no fallback for a bad call")

    bad = MlflowException("param changed", error_code=INVALID_PARAMETER_VALUE)
    tracker = ResilientTracker("http://server.invalid:5000", factory, tmp_path, FlakyServer(ok=0, error=bad))
    with pytest.raises(MlflowException, match="param changed"):
        tracker.log_params({"a": 1})
    assert not tracker.on_fallback and not (tmp_path / "mlflow-fallback").exists()
    local = object()
    assert open_tracker("sqlite:///x.db", lambda uri: local, tmp_path) is local  # type: ignore[arg-type,return-value]


def test_fail_fast_http_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in fail_fast_http()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


def test_server_away_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                              data: Path, server: Server) -> None:
    away = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", away)
    wf = tiny_workflow(tmp_path / "wf.yaml", data, tracking={"enabled": True, "experiment": "away",
                                                             "system_metrics": None})
    loaded = load_workflow(wf, [])
    run_dir = tmp_path / "run"
    timed = Timed(default_hooks(loaded, run_dir)[0])
    caplog.set_level(logging.WARNING)
    result = run_workflow(loaded, run_dir=run_dir, hooks=[timed])

    assert timed.seconds < 30, timed.seconds  # a 3 s check and a local SQLite store, not 4 minutes of retries
    (warning,) = _warnings(caplog)
    assert away in warning and str(run_dir / "mlflow-fallback") in warning
    assert f"pipeline tracking sync {run_dir}" in warning
    (entry,) = read_pending(run_dir)["runs"]
    assert entry["server_uri"] == away and entry["server_run_id"] is None and entry["experiment"] == "away"
    assert entry["fallback_run_id"] == result.mlflow_run_id
    local = MlflowClient(fallback_uri(run_dir))
    fb = local.get_run(entry["fallback_run_id"])
    hist = _histories(local, fb)
    assert fb.info.status == "FINISHED" and [s for s, _, _ in hist["train_loss"]] == [1, 2]
    assert "test_dice_mean" in hist and fb.data.params["train.epochs"] == "2"
    assert "workflow.yaml" in _artifacts(local, fb.info.run_id)

    with pytest.raises(PipelineError, match=f"{re.escape(away)} is still unreachable.*again"):
        sync_run(run_dir)
    with pytest.raises(PipelineError, match="no local MLflow fallback store"):
        sync_run(tmp_path)

    server.wait()  # the server was never reached: the sync creates the run there (here: on another server)
    pushed = sync_run(run_dir, tracking_uri=server.uri)
    assert pushed.created == 1 and pushed.ended == 1 and pushed.metrics == sum(len(h) for h in hist.values())
    remote = MlflowClient(server.uri)
    ((uri, run_id),) = pushed.server_runs
    run = remote.get_run(run_id)
    assert uri == server.uri and run.info.run_name == fb.info.run_name and run.info.status == "FINISHED"
    assert run.info.start_time == fb.info.start_time and run.info.end_time == fb.info.end_time
    assert _histories(remote, run) == hist and run.data.params == fb.data.params
    assert remote.get_experiment(run.info.experiment_id).name == "away"
    assert _artifacts(remote, run_id) == _artifacts(local, fb.info.run_id)
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == fb.info.run_id  # for the away server
    again = sync_run(run_dir, tracking_uri=server.uri)
    assert again.pushed == 0 and again.describe().startswith("nothing to push")


def test_server_lost_mid_run_then_synced_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture, data: Path,
                                                      server: Server) -> None:
    server.wait()
    wf = tiny_workflow(tmp_path / "wf.yaml", data, tracking={
        "enabled": True, "tracking_uri": server.uri, "experiment": "lost", "system_metrics": 0.5})
    loaded = load_workflow(wf, [])
    run_dir = tmp_path / "run"
    (hook,) = default_hooks(loaded, run_dir)
    caplog.set_level(logging.WARNING)
    killer = StopServerAfter(server, "train", hook)
    result = run_workflow(loaded, run_dir=run_dir, hooks=[hook, killer])

    assert killer.restarted and result.summary is not None
    (warning,) = _warnings(caplog)  # one word, none from urllib3's retries
    assert str(run_dir / "mlflow-fallback") in warning and f"pipeline tracking sync {run_dir}" in warning
    (entry,) = read_pending(run_dir)["runs"]
    assert entry["server_run_id"] == result.mlflow_run_id != entry["fallback_run_id"]
    local = MlflowClient(fallback_uri(run_dir))
    fb = local.get_run(entry["fallback_run_id"])
    hist = _histories(local, fb)
    assert fb.info.status == "FINISHED" and [s for s, _, _ in hist["train_loss"]] == [1, 2]
    assert [s for s, _, _ in hist["val_dice"]] == [1, 2] and "test_dice_mean" in hist and "best_epoch" in hist
    assert any(k.startswith("system/") for k in hist)

    server.wait()  # restarted on the same store
    remote = MlflowClient(server.uri)
    before = remote.get_run(entry["server_run_id"])
    assert before.info.status == "RUNNING" and "train_loss" in before.data.metrics
    assert "test_dice_mean" not in before.data.metrics
    for key, values in _histories(remote, before).items():  # what the server got before it went is in the fallback
        assert set(values) <= set(hist[key]), key

    real = MlflowClient.log_artifact
    uploaded: list[str] = []

    def flaky(self: MlflowClient, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if uploaded:  # the server goes away after one file
            raise MlflowException("API request failed with exception [Errno 111] Connection refused")
        uploaded.append(local_path)
        real(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", flaky)
    with pytest.raises(PipelineError, match="failed part-way.*again"):
        sync_run(run_dir)
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    assert read_pending(run_dir)["runs"][0]["synced_at"] is None

    done = sync_run(run_dir)
    assert done.created == 0 and done.metrics == 0 and done.params == 0 and done.ended == 1 and done.artifacts > 0
    assert done.server_runs == [(server.uri, entry["server_run_id"])]
    after = remote.get_run(entry["server_run_id"])
    assert after.info.status == "FINISHED" and after.info.end_time == fb.info.end_time
    assert _histories(remote, after) == hist  # every value of every metric, exactly once
    assert after.data.params == fb.data.params
    assert {k: after.data.tags.get(k) for k in fb.data.tags} == fb.data.tags
    assert _artifacts(remote, after.info.run_id) == _artifacts(local, fb.info.run_id)
    assert after.inputs is not None and fb.inputs is not None
    assert len(after.inputs.dataset_inputs) == len(fb.inputs.dataset_inputs) == 1

    again = sync_run(run_dir)
    assert again.pushed == 0 and again.already_synced == 1 and again.describe().startswith("nothing to push")
    assert collections.Counter(_histories(remote, remote.get_run(after.info.run_id))) == collections.Counter(hist)
