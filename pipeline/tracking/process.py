"""Tracking in its own process: :class:`HookProcess` runs a hook (the MLflow hook) in a child Python process.

Why a process and not only a thread: MLflow's SQLite store costs about 1.5 s of CPU to import (SQLAlchemy's ORM),
and logging a run's images and artifacts some more. In the command's own process that work holds the GIL and
takes a core from the two that training uses, so tracking cost about 10 % of a 2-core ``unet_cells`` run. The
CLI starts the child (:func:`prewarm`) as soon as it has read that the workflow tracks, which is while the main
process still imports PyTorch and MONAI on one core: the child imports MLflow on the other, and the work never
waits for it.

What the parent does: sends each engine event (pickled dataclasses) down a pipe and returns at once; at the end of
the run waits until the child has logged everything and ended the MLflow run, as the in-process hook does. What
the child does: builds the hook, hands it the events in order, sends back its state (MLflow run id, whether it
is on the fallback store) when asked, and forwards its log records, which the parent emits through its own
``logging`` (so warnings look, and are captured, as if the hook ran in the parent).

Crash safety: Ctrl-C reaches the whole process group; the child ignores it and ends the run ``KILLED`` when the
parent says so. If the parent dies without a word (SIGKILL, out of memory), the child reads the end of its pipe
and ends the MLflow run ``KILLED`` instead of leaving it ``RUNNING``. If the child dies, the parent says so once
and the run goes on without tracking.

POSIX only (the pipes are passed as inherited file descriptors); elsewhere :func:`hook_in_process` falls back to
the hook in the parent.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from pipeline.engine.hooks import Hook, HookSet, RunEnded, RunStarted, StageDone, StageStarting

log = logging.getLogger("pipeline")

_PREWARMED: _Child | None = None
_LOGGERS = ("", "pipeline", "mlflow", "alembic", "urllib3", "git")  # their levels in the child are the parent's


class _Child:
    """The child process and its two pipes; a reader thread turns its messages into log records and replies."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking.process", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.alive = True
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="pipeline-tracking-reader", daemon=True)
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> bool:
        """Send one message; False once the child is gone."""
        with self._lock:
            if not self.alive:
                return False
            try:
                self._send.send(message)
                return True
            except (OSError, EOFError, ValueError):
                self.alive = False
                return False

    def ask(self, message: tuple[Any, ...]) -> dict[str, Any] | None:
        """Send a message that the child answers; its reply (None when the child is gone)."""
        if not self.send(message):
            return None
        return self.replies.get()

    def _read(self) -> None:
        while True:
            try:
                kind, body = self._recv.recv()
            except (OSError, EOFError):
                break
            if kind == "log":
                record = logging.makeLogRecord(body)
                logging.getLogger(record.name).handle(record)
            else:
                self.replies.put(body)
        self.alive = False
        self.replies.put(None)  # whoever waits for a reply learns that none comes

    def close(self) -> int | None:
        """Close the pipes and wait for the child to exit; its exit code."""
        with self._lock:
            self.alive = False
            self._send.close()
        try:
            return self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def discard(self) -> None:
        """Stop a child that was never used."""
        self.close()


def available() -> bool:
    """Whether hooks can run in a child process here (POSIX pipes passed to the child)."""
    return os.name == "posix"


def prewarm() -> None:
    """Start the tracking process now, so it imports MLflow while this process is busy with other imports; the
    next :class:`HookProcess` takes it. Does nothing where processes are not available or one is waiting."""
    global _PREWARMED
    if _PREWARMED is None and available():
        _PREWARMED = _Child()


def discard_prewarmed() -> None:
    """Stop the tracking process :func:`prewarm` started, when the workflow turns out not to track."""
    global _PREWARMED
    if _PREWARMED is not None:
        child, _PREWARMED = _PREWARMED, None
        child.discard()


def _take_child() -> _Child:
    global _PREWARMED
    child, _PREWARMED = _PREWARMED, None
    if child is not None and child.alive and child.proc.poll() is None:
        return child
    if child is not None:
        child.discard()
    return _Child()


