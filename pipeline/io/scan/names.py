"""Scan file names: the supported suffixes, output names and what an interrupted writer leaves behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from pipeline.errors import DataError

# Longer suffixes first: scan_suffix takes the first that a name ends with (".ome.tif" before ".tif").
SCAN_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png")

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO"}
OME_SUFFIXES = (".ome.tiff", ".ome.tif")
TIFF_SUFFIXES = (*OME_SUFFIXES, ".tiff", ".tif")
PNG_SUFFIXES = (".png",)
SUPPORTED = ("NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd), TIFF (.tif, .tiff, .ome.tif, .ome.tiff), "
             "PNG (.png) or a folder holding one DICOM series")

# What atomic_path (".<stem>.XXXX.part<suffix>") and the .mhd writer (".<stem>.XXXX.part/") leave behind when killed.
_TEMPORARY = re.compile(r"^\..+\.part(\..+)?$")


def scan_suffix(path: str | os.PathLike[str]) -> str | None:
    """The scan format suffix of a file name, lower case.

    Args:
        path: a file path; only its name is looked at.

    Returns:
        One of :data:`SCAN_SUFFIXES` (``".nii.gz"`` for ``CASE.NII.GZ``), or ``None`` for any other name.
    """
    name = Path(path).name.lower()
    for suffix in SCAN_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def output_name(path: str | os.PathLike[str], suffix: str = "") -> str:
    """The file name of an output for the scan at ``path``, in the scan's own format.

    ``"case.nii.gz"`` gives ``"case{suffix}.nii.gz"``, ``"a.mha"`` gives ``"a{suffix}.mha"``, ``"cells.ome.tif"``
    gives ``"cells{suffix}.ome.tif"``, ``"n.PNG"`` gives ``"n{suffix}.PNG"``; a DICOM series folder ``"ser1"`` gives
    ``"ser1{suffix}.nii.gz"`` (outputs of DICOM series are NIfTI).

    Raises:
        DataError: ``path`` is neither a supported scan file name nor a folder.
    """
    p = Path(path)
    name = p.name or Path(path).resolve().name
    if p.is_dir():
        return f"{name}{suffix}.nii.gz"
    fmt = scan_suffix(p)
    if fmt is None:
        raise DataError(f"{path}: not a supported scan; expected {SUPPORTED}")
    return f"{name[: -len(fmt)]}{suffix}{name[-len(fmt):]}"


def target_format(target: Path) -> str:
    """The format suffix of an output file name.

    Raises:
        ValueError: ``target`` has none of :data:`SCAN_SUFFIXES`.
    """
    fmt = scan_suffix(target)
    if fmt is None:
        raise ValueError(f"cannot tell the output format of {target}; use one of {', '.join(SCAN_SUFFIXES)}")
    return fmt


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete what a killed writer left in ``folder``: files and folders named ``.<name>.part[<suffix>]``.

    Only call it while no writer is working in ``folder``: a running writer's temporaries look the same.

    Args:
        folder: the output folder (not searched recursively).

    Returns:
        The removed paths, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not _TEMPORARY.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed
