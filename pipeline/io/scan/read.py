"""Reading a scan: NIfTI with nibabel; MetaImage, NRRD and DICOM series folders with SimpleITK.

Each format's header is checked before any voxel is read (:mod:`~pipeline.io.scan.limits`): the data files it
names stay in its folder, the voxel count is within the budget, the file is long enough, the voxel type is a real
scalar and the geometry is finite, invertible and has positive voxel sizes.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.openers import ImageOpener

from pipeline.errors import DataError
from pipeline.io.scan.geometry import Scan, itk_affine
from pipeline.io.scan.headers import DataLayout, metaimage_layout, nrrd_layout
from pipeline.io.scan.limits import (
    DEFAULT_MAX_VOXELS,
    check_axes,
    check_data_size,
    check_spacing,
    check_voxel_budget,
    confined,
    inside,
    refuse_voxel_type,
    shape_text,
    value_text,
)
from pipeline.io.scan.names import ITK_IO, NIFTI_SUFFIXES, SUPPORTED, scan_suffix

# DICOM slices must lie on the reconstructed grid within this fraction of the slice spacing.
_SLICE_TOL = 0.1

# NIfTI datatype codes nibabel cannot read or the network cannot take (see refuse_voxel_type).
_NIFTI_REFUSED = {1: "bit", 32: "complex", 1792: "complex", 2048: "complex", 128: "colour", 2304: "colour",
                  1536: "extended", 0: "unknown", 255: "unknown"}
_ITK_COMPLEX = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
_GZIP_CHUNK = 1 << 20
_NIFTI_FIX = ("fix the header (or re-export the scan with a tool that writes a valid geometry, e.g. nibabel or "
              "SimpleITK)")


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


def read_scan(path: str | os.PathLike[str], max_voxels: int = DEFAULT_MAX_VOXELS) -> Scan:
    """Read a scan file or a DICOM series folder, its header checked first (nothing is decompressed for a refusal).

    NaN voxels are not checked here.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd`` file or a folder holding one DICOM series.
        max_voxels: the largest voxel count (times channels) read; a header declaring more is refused.

    Returns:
        The scan, its array indexed ``(x, y[, z])[, channel]`` and its affine in RAS+.

    Raises:
        DataError: the file is missing, not a supported format, truncated or corrupt; its header names data files
            outside its folder, declares more than ``max_voxels`` voxels, a complex, bit or colour voxel type, or a
            geometry with zero, negative or non-finite voxel sizes or a singular or non-finite matrix; the folder
            holds no DICOM series, several series, links to files outside it, or slices off a regular grid.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom(path, max_voxels)
    fmt = scan_suffix(path)
    if fmt is None:
        hint = "; pass the folder holding the DICOM series instead" if path.suffix.lower() == ".dcm" else ""
        raise DataError(f"{path}: not a supported scan; expected {SUPPORTED}{hint}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt in NIFTI_SUFFIXES:
        return _read_nifti(path, max_voxels)
    return _read_itk(path, fmt, max_voxels)


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
        _check_dicom_links(path)
        return sorted(p for p in path.iterdir() if p.is_file())
    layout = _layout(path, scan_suffix(path))
    if layout is None:
        return [path]
    return [path, *(p for p in (confined(path, layout.field, n) for n in layout.files) if p.is_file())]


def check_nifti(path: str | os.PathLike[str], max_voxels: int | None = DEFAULT_MAX_VOXELS,
                mmap: bool = True) -> nib.Nifti1Image:
    """A NIfTI scan's header, checked before its voxels are read; returns the image loaded lazily (nibabel's
    ``nib.load(path, mmap=mmap)``: the voxels are read when its ``dataobj`` is).

    Checks, on the header as stored (nibabel repairs some fields silently when it loads): a supported real
    voxel type; the voxel budget; a file (or, for ``.nii.gz``, a decompressed stream) long enough for the declared
    data; and the affine nibabel uses (the sform when ``sform_code`` > 0, else the qform when ``qform_code`` > 0,
    else the voxel sizes ``pixdim``) finite and invertible, with finite voxel sizes, positive where the qform or
    the fall-back uses them.

    Raises:
        DataError: naming the file, the header field, its value and what to do.
    """
    path = Path(path)
    raw = _nifti_raw_header(path)
    code = int(raw["datatype"])
    label = nib.nifti1.data_type_codes.label.get(code, "unknown")
    if code in _NIFTI_REFUSED or code not in nib.nifti1.data_type_codes.code:
        refuse_voxel_type(path, f"datatype {code} ({label})", _NIFTI_REFUSED.get(code, "unknown"))
    dtype = raw.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "iuf":
        refuse_voxel_type(path, f"datatype {code} ({label})", "colour" if dtype.fields else "unknown")
    try:
        shape = tuple(int(s) for s in raw.get_data_shape())
    except Exception as exc:  # noqa: BLE001 - nibabel's header errors have several types
        raise _cannot_read(path, "the NIfTI header", exc) from None
    if any(s < 0 for s in shape):
        raise DataError(f"{path}: dim = {shape}: the header declares a negative size; re-export the scan")
    check_voxel_budget(path, shape, 1, max_voxels)
    _check_nifti_size(path, raw, shape, dtype)
    _check_nifti_geometry(path, raw, shape)
    try:
        img = nib.load(str(path), mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for corrupt files
        raise _cannot_read(path, "the NIfTI image", exc) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI image; expected {SUPPORTED}")
    nd = 2 if len(shape) == 2 else 3
    fix = _NIFTI_FIX
    if int(raw["sform_code"]) > 0:
        fix += ", or set sform_code to 0 if the qform holds the geometry"
    check_axes(path, _nifti_affine_field(raw), np.asarray(img.affine)[:3, :nd], np.asarray(img.affine)[:3, 3], fix)
    return img


def _nifti_raw_header(path: Path) -> nib.Nifti1Header:
    """The header as stored (nibabel's ``check=False``: no repairs), NIfTI-1 or NIfTI-2."""
    try:
        with ImageOpener(str(path)) as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise _cannot_read(path, "the NIfTI header", exc) from None
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    if len(head) < klass.template_dtype.itemsize or not sizes & {348, 540}:
        raise DataError(f"{path}: not a NIfTI image (no NIfTI header); expected {SUPPORTED}")
    try:
        return klass(head[: klass.template_dtype.itemsize], check=False)
    except Exception as exc:  # noqa: BLE001 - nibabel's header errors have several types
        raise _cannot_read(path, "the NIfTI header", exc) from None


def _check_nifti_size(path: Path, raw: nib.Nifti1Header, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The data the header declares are all there: the file size (``.nii``), or the gzip trailer's length of the
    decompressed stream (``.nii.gz``, modulo 2**32), confirmed by decompressing without keeping the data when it
    says less (a stream of several gzip members has only the last one's length in its trailer)."""
    if not np.isfinite(float(raw["vox_offset"])) or float(raw["vox_offset"]) < 0:
        raise DataError(f"{path}: vox_offset = {float(raw['vox_offset']):g}: the data offset must be a byte position; "
                        "re-export the scan")
    offset = int(raw["vox_offset"])
    need = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    declared = f"{shape_text(shape)} {dtype.name} voxels after a {offset}-byte header"
    size = path.stat().st_size
    if scan_suffix(path) == ".nii":
        check_data_size(path, need, size, declared)
        return
    with open(path, "rb") as f:
        f.seek(max(size - 4, 0))
        isize = int.from_bytes(f.read(4), "little")
    if need < 2**32 and isize >= need or isize == need % 2**32:
        return
    have = 0
    try:
        with gzip.open(path, "rb") as stream:
            while have < need:
                block = stream.read(min(_GZIP_CHUNK, need - have))
                if not block:
                    break
                have += len(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise _cannot_read(path, "the NIfTI image", exc) from None
    check_data_size(path, need, have, declared, "the decompressed file")


def _nifti_affine_field(raw: nib.Nifti1Header) -> str:
    sform, qform = int(raw["sform_code"]), int(raw["qform_code"])
    if sform > 0:
        return f"sform (sform_code {sform}: srow_x, srow_y, srow_z)"
    if qform > 0:
        return f"qform (qform_code {qform}: quatern_b/c/d, qoffset_x/y/z and pixdim)"
    return "the affine from pixdim (sform_code and qform_code 0)"


def _check_nifti_geometry(path: Path, raw: nib.Nifti1Header, shape: tuple[int, ...]) -> None:
    """Voxel sizes and the qform's quaternion, as stored. Axes one voxel thick are not checked (nibabel takes 1 mm
    for a zero there, and no resampling depends on it)."""
    nd = 2 if len(shape) == 2 else 3
    axes = [i for i in range(1, nd + 1) if i > len(shape) or shape[i - 1] > 1]
    pixdim = np.asarray(raw["pixdim"], dtype=float)
    sform, qform = int(raw["sform_code"]), int(raw["qform_code"])
    names = "pixdim[" + ",".join(map(str, axes)) + "]"
    if not np.all(np.isfinite(pixdim[axes])):
        raise DataError(f"{path}: {names} = {value_text(pixdim[axes])}: voxel sizes must be finite; {_NIFTI_FIX}")
    if sform > 0:
        return
    used = "the qform" if qform > 0 else "the affine (sform_code and qform_code are 0)"
    check_spacing(path, f"{names} (voxel sizes of {used})", pixdim[axes],
                  "nibabel would silently take the absolute value (1 mm for 0) and other tools 1 mm, so the "
                  "geometry is ambiguous; " + _NIFTI_FIX)
    if qform <= 0:
        return
    quat = np.asarray([raw["quatern_b"], raw["quatern_c"], raw["quatern_d"]], dtype=float)
    if not np.all(np.isfinite(quat)) or float(quat @ quat) > 1 + 1e-6:
        raise DataError(f"{path}: qform (qform_code {qform}): quatern_b/c/d = {value_text(quat)} is not a rotation "
                        f"(finite, b^2 + c^2 + d^2 <= 1); {_NIFTI_FIX}, or set qform_code to 0 if the sform holds "
                        "the geometry")


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


def _read_nifti(path: Path, max_voxels: int) -> Scan:
    img = check_nifti(path, max_voxels, mmap=False)
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for truncated or corrupt files
        raise _cannot_read(path, "the NIfTI image", exc) from None
    img.uncache()
    return Scan(path=path, kind="nifti", array=array, affine=np.array(img.affine, dtype=float), header=img)


# ITK: the header fields that hold the spacing and the axes, per format (for the messages).
_ITK_FIELDS = {".mha": ("ElementSpacing", "TransformMatrix"), ".mhd": ("ElementSpacing", "TransformMatrix"),
               ".nrrd": ("spacing (space directions or spacings)", "space directions"),
               "dicom": ("Pixel Spacing (0028,0030) or the slice spacing", "Image Orientation (Patient) (0020,0037)")}
_ITK_FIX = "fix the header or re-export the scan"


def _layout(path: Path, fmt: str | None) -> DataLayout | None:
    if fmt in (".mha", ".mhd"):
        return metaimage_layout(path)
    if fmt == ".nrrd":
        return nrrd_layout(path)
    return None


def _read_itk(path: Path, fmt: str, max_voxels: int) -> Scan:
    try:
        layout = _layout(path, fmt)
    except OSError as exc:
        raise _cannot_read(path, "the header", exc) from None
    names, fld = (layout.files, layout.field) if layout is not None else ([], "")
    files: list[Path] = []
    for name in names:  # every data file inside the header's folder, and there
        data = confined(path, fld, name)
        if not data.is_file():
            keep = ".raw/.zraw file next to the .mhd" if fmt == ".mhd" else "data file next to the header"
            raise DataError(f"{path}: its data file {name} ({fld} in the header) is missing; keep the {keep} under "
                            "that name")
        files.append(data)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(ITK_IO[fmt])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _cannot_read(path, "the header", exc) from None
    _check_itk_info(path, fmt, reader, max_voxels)
    if layout is not None and layout.plain and len(files) <= 1:
        need = int(np.prod(reader.GetSize(), dtype=object)) * reader.GetNumberOfComponents() * _component_bytes(reader)
        declared = f"{shape_text(reader.GetSize())} voxels of {sitk.GetPixelIDValueAsString(reader.GetPixelID())}"
        if files:
            check_data_size(path, need, files[0].stat().st_size - layout.skip, declared,
                            f"its data file {layout.files[0]}")
        else:
            check_data_size(path, need, path.stat().st_size - (layout.offset or 0), declared,
                            "the file after its header")
    try:
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise _cannot_read(path, "the image", exc) from None
    return _from_itk(path, "itk", image, array)


def _component_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes per voxel component of the image a reader is about to read."""
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    return int(probe.GetSizeOfPixelComponent())


def _check_itk_info(path: Path, kind: str, reader: sitk.ImageFileReader, max_voxels: int,
                    size: tuple[int, ...] | None = None) -> None:
    """An ITK header (``ReadImageInformation``): a real voxel type, the voxel budget, a positive spacing and an
    invertible direction. ``size`` overrides the reader's (a DICOM series: one file's size times the files)."""
    if reader.GetPixelID() in _ITK_COMPLEX:
        refuse_voxel_type(path, f"voxel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())}", "complex")
    check_voxel_budget(path, size or reader.GetSize(), reader.GetNumberOfComponents(), max_voxels)
    _check_itk_geometry(path, kind, reader.GetDimension(), reader.GetSpacing(), reader.GetDirection(),
                        reader.GetOrigin())


def _check_itk_geometry(path: Path, kind: str, dim: int, spacing: Sequence[float], direction: Sequence[float],
                        origin: Sequence[float]) -> None:
    nd = min(dim, 3)
    spacing_field, axes_field = _ITK_FIELDS[kind]
    check_spacing(path, spacing_field, list(spacing)[:nd], _ITK_FIX)
    matrix = np.asarray(direction, dtype=float).reshape(dim, dim)[:nd, :nd]
    check_axes(path, axes_field, matrix, list(origin)[:nd], _ITK_FIX)


def _check_dicom_links(folder: Path) -> None:
    """Refuse files of a DICOM folder that are symbolic links to files outside it (ITK would read them as
    slices): a series folder holds its own files."""
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() and entry.is_file() and not inside(folder, entry):
            raise DataError(f"{folder}: {entry.name} is a symbolic link to {os.path.realpath(entry)}, outside the "
                            "series folder: the files of a DICOM series folder must be inside it (links count as "
                            "where they point); copy the file into the folder instead of linking it")


def _read_dicom(folder: Path, max_voxels: int) -> Scan:
    _check_dicom_links(folder)
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
        first = sitk.ImageFileReader()
        first.SetImageIO("GDCMImageIO")
        first.SetFileName(names[0])
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise _cannot_read(folder, f"DICOM series {ids[0]}", exc) from None
    one = first.GetSize()
    series = (*one[:2], (one[2] if len(one) > 2 else 1) * len(names))  # rows x columns x frames x files
    _check_itk_info(folder, "dicom", first, max_voxels, size=series)
    try:
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise _cannot_read(folder, f"DICOM series {ids[0]}", exc) from None
    _check_itk_geometry(folder, "dicom", image.GetDimension(), image.GetSpacing(), image.GetDirection(),
                        image.GetOrigin())
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


__all__ = ["check_nifti", "is_dicom_series", "mhd_data_file", "nifti_reference", "read_scan",
           "scan_files"]
