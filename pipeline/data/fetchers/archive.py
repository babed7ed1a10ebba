"""Safe extraction of a tar archive: every member is checked before anything is written.

Members that would land outside the destination (absolute names, ``..``, paths through the archive's own
symlinks), symlinks or hard links pointing outside it, and device, fifo or other special members are refused.
Extraction goes to a temporary folder inside the destination whose top-level entries are then renamed into place,
so an interrupted extraction never leaves a half-extracted folder under its final name.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from pipeline.errors import DataError

__all__ = ["safe_extract"]


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None


def _resolve(parts: Iterable[str], links: dict[str, str]) -> list[str] | None:
    """Resolve a member path lexically, relative to the destination, following the archive's own symlinks.

    Returns the components of the resolved path, or ``None`` when it escapes the destination (through ``..``,
    an absolute link target or a symlink loop).
    """
    queue = list(parts)
    stack: list[str] = []
    hops = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        target = links.get("/".join(stack))
        if target is not None:
            hops += 1
            if hops > 40 or _is_absolute(target):
                return None
            stack.pop()
            queue = target.split("/") + queue
    return stack


def _member_problem(member: tarfile.TarInfo, links: dict[str, str]) -> str | None:
    """Why ``member`` must not be extracted, or ``None`` when it is safe."""
    name = member.name
    if not name or "\x00" in name:
        return f"member {name!r} has an invalid name"
    if _is_absolute(name):
        return f"member {name!r} has an absolute path"
    if member.ischr() or member.isblk() or member.isfifo():
        return f"member {name!r} is a device or fifo"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return f"member {name!r} has an unsupported type ({member.type!r})"
    parts = PurePosixPath(name).parts
    if member.issym():
        parent = _resolve(parts[:-1], links)
        if parent is None:
            return f"member {name!r} would be written outside the destination"
        if _is_absolute(member.linkname) or _resolve([*parent, *member.linkname.split("/")], links) is None:
            return f"symlink {name!r} points outside the destination ({member.linkname!r})"
        return None
    if _resolve(parts, links) is None:
        return f"member {name!r} would be written outside the destination"
    if member.islnk():
        if _is_absolute(member.linkname) or _resolve(member.linkname.split("/"), links) is None:
            return f"hard link {name!r} points outside the destination ({member.linkname!r})"
    return None


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path, "r:*")
    except FileNotFoundError as e:
        raise DataError(f"archive {tar_path} not found.") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"archive {tar_path} is not a readable tar file ({e}): it is corrupt or incomplete. Delete it and "
            f"download it again."
        ) from e


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract ``tar_path`` into ``dest``, refusing unsafe archives.

    Every member is checked before anything is written. An archive with a member whose path resolves outside
    ``dest`` (absolute paths, ``..``, paths through the archive's own symlinks), a symlink or hard link pointing
    outside ``dest``, or a device, fifo or other special member is refused with a :class:`DataError` and nothing
    is extracted.

    Extraction goes into a temporary folder inside ``dest``; only when it has completed are its top-level
    entries renamed into ``dest`` (replacing entries of the same name), so an interrupted extraction never leaves
    a half-extracted folder under its final name.

    Raises:
        DataError: the archive is unreadable or unsafe.
    """
    tar_path = Path(tar_path)
    dest = Path(dest)
    with _open_tar(tar_path) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"archive {tar_path} is corrupt or incomplete ({e}). Delete it and download it again."
            ) from e
        links: dict[str, str] = {}
        for m in members:
            if m.issym() and not _is_absolute(m.name):
                key = _resolve(PurePosixPath(m.name).parts, {})
                if key:
                    links["/".join(key)] = m.linkname
        problems = [p for p in (_member_problem(m, links) for m in members) if p is not None]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DataError(
                f"refusing to extract {tar_path} into {dest}: {shown}. The archive is corrupt or malicious; "
                f"nothing was extracted. Delete it and download it again from a trusted source."
            )

        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            try:
                if hasattr(tarfile, "data_filter"):  # defence in depth (Python >= 3.11.4)
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - older Pythons; members were checked above
                    tar.extractall(tmp, members=members)
            except (tarfile.TarError, EOFError) as e:
                raise DataError(
                    f"could not extract {tar_path} ({e}): the archive is corrupt, incomplete or unsafe. Delete "
                    f"it and download it again."
                ) from e
            except OSError as e:
                raise DataError(f"could not extract {tar_path} into {dest}: {e}. Check free disk space.") from e
            for entry in sorted(tmp.iterdir()):
                _move_into_place(entry, dest / entry.name, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(src: Path, target: Path, dest: Path) -> None:
    """Rename ``src`` onto ``target``; an existing ``target`` is moved aside first and deleted afterwards."""
    if not (target.exists() or target.is_symlink()):
        os.replace(src, target)
        return
    old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=dest))
    try:
        os.replace(target, old / target.name)
        os.replace(src, target)
    finally:
        shutil.rmtree(old, ignore_errors=True)
