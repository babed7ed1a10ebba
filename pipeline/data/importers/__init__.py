"""Importers: convert a public data set from its own layout to the pipeline's storage convention plus a manifest.

``import_dataset(name, src, out)`` (``pipeline data import NAME SRC --out DIR``) dispatches by name through
:data:`IMPORTERS`. Every module of this package is imported when the package is, and registers its importer
function with ``@IMPORTERS.register("name")``; the module's docstring describes the layout it expects under
``src`` and its label conventions. Adding a data set is one new module here (and its test): the CLI's choices and
:func:`import_dataset` pick it up from the registry.

An importer is called as ``importer(src, out, **options)`` with ``src`` an existing folder, and returns the path of
the manifest it wrote, ``out/<name>.json``. It writes cases in the storage convention of
:mod:`pipeline.data.storage` (NIfTI ``(X, Y[, Z])`` arrays, spacing in mm, ``imagesTr``/``labelsTr``/... folders,
a MONAI-readable manifest) with the helpers there, and splits the cases with
:func:`pipeline.data.splits.split_cases` (through :func:`~pipeline.data.storage.write_manifest`): about 70/10/20
into training / validation / test, training folds 0..4 round-robin, validation and test fold -1.

Every importer rejects a folder that is not in its layout with a :class:`~pipeline.errors.DataError` naming what
is missing. Case ids built from source names (folder or file names) must be safe file names
(:data:`pipeline.data.manifest.CASE_ID_RULE`): an importer checks them all with :func:`check_source_ids` before it
writes anything, and writes only under ``out``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import DataError
from pipeline.registry import Registry, import_submodules

__all__ = ["IMPORTERS", "Importer", "check_source_ids", "import_dataset"]

Importer = Callable[..., Path]
"""``importer(src: Path, out: Path, **options) -> manifest path``."""

IMPORTERS: Registry[Importer] = Registry("data set importer")


def check_source_ids(name: str, ids: Iterable[tuple[str, Path]]) -> None:
    """Refuse, before anything is written, case ids built from source names that are not safe file names.

    Args:
        name: the data set (for the message).
        ids: ``(case id, the source file or folder it was built from)`` pairs.

    Raises:
        DataError: naming the source path, the id and the rule (rename the file or folder).
    """
    from pipeline.data.manifest import case_id_problem

    for cid, source in ids:
        problem = case_id_problem(cid)
        if problem is not None:
            raise DataError(f"{name}: {source} would give the case id {cid!r}: {problem}. Rename it (nothing was "
                            "imported)")


def import_dataset(name: str, src: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> Path:
    """Import the data set ``name`` from ``src`` into ``out``; returns the manifest path ``out/<name>.json``.

    Args:
        name: one of ``IMPORTERS.names()`` (``duke_dme`` is accepted for ``duke-dme``, case is ignored).
        src: the data set's folder as downloaded.
        out: folder for the converted cases and the manifest.
        options: passed to the importer (e.g. ``spacing=``, ``seed=``).

    Raises:
        DataError: unknown name, or ``src`` is not in the data set's layout.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in IMPORTERS:
        from pipeline.registry import suggest

        raise DataError(f"unknown data set '{name}' to import; known: {', '.join(IMPORTERS.names())}."
                        f"{suggest(key, IMPORTERS.names())}")
    src_path = Path(src).expanduser()
    if not src_path.is_dir():
        raise DataError(f"{name}: source folder {src_path} does not exist or is not a folder")
    return IMPORTERS.get(key)(src_path, Path(out).expanduser(), **options)


import_submodules(__name__, __path__)  # each module registers itself
