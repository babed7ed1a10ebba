"""Confinement: a path a manifest (or a data writer) names must stay under the data root, symlinks followed."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import DataError
from pipeline.io.jsondoc import show as _show

ROOT_RULE = "paths in a manifest must stay under its data root {root}; move the file there or set data.root"


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """The data root, absolute, with symlinks followed (a root that is itself a link to shared storage is fine).

    Raises:
        DataError: the folder cannot be resolved (a symlink loop, an invalid name).
    """
    try:
        return Path(root).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"data root {_show(str(root))} cannot be resolved ({exc}); give an existing folder") from None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _realpath(joined: str, parents: dict[str, str]) -> str:
    """``os.path.realpath(joined)``, with the parent folders' real paths cached in ``parents`` (a manifest names
    thousands of files in a few folders: one ``lstat`` per file instead of one per path component)."""
    if ".." in joined.split(os.sep):  # "link/.." must follow the link first: no shortcut
        return os.path.realpath(joined)
    parent, name = os.path.split(os.path.normpath(joined))
    real_parent = parents.get(parent)
    if real_parent is None:
        real_parent = parents[parent] = os.path.realpath(parent)
    candidate = os.path.join(real_parent, name)
    return os.path.realpath(candidate) if os.path.islink(candidate) else candidate


def confinement_problem(root: Path, path: str | os.PathLike[str],
                        parents: dict[str, str] | None = None) -> tuple[Path | None, str | None]:
    """``path`` (relative to ``root``, or absolute) resolved with symlinks followed, and why it is not under
    ``root`` (``None`` when it is). ``root`` must already be resolved (:func:`resolve_root`); ``parents`` caches
    resolved folders across calls with the same ``root``."""
    base = str(root)
    joined = os.path.join(base, os.fspath(path))
    try:
        resolved = _realpath(joined, {} if parents is None else parents)
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long
        return None, f"cannot be resolved ({exc})"
    if _under(resolved, base):
        return Path(resolved), None
    if _under(os.path.normpath(joined), base):
        return Path(resolved), (f"is a symlink pointing out of the data root (to {resolved}); "
                                + ROOT_RULE.format(root=root) + " (link the whole data folder, not single files)")
    return Path(resolved), f"resolves to {resolved}, outside the data root; " + ROOT_RULE.format(root=root)


def confined_path(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str) -> Path:
    """``root / path`` resolved, when it stays under ``root`` (see :func:`confinement_problem`); for writers.

    Raises:
        DataError: naming ``what`` (the case and key), the path and the rule.
    """
    base = resolve_root(root)
    resolved, problem = confinement_problem(base, path)
    if problem is not None or resolved is None:
        raise DataError(f"{what} {_show(str(path))} {problem}")
    return resolved
