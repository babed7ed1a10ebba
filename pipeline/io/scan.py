"""Reading a scan in any supported format and writing outputs on exactly its grid.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``, read with nibabel), MetaImage (``.mha``, ``.mhd`` with its
``.raw``/``.zraw``) and NRRD (``.nrrd``), read with SimpleITK, and DICOM series folders (SimpleITK's
``ImageSeriesReader``).

Every scan is presented the same way (:class:`Scan`): voxel data indexed like nibabel, spatial axes ``(x, y[, z])``
first and channels last, and a 4x4 voxel-to-world affine in RAS+ millimetres (the NIfTI convention; ITK's LPS
geometry is converted by negating the first two rows).

Outputs (label maps, class probabilities) are written atomically in the format the target's suffix names, with the
input's own geometry, and every written file's header is read back and compared with the input before it gets its
final name: a file on disk under the final name always sits on the input's grid.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path

SCAN_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
PROBABILITY_SCALE = 65535  # probabilities are stored as uint16 * 1/65535 (NIfTI-1 has no float16)
_ITK_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO"}
_SUPPORTED = "NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd) or a folder holding one DICOM series"

# Tolerances of the read-back check. NIfTI-1 stores the sform as float32, so affines also get a relative tolerance
# a few float32 roundings wide (1.5e-5 mm at 250 mm from the origin); ITK formats store doubles in full.
_AFFINE_ATOL = 1e-5
_AFFINE_RTOL = 1e-6
_ITK_ATOL = 1e-6
# DICOM slices must lie on the reconstructed grid within this fraction of the slice spacing.
_SLICE_TOL = 0.1

# What atomic_path (".<stem>.XXXX.part<suffix>") and the .mhd writer (".<stem>.XXXX.part/") leave behind when killed.
_TEMPORARY = re.compile(r"^\..+\.part(\..+)?$")


def quantise_probabilities(probs: np.ndarray) -> np.ndarray:
    """Class probabilities ``(*spatial, K)`` (any float type) as uint16 in units of 1/65535. Each voxel is
    renormalised to sum to 1 first (float16 inputs round each class a little); a voxel with no probability at all
    (outside a foreground crop) becomes background."""
    p = np.array(probs, dtype=np.float32)  # the one float32 copy; everything below works in place
    np.clip(p, 0, 1, out=p)
    total = p.sum(-1, keepdims=True)
    p[..., :1][total == 0] = 1.0
    total[total == 0] = 1.0
    p /= total
    p *= PROBABILITY_SCALE
    np.rint(p, out=p)
    return p.astype(np.uint16)


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


def output_name(path: str | os.PathLike[str], suffix: str = "") -> str:
    """The file name of an output for the scan at ``path``, in the scan's own format.

    ``"case.nii.gz"`` gives ``"case{suffix}.nii.gz"``, ``"a.mha"`` gives ``"a{suffix}.mha"``; a DICOM series folder
    ``"ser1"`` gives ``"ser1{suffix}.nii.gz"`` (outputs of DICOM series are NIfTI).

    Raises:
        DataError: ``path`` is neither a supported scan file name nor a folder.
    """
    p = Path(path)
    name = p.name or Path(path).resolve().name
    if p.is_dir():
        return f"{name}{suffix}.nii.gz"
    fmt = scan_suffix(p)
    if fmt is None:
        raise DataError(f"{path}: not a supported scan; expected {_SUPPORTED}")
    return f"{name[: -len(fmt)]}{suffix}{name[-len(fmt):]}"


@dataclass
class Scan:
    """A scan's voxels and geometry.

    Attributes:
        path: the file or DICOM folder it was read from.
        kind: ``"nifti"``, ``"itk"`` (MetaImage, NRRD) or ``"dicom"``.
        array: voxel data indexed like nibabel, spatial axes ``(x, y[, z])`` first, channels (or a 4th ITK axis)
            last.
        affine: 4x4 voxel-to-world matrix in RAS+ millimetres.
        header: what writing needs: for NIfTI the nibabel image as loaded (its header holds the qform, sform and
            their codes); for ITK and DICOM a dict of the spatial geometry in ITK's LPS convention, ``origin``,
            ``spacing``, ``direction`` (row-major, flat) and ``size`` (x, y[, z]) (DICOM adds ``series_id``).
    """

    path: Path
    kind: str
    array: np.ndarray
    affine: np.ndarray
    header: Any

    @property
    def spatial_dims(self) -> int:
        """2 for a 2D image, else 3."""
        if isinstance(self.header, dict):
            return len(self.header["size"])
        return 2 if self.array.ndim == 2 else 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The voxel grid's shape, ``(x, y[, z])``."""
        return tuple(int(s) for s in self.array.shape[: self.spatial_dims])


