"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

An interrupted run therefore never leaves a half-written file under the final name. What it can leave is the
temporary itself (``.<stem>.XXXX.part<suffix>``) when the process is killed without a chance to clean up
(SIGKILL, out of memory); :func:`remove_stale_temporaries_under` removes those once no writer can be working
there (``pipeline run`` does it under its run folder lock, :mod:`pipeline.engine.lock`).

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) while writing is a :class:`DiskFullError`, a
:class:`~pipeline.errors.PipelineError` that names the target, the space left on its filesystem and, when known,
the size the write needed; the temporary is removed, so nothing partial is left and the old file (if any) stays.
PyTorch's own writer (``torch.save``) reports a full disk as a ``RuntimeError`` without an errno; a write that
fails with an error of that kind while its filesystem has (almost) no space left counts as a full disk too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A writer that fails with a RuntimeError or an errno-less OSError (torch.save: "unexpected pos", "file write
# failed") on a filesystem with less than this left is taken to have run out of space.
_NEARLY_FULL = 1 << 20


class DiskFullError(PipelineError):
    """A write ran out of space (or quota) on the target's filesystem.

    Attributes:
        path: the file that was being written.
        free: bytes free on its filesystem after the partial temporary was removed (None if unknown).
        needed: bytes the write needed (None if unknown), or at least ``written`` when only that is known.
        written: bytes the temporary held when the write failed (a lower bound of what it needed).
    """

    def __init__(self, path: Path, free: int | None, needed: int | None, written: int | None) -> None:
        self.path, self.free, self.needed, self.written = path, free, needed, written
        if needed is not None:
            size = f"; the file needs {format_bytes(needed)}"
        elif written:
            size = f"; the file needs more than the {format_bytes(written)} written before the disk filled"
        else:
            size = ""
        room = f"{format_bytes(free)} free" if free is not None else "free space unknown"
        super().__init__(f"no space left on the device (or quota exceeded) while writing {path} ({room} on its "
                         f"filesystem{size}); nothing partial was left: free some space (or use a folder on a larger "
                         "disk) and run the same command again to resume")


def format_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes available on the filesystem of ``folder`` (None if it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or while handling) is ``ENOSPC`` or ``EDQUOT``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _ran_out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a write into ``folder`` failed with ``exc`` for lack of space (call it before the partial temporary
    is removed: a torch.save that filled the disk is only recognised by the space left)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, PipelineError)):
        return False
    if is_disk_full(exc):
        return True
    if not isinstance(exc, (RuntimeError, OSError)) or (isinstance(exc, OSError) and exc.errno is not None):
        return False  # a bug, or another OS error (permissions, ...)
    free = free_bytes(folder)
    return free is not None and free < _NEARLY_FULL


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
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".part" + suffix, dir=target.parent)
    except OSError as exc:  # no inode (or quota) left for the temporary itself
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(target, free_bytes(target.parent), size, None) from exc
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        full = _ran_out_of_space(exc, target.parent)
        written = None
        with contextlib.suppress(OSError):
            written = tmp.stat().st_size
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full:
            raise DiskFullError(target, free_bytes(target.parent), size, written) from exc
        raise


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
