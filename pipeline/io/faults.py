"""Write faults: what the environment refuses a write for, as errors a user can act on.

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) is a :class:`DiskFullError`, a
:class:`~pipeline.errors.PipelineError` that names the target, the space left on its filesystem and, when known,
the size the write needed. The other ways the environment refuses a write (a read-only folder or filesystem, no
permission, a path that is a file where a folder is needed or the other way round, a dangling symlink or a symlink
loop, a name too long for the filesystem) are a :class:`CannotWriteError` naming the path, what is wrong and what to
do. Both are write faults (:class:`WriteFault`).

:func:`write_fault` turns an ``OSError`` into one of them (or None: a bug), :func:`write_faults` does it for a block
of code, :func:`os_error_message` words an ``OSError`` that reached the command line unconverted, and
:func:`check_folder`/:func:`make_folder` check (and create) a folder to write into. The atomic writers that use them
are in :mod:`pipeline.io.atomic`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Errors of the environment a write can meet besides a full disk (see :class:`CannotWriteError`).
REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                            errno.ELOOP, errno.ENAMETOOLONG})
#: Of those, the ones that every later write into the same folder meets too (a batch stops at them).
PERSISTENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS}) | DISK_FULL_ERRNOS


class WriteFault(PipelineError):
    """The environment refused a write (a full disk, a read-only folder, ...), not the user's input.

    Attributes:
        path: the file or folder that was being written.
        errno: the operating system's error number.
        persistent: every later write into the same folder would fail the same way (a full disk, a read-only or
            forbidden folder): a batch stops instead of failing case after case.
    """

    path: Path
    errno: int | None = None

    @property
    def persistent(self) -> bool:
        return self.errno in PERSISTENT_ERRNOS


class DiskFullError(WriteFault):
    """A write ran out of space (or quota) on the target's filesystem.

    Attributes:
        path: the file that was being written.
        free: bytes free on its filesystem after the partial temporary was removed (None if unknown).
        needed: bytes the write needed (None if unknown), or at least ``written`` when only that is known.
        written: bytes the temporary held when the write failed (a lower bound of what it needed).
    """

    def __init__(self, path: Path, free: int | None, needed: int | None, written: int | None) -> None:
        self.path, self.free, self.needed, self.written = path, free, needed, written
        self.errno = errno.ENOSPC
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


def disk_full(target: str | os.PathLike[str], needed: int | None = None,
              written: int | None = None) -> DiskFullError:
    """The :class:`DiskFullError` of a write of ``target`` that ran out of space, with the space left now."""
    target = Path(target)
    return DiskFullError(target, free_bytes(target.parent), needed, written)


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


class CannotWriteError(WriteFault):
    """The operating system refused a write for a reason other than space: see :func:`write_fault`."""

    def __init__(self, path: str | os.PathLike[str], code: int | None, reason: str, advice: str) -> None:
        self.path, self.errno = Path(path), code
        super().__init__(f"cannot write {path}: {reason}; {advice}")


def _existing_folder(path: Path) -> Path:
    """The nearest folder of ``path`` (or above it) that exists: where a refused write was refused."""
    for p in (path, *path.parents):
        if p.is_dir():
            return p
    return path


def _obstacle(path: Path, want_folder: bool) -> str | None:
    """What stands in the way of writing ``path``: a dangling symlink, a file where a folder is needed (one of its
    parents, or ``path`` itself when ``want_folder``) or a folder where a file is needed."""
    chain = [*reversed(path.parents), path] if path.is_absolute() else [*reversed(path.parents[:-1]), path]
    for p in chain:
        final = p == path
        name = "it" if final else str(p)
        if p.is_symlink() and not p.exists():
            return f"{name} is a symbolic link to {os.readlink(p)}, which does not exist"
        if p.exists() and not p.is_dir() and (want_folder or not final):
            return f"{name} is a file, not a folder"
        if final and p.is_dir() and not want_folder:
            return "it is a folder, not a file"
    return None


def write_fault(exc: OSError, path: str | os.PathLike[str], what: str | None = None,
                folder: bool | None = None) -> WriteFault | None:
    """The user-facing error for an ``OSError`` the environment raised while writing ``path``, or None when
    ``exc`` is no such error (then it is a bug and keeps its traceback).

    Args:
        exc: what the operating system raised (its ``filename``, when set, is where it failed).
        path: what was being written.
        what: what the user calls it, for the advice ("choose another --output folder"); default "folder".
        folder: ``path`` is to be a folder (True) or a file (False); None: tell from ``exc``.

    Returns:
        A :class:`DiskFullError` (``ENOSPC``, ``EDQUOT``) or a :class:`CannotWriteError` naming the path, what is
        wrong and what to do: no permission (``EACCES``, ``EPERM``), a read-only filesystem (``EROFS``), a file or
        dangling symlink where a folder is needed or the other way round (``ENOTDIR``, ``EEXIST``, ``EISDIR``), a
        symlink loop (``ELOOP``), a name too long (``ENAMETOOLONG``).
    """
    path = Path(path)
    code = exc.errno
    where = Path(os.fsdecode(exc.filename)) if exc.filename is not None else path
    other = f"choose another {what or 'folder'}"
    if code in DISK_FULL_ERRNOS:
        return DiskFullError(path, free_bytes(_existing_folder(where)), None, None)
    if code not in REFUSED_ERRNOS:
        return None
    if code in (errno.EACCES, errno.EPERM):
        reason, advice = (f"permission denied (you may not write in {_existing_folder(where)})",
                          f"make it writable for you (chmod u+w, or ask its owner) or {other}")
    elif code == errno.EROFS:
        reason, advice = (f"{_existing_folder(where)} is on a read-only filesystem", f"{other} on a writable one")
    elif code == errno.ELOOP:
        reason, advice = f"the symbolic links of {where} form a loop", f"fix the links or {other}"
    elif code == errno.ENAMETOOLONG:
        reason, advice = "a name in it is too long for its filesystem", f"use a shorter name or {other}"
    else:  # ENOTDIR, EEXIST, EISDIR: something in the way
        want_folder = folder if folder is not None else code != errno.EISDIR
        reason = (_obstacle(where, want_folder if where == path else True) or _obstacle(path, want_folder)
                  or os.strerror(code).lower())
        advice = f"remove or rename it, or {other}"
    return CannotWriteError(path, code, reason, advice)


@contextlib.contextmanager
def write_faults(path: str | os.PathLike[str], what: str | None = None,
                 folder: bool | None = None) -> Iterator[None]:
    """Turn an ``OSError`` of the environment raised by the block into the :class:`WriteFault` of
    :func:`write_fault` (other errors pass unchanged): wrap the operations that create, rename or remove
    ``path``, not code that reads or writes other files."""
    try:
        yield
    except OSError as exc:
        fault = write_fault(exc, path, what, folder)
        if fault is None:
            raise
        raise fault from exc


def os_error_message(exc: BaseException) -> str | None:
    """One line for an ``OSError`` of the environment that reached the command line unconverted (a read, or a
    write outside the writers of :mod:`pipeline.io.atomic`): what the system said, the file and what to check. None for any
    other exception, and for an ``OSError`` without a file name or with another errno (a bug: keeps its
    traceback)."""
    if not isinstance(exc, OSError) or exc.filename is None or exc.errno not in DISK_FULL_ERRNOS | REFUSED_ERRNOS:
        return None
    name = os.fsdecode(exc.filename) + (f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 is not None else "")
    if exc.errno in DISK_FULL_ERRNOS:
        advice = "free some space (or use a folder on a larger disk) and run the same command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "check that you may read and write there (ls -ld), or choose another path"
    else:
        advice = "check the path (a file where a folder is needed, a symbolic link that points nowhere) and fix it"
    return f"{name}: {(exc.strerror or os.strerror(exc.errno)).lower()}; {advice}"


def check_folder(path: str | os.PathLike[str], what: str | None = None) -> Path:
    """Refuse ``path`` as a folder to write into before anything is written: it is a file, a symbolic link to
    nothing or a symlink loop, or one of its parents is a file. A path that does not exist yet passes (it is
    created later; its parents are checked then), so does a symlink to a folder (writes go where it points).

    Returns:
        ``path``.

    Raises:
        CannotWriteError: see above.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise CannotWriteError(path, errno.ENOENT, f"it is a symbolic link to {os.readlink(path)}, which does "
                                   "not exist", f"create that folder, remove the link or choose another "
                                   f"{what or 'folder'}") from None
        return path
    except OSError as exc:
        fault = write_fault(exc, path, what, folder=True)
        if fault is None:
            raise
        raise fault from None
    if not stat.S_ISDIR(st.st_mode):
        kind = f"a symbolic link to the file {os.readlink(path)}" if path.is_symlink() else "a file"
        raise CannotWriteError(path, errno.EEXIST, f"it is {kind}, not a folder",
                               f"remove or rename it, or choose another {what or 'folder'}")
    return path


def make_folder(path: str | os.PathLike[str], what: str | None = None) -> Path:
    """``mkdir -p path`` (mode 0o777 less the umask) after :func:`check_folder`; what the environment refuses
    is a :class:`WriteFault`.

    Returns:
        ``path``.
    """
    path = check_folder(path, what)
    with write_faults(path, what, folder=True):
        path.mkdir(parents=True, exist_ok=True)
    return path


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
