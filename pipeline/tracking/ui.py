"""``pipeline ui``: the MLflow UI on the project's store, started as ``mlflow server`` and stopped with Ctrl-C."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui_command(tracking_uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for the UI on the store ``tracking_uri``.

    A SQLite store keeps the artifacts its experiments name (``mlartifacts/`` beside the database, see
    :func:`pipeline.tracking.tracker.experiment_id`); the server reads them from there.
    """
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()
        cmd += ["--default-artifact-root", (db.parent / "mlartifacts").as_uri()]
    return cmd


def check_store(tracking_uri: str) -> None:
    """A local SQLite store must exist (the UI would otherwise show an empty store made on the spot)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise PipelineError(f"no MLflow store at {db.resolve()}: run a workflow from this folder first "
                                "(`pipeline run WORKFLOW`), or name the store with --tracking-uri or "
                                "MLFLOW_TRACKING_URI")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 120.0) -> None:
    """Wait until the server at ``url`` answers ``/health``.

    Raises:
        PipelineError: it exited first or did not answer in ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PipelineError(f"the MLflow server exited with code {proc.returncode} before it answered; "
                                "its messages are above")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise PipelineError(f"the MLflow server did not answer at {url} within {timeout:.0f} s")


ML_VIEW = "workflowType=machine_learning"


def experiment_links(tracking_uri: str, url: str) -> list[tuple[str, str]]:
    """``(experiment, address of its runs table)`` for each experiment of the store, newest first.

    MLflow 3.17's UI opens an experiment in the view of its sidebar switch (GenAI or Model training), which it
    takes from the address's ``workflowType`` or from the browser's last choice, not from the experiment's kind
    tag: these addresses open the model-training view in any browser.
    """
    from pipeline.tracking.tracker import mlflow_client

    try:
        experiments = mlflow_client(tracking_uri).search_experiments(order_by=["last_update_time DESC"])
    except Exception as exc:  # the UI works all the same
        log.debug("cannot list the experiments: %s", exc)
        return []
    return [(e.name, f"{url}/#/experiments/{e.experiment_id}/runs?{ML_VIEW}") for e in experiments
            if e.name != "Default"]


def serve_ui(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Start the UI, print its address and wait until Ctrl-C (or the server's own end); returns its exit code.

    Raises:
        PipelineError: the store is missing, the port is taken, or the server did not start.
    """
    if tracking_uri.startswith(("http://", "https://")):
        print(f"the store is an MLflow server: open {tracking_uri} in a browser")
        return 0
    check_store(tracking_uri)
    if not _port_free(host, port):
        raise PipelineError(f"port {port} on {host} is in use (another `pipeline ui` or `mlflow ui`?); "
                            "choose another with --port")
    if host not in LOOPBACK:
        log.warning("the UI listens on %s: anyone who can reach this machine on port %d can read the runs", host,
                    port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    proc = subprocess.Popen(ui_command(tracking_uri, host, port))
    try:
        wait_ready(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}", proc)
        print(f"MLflow UI: {url}  (store {tracking_uri}; Ctrl-C to stop)", flush=True)
        for name, link in experiment_links(tracking_uri, url):
            print(f"  {name}: {link}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
