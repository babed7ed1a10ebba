"""Reading a scan: NIfTI with nibabel; MetaImage, NRRD and DICOM series folders with SimpleITK; TIFF with
tifffile and PNG with Pillow.

Each format's header is checked before any voxel is read (:mod:`~pipeline.io.scan.limits`): the data files it
names stay in its folder, the voxel count is within the budget, the file is long enough, the voxel type is a real
scalar and the geometry is finite, invertible and has positive voxel sizes. The checks and readers of each format
live in :mod:`~pipeline.io.scan.nifti_header` (NIfTI), :mod:`~pipeline.io.scan.itk` (MetaImage, NRRD),
:mod:`~pipeline.io.scan.dicom` (DICOM series), :mod:`~pipeline.io.scan.tiff` and :mod:`~pipeline.io.scan.png`
(microscopy); this module is where a scan is read, whatever its format.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import DataError
from pipeline.io.scan.dicom import check_dicom_links, is_dicom_series, read_dicom
from pipeline.io.scan.geometry import Scan
from pipeline.io.scan.headers import metaimage_layout
from pipeline.io.scan.itk import data_layout, read_itk
from pipeline.io.scan.limits import DEFAULT_MAX_VOXELS, cannot_read, confined
from pipeline.io.scan.names import NIFTI_SUFFIXES, PNG_SUFFIXES, SUPPORTED, TIFF_SUFFIXES, scan_suffix
from pipeline.io.scan.nifti_header import check_nifti
from pipeline.io.scan.png import read_png
from pipeline.io.scan.tiff import read_tiff


def read_scan(path: str | os.PathLike[str], max_voxels: int = DEFAULT_MAX_VOXELS) -> Scan:
    """Read a scan file or a DICOM series folder, its header checked first (nothing is decompressed for a refusal).

    NaN voxels are not checked here.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``, ``.tif``, ``.tiff``, ``.ome.tif``,
            ``.ome.tiff`` or ``.png`` file, or a folder holding one DICOM series.
        max_voxels: the largest voxel count (times channels) read; a header declaring more is refused.

    Returns:
        The scan, its array indexed ``(x, y[, z])[, channel]`` and its affine in RAS+.

    Raises:
        DataError: the file is missing, not a supported format, truncated or corrupt; its header names data files
            outside its folder, declares more than ``max_voxels`` voxels, a complex, bit or colour voxel type, or a
            geometry with zero, negative or non-finite voxel sizes or a singular or non-finite matrix; the folder
            holds no DICOM series, several series, links to files outside it, or slices off a regular grid; a
            TIFF or PNG is a colour image whose colours differ, or has axes, a compression or a pixel size it
            cannot be read with (:mod:`~pipeline.io.scan.microscopy`).
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom(path, max_voxels)
    fmt = scan_suffix(path)
    if fmt is None:
        hint = "; pass the folder holding the DICOM series instead" if path.suffix.lower() == ".dcm" else ""
        raise DataError(f"{path}: not a supported scan; expected {SUPPORTED}{hint}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt in NIFTI_SUFFIXES:
        return _read_nifti(path, max_voxels)
    if fmt in TIFF_SUFFIXES:
        return read_tiff(path, max_voxels)
    if fmt in PNG_SUFFIXES:
        return read_png(path, max_voxels)
    return read_itk(path, fmt, max_voxels)


def nifti_reference(path: str | os.PathLike[str]) -> Scan:
    """A NIfTI scan's geometry without its voxels (the data stay on disk, unread): what writing on its grid needs."""
    path = Path(path)
    img = nib.load(str(path))
    return Scan(path=path, kind="nifti", array=img.dataobj, affine=np.array(img.affine, dtype=float), header=img)


def mhd_data_file(path: str | os.PathLike[str]) -> Path | None:
    """The one data file a MetaImage header names in ``ElementDataFile`` (whether or not it exists), or ``None``
    when the data are inside the header (``LOCAL``) or spread over a list or pattern of slice files.

    Raises:
        OSError: the header cannot be read.
        DataError: the header names a data file outside its own folder (:func:`~pipeline.io.scan.limits.confined`).
    """
    path = Path(path)
    layout = metaimage_layout(path)
    if layout is None or len(layout.files) != 1 or layout.offset is not None:
        return None
    return confined(path, layout.field, layout.files[0])


def scan_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every file a scan's voxels come from: the file, a MetaImage or NRRD header with the data files it names,
    or the files of a DICOM series folder (sorted); existing files only.

    Raises:
        OSError: a header cannot be read.
        DataError: a header names a data file outside its folder, or a DICOM folder holds a link to a file
            outside it.
    """
    path = Path(path)
    if path.is_dir():
        check_dicom_links(path)
        return sorted(p for p in path.iterdir() if p.is_file())
    layout = data_layout(path, scan_suffix(path))
    if layout is None:
        return [path]
    return [path, *(p for p in (confined(path, layout.field, n) for n in layout.files) if p.is_file())]


def _read_nifti(path: Path, max_voxels: int) -> Scan:
    img = check_nifti(path, max_voxels, mmap=False)
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for truncated or corrupt files
        raise cannot_read(path, "the NIfTI image", exc) from None
    img.uncache()
    return Scan(path=path, kind="nifti", array=array, affine=np.array(img.affine, dtype=float), header=img)


__all__ = ["check_nifti", "is_dicom_series", "mhd_data_file", "nifti_reference", "read_scan",
           "scan_files"]
