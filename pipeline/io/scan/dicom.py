"""Reading a DICOM series folder with SimpleITK (``ImageSeriesReader``), and recognising one.

A folder holds exactly one series, its files are inside it (no links to files elsewhere), its header passes the
ITK checks (:mod:`~pipeline.io.scan.itk`) for the whole series, and its slices lie on the regular grid ITK
reconstructs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.errors import DataError
from pipeline.io.scan.geometry import Scan
from pipeline.io.scan.itk import check_itk_geometry, check_itk_info, from_itk
from pipeline.io.scan.limits import cannot_read, error_reason, inside
from pipeline.io.scan.names import SUPPORTED

# DICOM slices must lie on the reconstructed grid within this fraction of the slice spacing.
_SLICE_TOL = 0.1


def is_dicom_series(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a folder holding at least one DICOM file (any file name, no ``.dcm`` needed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns "No Series were found" for every other folder
    try:
        return len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))) > 0
    except RuntimeError:
        return False
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def check_dicom_links(folder: Path) -> None:
    """Refuse files of a DICOM folder that are symbolic links to files outside it (ITK would read them as
    slices): a series folder holds its own files."""
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() and entry.is_file() and not inside(folder, entry):
            raise DataError(f"{folder}: {entry.name} is a symbolic link to {os.path.realpath(entry)}, outside the "
                            "series folder: the files of a DICOM series folder must be inside it (links count as "
                            "where they point); copy the file into the folder instead of linking it")


def read_dicom(folder: Path, max_voxels: int) -> Scan:
    """Read the one DICOM series in ``folder``, its header and its files checked first."""
    check_dicom_links(folder)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise DataError(f"{folder}: cannot list DICOM series ({error_reason(exc)})") from None
    if not ids:
        raise DataError(f"{folder}: folder holds no DICOM files; expected {SUPPORTED}")
    if len(ids) > 1:
        raise DataError(f"{folder}: folder holds {len(ids)} DICOM series ({', '.join(ids)}); put each series in a "
                        "folder of its own")
    reader = sitk.ImageSeriesReader()
    try:
        names = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
        first = sitk.ImageFileReader()
        first.SetImageIO("GDCMImageIO")
        first.SetFileName(names[0])
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise cannot_read(folder, f"DICOM series {ids[0]}", exc) from None
    one = first.GetSize()
    series = (*one[:2], (one[2] if len(one) > 2 else 1) * len(names))  # rows x columns x frames x files
    check_itk_info(folder, "dicom", first, max_voxels, size=series)
    try:
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise cannot_read(folder, f"DICOM series {ids[0]}", exc) from None
    check_itk_geometry(folder, "dicom", image.GetDimension(), image.GetSpacing(), image.GetDirection(),
                        image.GetOrigin())
    if image.GetDimension() == 3 and image.GetSize()[2] == len(names) > 1:
        _check_slice_positions(folder, reader, image, len(names))
    scan = from_itk(folder, "dicom", image, array)
    scan.header["series_id"] = ids[0]
    return scan


def _check_slice_positions(folder: Path, reader: sitk.ImageSeriesReader, image: sitk.Image, n: int) -> None:
    """Each slice's Image Position (Patient) must be where the reconstructed grid puts it: ITK spaces slices evenly
    along the slice normal, which is wrong for series with missing slices, uneven spacing or a tilted gantry."""
    tol = _SLICE_TOL * image.GetSpacing()[2]
    for k in range(n):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return
        try:
            position = np.array([float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")])
        except ValueError:
            return
        off = float(np.linalg.norm(position - np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))))
        if position.shape != (3,) or off > tol:
            raise DataError(f"{folder}: DICOM slice {k + 1} of {n} lies {off:.3g} mm off a regular grid (missing "
                            "slices, uneven slice spacing or a tilted gantry); resample the series to a regular grid "
                            "(or export it as NIfTI) first")


__all__ = ["check_dicom_links", "is_dicom_series", "read_dicom"]