class HookProcess(Hook):
    """The hook ``factory(**kwargs)`` (``factory`` as ``"module:name"``), run in a child process.

    Attributes mirrored from the hook: ``title``, ``hint``, ``tracking_uri``; ``run_id`` and ``on_fallback`` as the
    child last reported them (after :meth:`flush` and at the end of the run).
    """

    def __init__(self, factory: str, title: str = "", hint: str = "", **kwargs: Any) -> None:
        self.title = title or factory
        self.hint = hint
        self.tracking_uri = kwargs.get("tracking_uri")
        self.state: dict[str, Any] = {}
        self._warned = False
        self._child = _take_child()
        levels = {name: logging.getLogger(name).getEffectiveLevel() for name in _LOGGERS}
        self._send(("make", factory, kwargs, levels))

    @property
    def run_id(self) -> str | None:
        return self.state.get("run_id")

    @property
    def on_fallback(self) -> bool:
        return bool(self.state.get("on_fallback"))

    def run_started(self, event: RunStarted) -> None:
        self._send(("event", "run_started", event))

    def stage_starting(self, event: StageStarting) -> None:
        self._send(("event", "stage_starting", event))

    def stage_done(self, event: StageDone) -> None:
        self._send(("event", "stage_done", event))

    def run_ended(self, event: RunEnded) -> None:
        self._send(("event", "run_ended", event))
        self._update(self._child.ask(("close",)))
        code = self._child.close()
        if code not in (0, None) and not self._warned:
            self._gone(f"the tracking process exited with code {code}")

    def flush(self) -> None:
        """Wait until the child has logged everything sent so far, and take its state."""
        self._update(self._child.ask(("flush",)))

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self._child.send(message):
            self._gone("the tracking process stopped")

    def _update(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self._gone("the tracking process stopped")
        else:
            self.state = state

    def _gone(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            code = self._child.proc.poll()
            log.warning("%s failed (%s%s); the run goes on without it%s", self.title, why,
                        f", exit code {code}" if code is not None and why.endswith("stopped") else "",
                        f" ({self.hint})" if self.hint else "")


# ---- the child -------------------------------------------------------------------------------------------------


class _Forward(logging.Handler):
    """Sends log records to the parent, which emits them with its own handlers."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self.conn = conn
        self.send_lock = lock  # not ``lock``: logging.Handler's own

    def emit(self, record: logging.LogRecord) -> None:
        try:
            body = dict(record.__dict__)
            body["msg"] = record.getMessage()
            body["args"] = None
            if record.exc_info:
                body["exc_text"] = "".join(traceback.format_exception(*record.exc_info))
            body["exc_info"] = None
            with self.send_lock:
                self.conn.send(("log", body))
        except Exception:  # the parent is gone: nowhere to say it
            pass


def _state(hook: Any) -> dict[str, Any]:
    return {"run_id": getattr(hook, "run_id", None), "on_fallback": bool(getattr(hook, "on_fallback", False))}


def _serve(incoming: Connection, outgoing: Connection) -> int:
    lock = threading.Lock()

    def reply(body: dict[str, Any]) -> None:
        with lock:
            outgoing.send(("reply", body))

    root = logging.getLogger()
    root.handlers[:] = [_Forward(outgoing, lock)]
    for name in _LOGGERS[2:]:  # as the CLI has them until the parent says
        logging.getLogger(name).setLevel(logging.WARNING)
    # What the hook will need, imported while the parent imports its own (the point of starting early).
    import mlflow.store.tracking.sqlalchemy_store
    import mlflow.tracking  # noqa: F401

    hook: Any = None
    hooks = HookSet()  # a hook that raises is said once and left out, as in the parent
    ended = False
    while True:
        try:
            message = incoming.recv()
        except (OSError, EOFError):  # the parent is gone without a word: do not leave the run RUNNING
            if hook is not None and not ended:
                hooks.run_ended(RunEnded("KILLED", error="the pipeline process ended without ending its run"))
            return 0
        kind = message[0]
        if kind == "make":
            _, factory, kwargs, levels = message
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            module, _, name = factory.partition(":")
            hook = getattr(importlib.import_module(module), name)(**kwargs)
            hooks = HookSet([hook])
        elif kind == "event":
            _, method, event = message
            getattr(hooks, method)(event)
            ended = ended or method == "run_ended"
        elif kind == "flush":
            if hasattr(hook, "flush") and not hooks.failed:
                hook.flush()
            reply(_state(hook))
        elif kind == "close":
            reply(_state(hook))
            return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent ends the run
    incoming = Connection(int(argv[0]), writable=False)
    outgoing = Connection(int(argv[1]), readable=False)
    code = _serve(incoming, outgoing)
    # Everything is logged and the run ended (the hook's own thread has joined): skip the interpreter's teardown,
    # which takes about a second (modules, SQLAlchemy's pools) while the user waits for the prompt.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
