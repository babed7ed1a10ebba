"""Reading a scan: NIfTI with nibabel; MetaImage, NRRD and DICOM series folders with SimpleITK."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from pipeline.errors import DataError
from pipeline.io.scan.geometry import Scan, itk_affine
from pipeline.io.scan.names import ITK_IO, NIFTI_SUFFIXES, SUPPORTED, scan_suffix

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


def read_scan(path: str | os.PathLike[str]) -> Scan:
    """Read a scan file or a DICOM series folder.

    NaN voxels are not checked here.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd`` file or a folder holding one DICOM series.

    Returns:
        The scan, its array indexed ``(x, y[, z][, channel])`` and its affine in RAS+.

    Raises:
        DataError: the file is missing, not a supported format, truncated or corrupt; the folder holds no DICOM
            series, several series, or slices off a regular grid.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom(path)
    fmt = scan_suffix(path)
    if fmt is None:
        hint = "; pass the folder holding the DICOM series instead" if path.suffix.lower() == ".dcm" else ""
        raise DataError(f"{path}: not a supported scan; expected {SUPPORTED}{hint}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt in NIFTI_SUFFIXES:
        return _read_nifti(path)
    return _read_itk(path, fmt)


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
    """
    path = Path(path)
    head = path.read_bytes()[:65536].decode("latin-1")
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", head, flags=re.MULTILINE)
    if match is None:
        return None
    name = match.group(1)
    if name.upper() in ("LOCAL", "LIST") or "%" in name or " " in name:
        return None
    return path.parent / name


def _cannot_read(path: Path, what: str, exc: BaseException) -> DataError:
    return DataError(f"{path}: cannot read {what} (truncated or corrupt file: {_reason(exc)}); "
                     "re-export or re-copy it")


def _reason(exc: BaseException) -> str:
    """One line out of an exception; ITK's messages span several lines with source locations."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "ERROR:" in ln:  # "ITK ERROR: MetaImageIO(0x...): <what went wrong>"
            msg = ln.split("): ", 1)[1] if "): " in ln else ln.split("ERROR:", 1)[1].strip()
            if msg.endswith(":") and i + 1 < len(lines):  # NRRD: the innermost cause comes last
                msg = f"{msg} {lines[-1].removeprefix('[nrrd] ')}"
            return msg
    return lines[0] if lines else type(exc).__name__


def _read_nifti(path: Path) -> Scan:
    try:
        img = nib.load(str(path), mmap=False)
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated or corrupt files
        raise _cannot_read(path, "the NIfTI image", exc) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI image; expected {SUPPORTED}")
    img.uncache()
    return Scan(path=path, kind="nifti", array=array, affine=np.array(img.affine, dtype=float), header=img)


def _read_itk(path: Path, fmt: str) -> Scan:
    if fmt == ".mhd":
        _check_mhd_data_file(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO(ITK_IO[fmt])
        reader.SetFileName(str(path))
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise _cannot_read(path, "the image", exc) from None
    return _from_itk(path, "itk", image, array)


def _check_mhd_data_file(path: Path) -> None:
    """A .mhd header names its data file; say so when it is missing (ITK only says the header cannot be read)."""
    try:
        data = mhd_data_file(path)
    except OSError as exc:
        raise _cannot_read(path, "the header", exc) from None
    if data is not None and not data.is_file():
        raise DataError(f"{path}: its data file {data.name} (ElementDataFile in the header) is missing; keep the "
                        ".raw/.zraw file next to the .mhd under that name")


def _read_dicom(folder: Path) -> Scan:
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise DataError(f"{folder}: cannot list DICOM series ({_reason(exc)})") from None
    if not ids:
        raise DataError(f"{folder}: folder holds no DICOM files; expected {SUPPORTED}")
    if len(ids) > 1:
        raise DataError(f"{folder}: folder holds {len(ids)} DICOM series ({', '.join(ids)}); put each series in a "
                        "folder of its own")
    reader = sitk.ImageSeriesReader()
    try:
        names = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise _cannot_read(folder, f"DICOM series {ids[0]}", exc) from None
    if image.GetDimension() == 3 and image.GetSize()[2] == len(names) > 1:
        _check_slice_positions(folder, reader, image, len(names))
    scan = _from_itk(folder, "dicom", image, array)
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


def _from_itk(path: Path, kind: str, image: sitk.Image, array: np.ndarray) -> Scan:
    dim = image.GetDimension()
    vector = array.ndim == dim + 1
    # GetArrayFromImage is (z, y, x[, c]); reverse the image axes, keep a component axis last.
    array = array.transpose([*range(dim - 1, -1, -1), *([dim] if vector else [])])
    nd = min(dim, 3)
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)[:nd, :nd]
    header = {
        "origin": tuple(float(v) for v in image.GetOrigin()[:nd]),
        "spacing": tuple(float(v) for v in image.GetSpacing()[:nd]),
        "direction": tuple(float(v) for v in direction.ravel()),
        "size": tuple(int(v) for v in image.GetSize()[:nd]),
    }
    return Scan(path=path, kind=kind, array=array, affine=itk_affine(header), header=header)
