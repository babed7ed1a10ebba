"""Writing label maps and class probabilities on exactly a scan's grid, atomically, each written file's header
read back and compared with the scan before the file gets its final name (TIFF and PNG label maps:
:mod:`~pipeline.io.scan.tiff`, :mod:`~pipeline.io.scan.png`; probabilities are NIfTI whatever the scan's format)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from pipeline.errors import DataError
from pipeline.io.atomic import (
    atomic_path,
    disk_full,
    make_folder,
    make_temporary_folder,
    ran_out_of_space,
    write_faults,
)
from pipeline.io.scan.geometry import Scan, drift_error, itk_affine, itk_geometry
from pipeline.io.scan.names import ITK_IO, NIFTI_SUFFIXES, PNG_SUFFIXES, TIFF_SUFFIXES, target_format
from pipeline.io.scan.png import write_png
from pipeline.io.scan.read import nifti_reference
from pipeline.io.scan.tiff import write_tiff

PROBABILITY_SCALE = 65535  # probabilities are stored as uint16 * 1/65535 (NIfTI-1 has no float16)

# Tolerances of the read-back check. NIfTI-1 stores the sform as float32, so affines also get a relative tolerance
# a few float32 roundings wide (1.5e-5 mm at 250 mm from the origin); ITK formats store doubles in full.
_AFFINE_ATOL = 1e-5
_AFFINE_RTOL = 1e-6
_ITK_ATOL = 1e-6


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


def write_labels(scan: Scan, labels: np.ndarray, target: str | os.PathLike[str]) -> Path:
    """Write a label map on the scan's grid, atomically, in the format ``target``'s suffix names.

    NIfTI from a NIfTI scan keeps its header's qform, sform and their codes; NIfTI from an ITK, DICOM, TIFF or PNG
    scan gets the scan's RAS affine as sform and qform, code 1. MetaImage and NRRD get the scan's origin, spacing
    and direction (``.mha`` and ``.nrrd`` compressed; ``.mhd`` writes its ``.raw`` next to it). TIFF and PNG get
    the scan's pixel size, stated as the input stated it (OME ``PhysicalSize``, ImageJ or TIFF resolution, PNG
    ``pHYs``; :mod:`~pipeline.io.scan.microscopy`). Writing the same labels twice gives identical bytes.

    The stored type is the smallest that holds the largest id (:func:`label_array`): uint8 up to 255, else uint16,
    else uint32 (instance maps, one id per object, often exceed 255); PNG stops at uint16, an ImageJ TIFF stores
    ids above 65535 as float32.

    Args:
        scan: the scan the labels belong to.
        labels: ``scan.spatial_shape``, bool or non-negative integers (up to 2**32 - 1).
        target: output file, ending in one of :data:`SCAN_SUFFIXES`.

    Returns:
        ``target`` as a path.

    Raises:
        DataError: the labels' shape is not the scan's spatial shape, the format cannot hold them (a PNG with more
            than 65535 ids or a 3D map) or the written file's header does not match the scan's geometry (then
            nothing is left at ``target``).
        ValueError: ``target`` has no supported suffix, or ``labels`` are not non-negative integers that fit uint32.
    """
    target = Path(target)
    fmt = target_format(target)
    labels, largest = label_array(np.asarray(labels))
    if labels.shape != scan.spatial_shape:
        raise DataError(f"labels for {scan.path} have shape {labels.shape}, expected the scan's spatial shape "
                        f"{scan.spatial_shape}")
    if fmt in NIFTI_SUFFIXES:
        _write_nifti(scan, labels, target, fmt, slope=1.0)
    elif fmt in TIFF_SUFFIXES:
        write_tiff(scan, labels, largest, target, fmt)
    elif fmt in PNG_SUFFIXES:
        write_png(scan, labels, largest, target, fmt)
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
    fmt = target_format(target)
    if fmt not in NIFTI_SUFFIXES:
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


def write_like(reference: str | os.PathLike[str], data: np.ndarray, target: str | os.PathLike[str]) -> Path:
    """Write labels on a NIfTI file's grid (:func:`write_labels` with :func:`nifti_reference`)."""
    return write_labels(nifti_reference(reference), data, target)