# --------------------------------------------------------------------------------------------------------- reading


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
        raise DataError(f"{path}: not a supported scan; expected {_SUPPORTED}{hint}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt in _NIFTI_SUFFIXES:
        return _read_nifti(path)
    return _read_itk(path, fmt)


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
        raise DataError(f"{path}: not a NIfTI image; expected {_SUPPORTED}")
    img.uncache()
    return Scan(path=path, kind="nifti", array=array, affine=np.array(img.affine, dtype=float), header=img)


def _read_itk(path: Path, fmt: str) -> Scan:
    if fmt == ".mhd":
        _check_mhd_data_file(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO(_ITK_IO[fmt])
        reader.SetFileName(str(path))
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise _cannot_read(path, "the image", exc) from None
    return _from_itk(path, "itk", image, array)


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
        raise DataError(f"{folder}: folder holds no DICOM files; expected {_SUPPORTED}")
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
    return Scan(path=path, kind=kind, array=array, affine=_itk_affine(header), header=header)


def _itk_affine(geometry: dict[str, Any]) -> np.ndarray:
    """RAS+ voxel-to-world 4x4 matrix of an ITK (LPS) geometry of 2 or 3 dimensions."""
    n = len(geometry["origin"])
    direction = np.asarray(geometry["direction"], dtype=float).reshape(n, n)
    affine = np.eye(4)
    affine[:n, :n] = direction * np.asarray(geometry["spacing"], dtype=float)
    affine[:n, 3] = geometry["origin"]
    affine[:2] *= -1  # LPS -> RAS
    return affine


def _itk_geometry(scan: Scan) -> dict[str, Any]:
    """The scan's grid as ITK geometry (LPS): the ITK header as read, or derived from a NIfTI affine."""
    if isinstance(scan.header, dict):
        return {k: scan.header[k] for k in ("origin", "spacing", "direction", "size")}
    n = scan.spatial_dims
    lps = scan.affine.copy()
    lps[:2] *= -1
    spacing = np.linalg.norm(lps[:n, :n], axis=0)
    return {
        "origin": tuple(float(v) for v in lps[:n, 3]),
        "spacing": tuple(float(v) for v in spacing),
        "direction": tuple(float(v) for v in (lps[:n, :n] / spacing).ravel()),
        "size": scan.spatial_shape,
    }


# --------------------------------------------------------------------------------------------------------- writing


def write_labels(scan: Scan, labels: np.ndarray, target: str | os.PathLike[str]) -> Path:
    """Write a label map on the scan's grid, atomically, in the format ``target``'s suffix names.

    NIfTI from a NIfTI scan keeps its header's qform, sform and their codes; NIfTI from an ITK or DICOM scan gets
    the scan's RAS affine as sform and qform, code 1. MetaImage and NRRD get the scan's origin, spacing and
    direction (``.mha`` and ``.nrrd`` compressed; ``.mhd`` writes its ``.raw`` next to it). Writing the same labels
    twice gives identical bytes.

    Args:
        scan: the scan the labels belong to.
        labels: ``scan.spatial_shape``, uint8 (bool or other integers in 0..255 are converted).
        target: output file, ending in one of :data:`SCAN_SUFFIXES`.

    Returns:
        ``target`` as a path.

    Raises:
        DataError: the labels' shape is not the scan's spatial shape, or the written file's header does not match
            the scan's geometry (then nothing is left at ``target``).
        ValueError: ``target`` has no supported suffix, or ``labels`` do not fit uint8.
    """
    target = Path(target)
    fmt = _target_format(target)
    labels = _as_uint8(np.asarray(labels))
    if labels.shape != scan.spatial_shape:
        raise DataError(f"labels for {scan.path} have shape {labels.shape}, expected the scan's spatial shape "
                        f"{scan.spatial_shape}")
    if fmt in _NIFTI_SUFFIXES:
        _write_nifti(scan, labels, target, fmt, slope=1.0)
    elif fmt == ".mhd":
        _write_mhd(scan, labels, target)
    else:
        with atomic_path(target, suffix=fmt) as tmp:
            _write_itk(scan, labels, tmp, fmt)
            _verify_itk(scan, tmp, target)
    return target


def write_probabilities(scan: Scan, probs: np.ndarray, target: str | os.PathLike[str]) -> Path:
    """Write class probabilities on the scan's grid as NIfTI, atomically.

    Stored as uint16 with ``scl_slope = 1/PROBABILITY_SCALE`` (NIfTI-1 has no float16; readers get floats back,
    resolution 1.5e-5), with the scan's affine (a NIfTI scan's
    own qform, sform and codes).

    Args:
        scan: the scan the probabilities belong to.
        probs: ``(*scan.spatial_shape, K)`` floats in [0, 1], class axis last (values outside are clipped).
        target: output file ending in ``.nii.gz`` or ``.nii``.

    Returns:
        ``target`` as a path.

    Raises:
        DataError: wrong shape, NaN or infinite values, or geometry drift in the written file.
        ValueError: ``target`` is not a NIfTI file name.
    """
    target = Path(target)
    fmt = _target_format(target)
    if fmt not in _NIFTI_SUFFIXES:
        raise ValueError(f"probabilities are written as NIfTI; {target} must end in .nii.gz or .nii")
    probs = np.asarray(probs)
    nd = scan.spatial_dims
    if probs.ndim != nd + 1 or probs.shape[:nd] != scan.spatial_shape:
        raise DataError(f"probabilities for {scan.path} have shape {probs.shape}, expected "
                        f"{(*scan.spatial_shape, 'K')} (class axis last)")
    if not np.all(np.isfinite(probs)):
        raise DataError(f"probabilities for {scan.path} hold NaN or infinite values; {target} not written")
    quantised = quantise_probabilities(probs)
    _write_nifti(scan, quantised, target, fmt, slope=1.0 / PROBABILITY_SCALE)
    return target


def _target_format(target: Path) -> str:
    fmt = scan_suffix(target)
    if fmt is None:
        raise ValueError(f"cannot tell the output format of {target}; use one of {', '.join(SCAN_SUFFIXES)}")
    return fmt


def _as_uint8(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == np.uint8:
        return labels
    if labels.dtype == bool or (np.issubdtype(labels.dtype, np.integer)
                                and (labels.size == 0 or (labels.min() >= 0 and labels.max() <= 255))):
        return labels.astype(np.uint8)
    raise ValueError(f"labels must be uint8 (or integers in 0..255), got {labels.dtype}")


def _drift(target: Path, scan: Scan, what: str, written: Any = None, expected: Any = None) -> DataError:
    detail = "" if written is None else f" (written {_show(written)}, expected {_show(expected)})"
    return DataError(f"geometry drift writing {target}: {what} differs from {scan.path}{detail}; nothing was "
                     "written")


def _show(value: Any) -> str:
    return str(np.round(np.asarray(value, dtype=float), 6).tolist())


def _write_nifti(scan: Scan, data: np.ndarray, target: Path, fmt: str, slope: float) -> None:
    if scan.kind == "nifti":
        ref: nib.Nifti1Image = scan.header
        # The header as read carries the qform (quaternion + pixdim) and sform verbatim.
        img = type(ref)(data, ref.header.get_best_affine(), header=ref.header)
        hdr = img.header
        hdr.extensions.clear()  # they describe the input (DICOM tags, AFNI attributes), not this output
        hdr["cal_min"] = hdr["cal_max"] = 0
        hdr.set_intent("none")
    else:
        img = nib.Nifti1Image(data, scan.affine)
        img.set_sform(scan.affine, code=1)
        img.set_qform(scan.affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(slope, 0.0)
    with atomic_path(target, suffix=fmt) as tmp:
        nib.save(img, str(tmp))
        _verify_nifti(scan, tmp, target, data.shape)


def _verify_nifti(scan: Scan, written_path: Path, target: Path, shape: tuple[int, ...]) -> None:
    written = nib.load(str(written_path))
    hdr = written.header
    if tuple(written.shape) != tuple(shape):
        raise _drift(target, scan, "shape", written.shape, shape)
    if not np.allclose(written.affine, scan.affine, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
        raise _drift(target, scan, "affine", written.affine, scan.affine)
    if scan.kind == "nifti":
        ref = scan.header.header
        for form in ("qform", "sform"):
            code, want = int(hdr[f"{form}_code"]), int(ref[f"{form}_code"])
            if code != want:
                raise _drift(target, scan, f"{form} code", code, want)
            if not np.allclose(getattr(hdr, f"get_{form}")(), getattr(ref, f"get_{form}")(),
                               rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
                raise _drift(target, scan, form, getattr(hdr, f"get_{form}")(), getattr(ref, f"get_{form}")())
    else:
        codes = (int(hdr["qform_code"]), int(hdr["sform_code"]))
        if codes != (1, 1):
            raise _drift(target, scan, "qform/sform codes", codes, (1, 1))


def _write_itk(scan: Scan, labels: np.ndarray, path: Path, fmt: str) -> None:
    geometry = _itk_geometry(scan)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.T))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, str(path), useCompression=fmt != ".mhd", compressionLevel=-1, imageIO=_ITK_IO[fmt])


def _write_mhd(scan: Scan, labels: np.ndarray, target: Path) -> None:
    """A .mhd header names its data file (ElementDataFile), so both are written under their final names into a
    temporary folder next to the target, checked, then moved: the data file first, the header last."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=".part", dir=target.parent))
    try:
        header = tmp_dir / target.name
        _write_itk(scan, labels, header, ".mhd")
        _verify_itk(scan, header, target)
        for data_file in sorted(p for p in tmp_dir.iterdir() if p.name != target.name):
            os.replace(data_file, target.parent / data_file.name)
        os.replace(header, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp_dir)


def _verify_itk(scan: Scan, written_path: Path, target: Path) -> None:
    expected = _itk_geometry(scan)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written_path))
    reader.ReadImageInformation()
    written = {"origin": reader.GetOrigin(), "spacing": reader.GetSpacing(), "direction": reader.GetDirection(),
               "size": reader.GetSize()}
    if tuple(written["size"]) != tuple(expected["size"]):
        raise _drift(target, scan, "size", written["size"], expected["size"])
    for key in ("origin", "spacing", "direction"):
        if not np.allclose(written[key], expected[key], rtol=0, atol=_ITK_ATOL):
            raise _drift(target, scan, key, written[key], expected[key])
    # The ITK geometry must also be the scan's world geometry (catches a header that disagrees with the affine, or
    # an oblique 2D NIfTI slice that 2D ITK geometry cannot hold).
    if not np.allclose(_itk_affine(written), scan.affine, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
        raise _drift(target, scan, "voxel-to-world geometry", _itk_affine(written), scan.affine)


# ----------------------------------------------------------------------------------------------------- clean-up


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


def nifti_reference(path: str | os.PathLike[str]) -> Scan:
    """A NIfTI scan's geometry without its voxels (the data stay on disk, unread): what writing on its grid needs."""
    path = Path(path)
    img = nib.load(str(path))
    return Scan(path=path, kind="nifti", array=img.dataobj, affine=np.array(img.affine, dtype=float), header=img)


def write_like(reference: str | os.PathLike[str], data: np.ndarray, target: str | os.PathLike[str]) -> Path:
    """Write labels on a NIfTI file's grid (:func:`write_labels` with :func:`nifti_reference`)."""
    return write_labels(nifti_reference(reference), data, target)


def write_probabilities_like(reference: str | os.PathLike[str], probs: np.ndarray,
                             target: str | os.PathLike[str]) -> Path:
    """Write class probabilities ``(K, *spatial)`` on a NIfTI file's grid, class axis last
    (:func:`write_probabilities` with :func:`nifti_reference`)."""
    return write_probabilities(nifti_reference(reference), np.moveaxis(probs, 0, -1), target)
