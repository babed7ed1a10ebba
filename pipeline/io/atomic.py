"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

An interrupted run therefore never leaves a half-written file under the final name. What it can leave is the
temporary itself (``.<stem>.XXXX.part<suffix>``) when the process is killed without a chance to clean up
(SIGKILL, out of memory); :func:`remove_stale_temporaries_under` removes those once no writer can be working
there (``pipeline run`` does it under its run folder lock, :mod:`pipeline.engine.lock`).

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) while writing is a :class:`DiskFullError`; the temporary
is removed, so nothing partial is left and the old file (if any) stays. PyTorch's own writer (``torch.save``)
reports a full disk as a ``RuntimeError`` without an errno ("enforce fail at inline_container.cc"), and so does ITK;
a write that fails with an error of that kind counts as a full disk when its filesystem has (almost) no space left
or a small probe write there fails for lack of space or quota (:func:`ran_out_of_space`).

The other ways the environment refuses a write are a :class:`CannotWriteError`; both are write faults
(:class:`WriteFault`), defined in :mod:`pipeline.io.faults` with the helpers that make them (re-exported here).
Only the writers' own operations (creating folders and temporaries, renaming) are turned into them: an ``OSError``
raised by the code inside :func:`atomic_path`'s block is that code's, and stays what it is.

File modes: temporaries and temporary folders are created by :func:`create_temporary` and
:func:`make_temporary_folder` with the modes every other tool asks for, ``0o666`` for files and ``0o777`` for
folders, and the kernel applies the process's umask (and a folder's default ACL) to them, so outputs get
``0o644``/``0o755`` under umask ``022`` and ``0o664``/``0o775`` under ``002``, as ``cp`` or ``touch`` would make them
(``tempfile.mkstemp``/``mkdtemp`` ask for ``0o600``/``0o700``: nobody else could read a run's results). The umask is
never read or changed: ``os.umask`` is process-wide, and setting it to read it would race with the writer threads of
``pipeline infer``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import faults  # free_bytes is looked up there at each call (tests replace it)
from pipeline.io.faults import (
    DISK_FULL_ERRNOS,
    PERSISTENT_ERRNOS,
    REFUSED_ERRNOS,
    CannotWriteError,
    DiskFullError,
    WriteFault,
    check_folder,
    disk_full,
    format_bytes,
    free_bytes,
    is_disk_full,
    make_folder,
    os_error_message,
    write_fault,
    write_faults,
)

FILE_MODE = 0o666  # the kernel applies the umask: 0o644 under umask 022
FOLDER_MODE = 0o777
_TRIES = 100  # random names tried before giving up (tempfile's own limit is 10000; 100 collisions means a bug)
# A writer that fails with a RuntimeError or an errno-less OSError (torch.save: "unexpected pos", "file write
# failed") on a filesystem with less than this left is taken to have run out of space.
_NEARLY_FULL = 1 << 20


def _random_name(prefix: str, suffix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}{suffix}"


def create_temporary(folder: str | os.PathLike[str], prefix: str, suffix: str) -> Path:
    """A new empty file ``folder/<prefix>XXXXXXXX<suffix>`` with mode 0o666 less the umask (``mkstemp`` makes
    0o600 files: they would keep that mode under their final names).

    Raises:
        FileExistsError: no free name after many tries (a bug); other OS errors as the system raises them.
    """
    for _ in range(_TRIES):
        path = Path(folder) / _random_name(prefix, suffix)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TRIES} tries", str(folder))


def make_temporary_folder(folder: str | os.PathLike[str], prefix: str, suffix: str,
                          what: str | None = None) -> Path:
    """A new empty folder ``folder/<prefix>XXXXXXXX<suffix>`` with mode 0o777 less the umask (``mkdtemp`` makes
    0o700 folders: a bundle renamed into place would keep it); what the environment refuses is a
    :class:`WriteFault` naming ``folder`` (``what``: as in :func:`write_fault`)."""
    folder = Path(folder)
    with write_faults(folder, what, folder=True):
        for _ in range(_TRIES):
            path = folder / _random_name(prefix, suffix)
            try:
                os.mkdir(path, FOLDER_MODE)
            except FileExistsError:
                continue
            return path
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TRIES} tries", str(folder))