def write_probabilities_like(reference: str | os.PathLike[str], probs: np.ndarray,
                             target: str | os.PathLike[str]) -> Path:
    """Write class probabilities ``(K, *spatial)`` on a NIfTI file's grid, class axis last
    (:func:`write_probabilities` with :func:`nifti_reference`)."""
    return write_probabilities(nifti_reference(reference), np.moveaxis(probs, 0, -1), target)


def label_array(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """A label map in the smallest unsigned type that holds its largest id (uint8, uint16, uint32), and that id.

    Raises:
        ValueError: not bool or integers, a negative id, or one above 2**32 - 1.
    """
    if labels.dtype == bool:
        return labels.astype(np.uint8), int(labels.any())
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (uint8, uint16 or uint32 ids), got {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.uint8), 0
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > np.iinfo(np.uint32).max:
        raise ValueError(f"labels must be ids from 0 to {np.iinfo(np.uint32).max}, got {low}..{high}")
    dtype = np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32
    return (labels if labels.dtype == dtype else labels.astype(dtype)), high


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
        raise drift_error(target, scan, "shape", written.shape, shape)
    if not np.allclose(written.affine, scan.affine, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
        raise drift_error(target, scan, "affine", written.affine, scan.affine)
    if scan.kind == "nifti":
        ref = scan.header.header
        for form in ("qform", "sform"):
            code, want = int(hdr[f"{form}_code"]), int(ref[f"{form}_code"])
            if code != want:
                raise drift_error(target, scan, f"{form} code", code, want)
            if not np.allclose(getattr(hdr, f"get_{form}")(), getattr(ref, f"get_{form}")(),
                               rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
                raise drift_error(target, scan, form, getattr(hdr, f"get_{form}")(), getattr(ref, f"get_{form}")())
    else:
        codes = (int(hdr["qform_code"]), int(hdr["sform_code"]))
        if codes != (1, 1):
            raise drift_error(target, scan, "qform/sform codes", codes, (1, 1))


def _write_itk(scan: Scan, labels: np.ndarray, path: Path, fmt: str) -> None:
    geometry = itk_geometry(scan)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.T))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, str(path), useCompression=fmt != ".mhd", compressionLevel=-1, imageIO=ITK_IO[fmt])


def _write_mhd(scan: Scan, labels: np.ndarray, target: Path) -> None:
    """A .mhd header names its data file (ElementDataFile), so both are written under their final names into a
    temporary folder next to the target, checked, then moved: the data file first, the header last."""
    if not target.parent.is_dir():
        make_folder(target.parent)
    tmp_dir = make_temporary_folder(target.parent, f".{target.stem}.", ".part")  # mode 0o777 less the umask
    try:
        header = tmp_dir / target.name
        try:
            _write_itk(scan, labels, header, ".mhd")
        except Exception as exc:  # ITK reports a full disk as a RuntimeError without an errno
            if ran_out_of_space(exc, tmp_dir):
                raise disk_full(target) from exc
            raise
        _verify_itk(scan, header, target)
        for data_file in sorted(p for p in tmp_dir.iterdir() if p.name != target.name):
            with write_faults(target.parent / data_file.name, folder=False):
                os.replace(data_file, target.parent / data_file.name)
        with write_faults(target, folder=False):
            os.replace(header, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp_dir)


def _verify_itk(scan: Scan, written_path: Path, target: Path) -> None:
    expected = itk_geometry(scan)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written_path))
    reader.ReadImageInformation()
    written = {"origin": reader.GetOrigin(), "spacing": reader.GetSpacing(), "direction": reader.GetDirection(),
               "size": reader.GetSize()}
    if tuple(written["size"]) != tuple(expected["size"]):
        raise drift_error(target, scan, "size", written["size"], expected["size"])
    for key in ("origin", "spacing", "direction"):
        if not np.allclose(written[key], expected[key], rtol=0, atol=_ITK_ATOL):
            raise drift_error(target, scan, key, written[key], expected[key])
    # The ITK geometry must also be the scan's world geometry (catches a header that disagrees with the affine, or
    # an oblique 2D NIfTI slice that 2D ITK geometry cannot hold).
    if not np.allclose(itk_affine(written), scan.affine, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
        raise drift_error(target, scan, "voxel-to-world geometry", itk_affine(written), scan.affine)
