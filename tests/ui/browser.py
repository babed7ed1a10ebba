"""Helpers for the browser tests: Debian's Chromium driven by Playwright, and an ``mlflow server`` of the test.

Chromium is the system one (``/usr/bin/chromium``, Debian's ``chromium`` package; ``.ci/run`` installs it); the
browsers ``playwright install`` would download are never used. Without Chromium or Playwright the tests skip,
except in CI (``$CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import PipelineError
from pipeline.tracking.ui import wait_ready

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
SCREENSHOTS_ENV = "PIPELINE_SCREENSHOTS"  # a folder that also receives the screenshots (e.g. docs/img)


def require_browser() -> None:
    """Skip (fail in CI) unless Chromium and Playwright are installed."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package `chromium`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright; never `playwright install`)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + ": CI must run it (.ci/run installs both)", pytrace=False)
        pytest.skip(reason)


def launch_chromium(playwright: Any) -> Any:
    """Headless system Chromium."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 and a free port, with a SQLite store and a local artifact root in ``folder``.

    :meth:`start` returns at once (prepare something else while the server imports), :meth:`wait_ready` waits for
    its ``/health``. Its output goes to ``folder/server.log``, quoted when it does not come up.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.artifact_root = folder / "artifacts"
        self.log = folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MlflowServer:
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--default-artifact-root", self.artifact_root.as_uri(), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        # no telemetry (nothing outside can be reached) and no job runner (GenAI judges; a busy extra process)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "wb") as out:  # the child keeps its own handle
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.folder,
                                         start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.proc is not None, "start() first"
        try:
            wait_ready(self.url, self.proc, timeout)  # what `pipeline ui` waits with
        except PipelineError as exc:
            raise RuntimeError(f"{exc}:\n{_tail(self.log)}") from None

    def stop(self) -> None:
        """SIGTERM to the server's own process group (started in a new session: uvicorn and its workers), then
        SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass


@contextmanager
def mlflow_server(folder: Path) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer` (call ``wait_ready()`` before using it), stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(folder)
    try:
        yield server.start()
    finally:
        server.stop()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def save_screenshot(page: Any, name: str, folder: Path, **options: Any) -> Path:
    """A PNG of the page in ``folder`` and, when ``$PIPELINE_SCREENSHOTS`` names a folder, a copy there."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), **options)
    extra = os.environ.get(SCREENSHOTS_ENV)
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / path.name)
    return path