def ran_out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a write into ``folder`` failed with ``exc`` for lack of space (call it before the partial temporary
    is removed: a torch.save that filled the disk is only recognised by the space left).

    An error without an errno (PyTorch's "enforce fail at inline_container.cc ... file write failed", ITK's
    "could not write") counts when the filesystem has (almost) no space left, or when a small probe write into
    ``folder`` fails with ``ENOSPC``/``EDQUOT`` (an exhausted quota leaves the filesystem's free space untouched).
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, PipelineError)):
        return False
    if is_disk_full(exc):
        return True
    if not isinstance(exc, (RuntimeError, OSError)) or (isinstance(exc, OSError) and exc.errno is not None):
        return False  # a bug, or another OS error (permissions, ...)
    free = faults.free_bytes(folder)
    return (free is not None and free < _NEARLY_FULL) or _probe_fails_for_space(folder)


def _probe_fails_for_space(folder: Path, size: int = 1 << 16) -> bool:
    """Whether writing ``size`` bytes into a new file in ``folder`` (flushed to the disk, then removed) fails for
    lack of space or quota."""
    try:
        probe = create_temporary(folder, ".space-probe.", ".part")  # a killed run's probe is a stale temporary
    except OSError as exc:
        return exc.errno in DISK_FULL_ERRNOS
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno in DISK_FULL_ERRNOS
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return False


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None,
                size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target``.

    Args:
        target: final file path.
        suffix: suffix of the temporary file (defaults to the target's full suffix, so writers that pick a
            format by extension, such as nibabel's ``.nii.gz``, still work).
        size: the bytes the write will take, when the caller knows (named in a :class:`DiskFullError`).

    Yields:
        The temporary path to write to. It is removed if the block raises.

    Raises:
        DiskFullError: the disk (or quota) filled up while the block wrote; the temporary is removed.
        CannotWriteError: the folder cannot be created or written in (read-only, no permission, a file in the
            way), or the target is a folder; nothing is left behind.
    """
    target = Path(target)
    if not target.parent.is_dir():
        make_folder(target.parent)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    try:
        tmp = create_temporary(target.parent, f".{target.stem}.", ".part" + suffix)
    except OSError as exc:  # no inode (or quota) left for the temporary itself, a read-only folder, ...
        fault = write_fault(exc, target, folder=False)
        if isinstance(fault, DiskFullError):
            fault = DiskFullError(target, faults.free_bytes(target.parent), size, None)
        if fault is None:
            raise
        raise fault from exc
    try:
        yield tmp
    except BaseException as exc:
        full = ran_out_of_space(exc, target.parent)
        written = None
        with contextlib.suppress(OSError):
            written = tmp.stat().st_size
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full:
            raise DiskFullError(target, faults.free_bytes(target.parent), size, written) from exc
        raise
    try:
        os.replace(tmp, target)
    except OSError as exc:  # the target is a folder, the folder became read-only, ...
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fault = write_fault(exc, target, folder=False)
        if fault is None:
            raise
        raise fault from exc


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def remove_stale_temporaries_under(folders: Iterable[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Delete what killed writers left in ``folders`` (and, with ``recursive``, every folder below them): the
    temporaries of :func:`atomic_path` and of the ``.mhd`` writer, as
    :func:`pipeline.io.scan.remove_stale_temporaries` recognises them.

    Only call it while no writer can be working there (a running writer's temporaries look the same): ``pipeline
    run`` calls it on its run folder while it holds the folder's lock.

    Returns:
        The removed paths, in the order removed.
    """
    from pipeline.io.scan.names import remove_stale_temporaries  # the one definition of what a temporary is

    removed: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir() or folder.is_symlink():
            continue
        gone = remove_stale_temporaries(folder)
        removed += gone
        if recursive:
            gone_set = set(gone)
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and p not in gone_set):
                removed += remove_stale_temporaries_under([sub])
    return removed


__all__ = [
    "DISK_FULL_ERRNOS",
    "FILE_MODE",
    "FOLDER_MODE",
    "PERSISTENT_ERRNOS",
    "REFUSED_ERRNOS",
    "CannotWriteError",
    "DiskFullError",
    "WriteFault",
    "atomic_path",
    "check_folder",
    "create_temporary",
    "disk_full",
    "format_bytes",
    "free_bytes",
    "is_disk_full",
    "make_folder",
    "make_temporary_folder",
    "os_error_message",
    "ran_out_of_space",
    "remove_stale_temporaries_under",
    "write_bytes",
    "write_fault",
    "write_faults",
    "write_json",
    "write_text",
]
