"""One ``pipeline run`` at a time per run folder: an advisory lock on ``<run folder>/_run.lock``.

Two runs working in one folder would resume each other's stages, delete each other's stage folders and rename
their files over each other's. The engine therefore holds an exclusive ``flock`` on the folder's lock file for the
whole run; a second run on the same folder is refused at once with the first one's pid (written into the lock file
by whoever holds it). The kernel drops the lock when its holder dies however it dies (SIGKILL, out of memory), so a
lock is never stale: the next run takes it and resumes. The file itself stays (removing it would let two runs each
lock a different file of the same name).

Under torchrun only rank 0 (``RANK`` unset or ``0``) takes the lock: the other ranks work in the same folder as
part of the same run.

POSIX only; where ``fcntl`` is missing (Windows) runs are not locked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any, Self

from pipeline.errors import PipelineError
from pipeline.io.atomic import write_faults

log = logging.getLogger("pipeline")

LOCK_FILE = "_run.lock"


def is_rank_zero() -> bool:
    """Whether this process is the one that owns a run folder: not a torchrun worker of rank > 0."""
    return os.environ.get("RANK", "0") == "0"


def _holder(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class RunLock:
    """The exclusive lock of a run folder, held from :meth:`acquire` to :meth:`release` (or the process's end)."""

    def __init__(self, run_dir: Path, handle: IO[str] | None) -> None:
        self.run_dir = run_dir
        self._handle = handle

    @classmethod
    def acquire(cls, run_dir: Path, command: str = "pipeline run") -> RunLock:
        """Lock ``run_dir`` (which exists) for this process, or refuse at once.

        Raises:
            PipelineError: another process holds the lock; the message names the folder, that process's pid and
                what to do.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return cls(run_dir, None)
        path = run_dir / LOCK_FILE
        what = "run folder (--run-dir)" if command == "pipeline run" else "folder"
        with write_faults(path, what, folder=False):  # a read-only run folder, ...
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run; "a+" keeps the pid
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            info = _holder(handle.read())
            handle.close()
            raise PipelineError(_refusal(run_dir, info)) from None
        except OSError as exc:  # a filesystem without locks (some network mounts): run as before, unprotected
            log.warning("cannot lock %s (%s); make sure no other `pipeline run` works in %s", path, exc, run_dir)
            return cls(run_dir, handle)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        handle.flush()
        return cls(run_dir, handle)

    def release(self) -> None:
        """Unlock (idempotent); the lock file is emptied first so it names no process that has finished."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.seek(0)
            handle.truncate()
        except (OSError, ValueError):  # the run folder was removed (a failed first run), or the handle is closed
            pass
        handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refusal(run_dir: Path, info: dict[str, Any]) -> str:
    pid, host = info.get("pid"), info.get("host")
    if pid is None:
        who = "another process"
    elif host and host != socket.gethostname():
        who = f"process {pid} on {host}"
    else:
        who = f"process {pid}"
    since = f" since {info['since']}" if info.get("since") else ""
    stop = f"stop it (kill {pid}) and " if pid is not None and (not host or host == socket.gethostname()) else \
        "stop it and "
    return (f"{run_dir} is in use: another `pipeline run` ({who}{since}) is working in this run folder; wait for it "
            f"to finish, or {stop}run the same command again to resume (use --run-dir for a separate run)")
