"""Checking a NIfTI scan's header before its voxels are read (:func:`check_nifti`).

The header is read as stored, without nibabel's silent repairs: a supported real voxel type, the voxel budget, a
file (or decompressed stream) long enough for the declared data, and a finite, invertible geometry with usable
voxel sizes (see :mod:`~pipeline.io.scan.limits` for the rules).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from pipeline.errors import DataError
from pipeline.io.scan.limits import (
    DEFAULT_MAX_VOXELS,
    cannot_read,
    check_axes,
    check_data_size,
    check_spacing,
    check_voxel_budget,
    refuse_voxel_type,
    shape_text,
    value_text,
)
from pipeline.io.scan.names import SUPPORTED, scan_suffix

# NIfTI datatype codes nibabel cannot read or the network cannot take (see refuse_voxel_type).
_NIFTI_REFUSED = {1: "bit", 32: "complex", 1792: "complex", 2048: "complex", 128: "colour", 2304: "colour",
                  1536: "extended", 0: "unknown", 255: "unknown"}
_GZIP_CHUNK = 1 << 20
_NIFTI_FIX = ("fix the header (or re-export the scan with a tool that writes a valid geometry, e.g. nibabel or "
              "SimpleITK)")


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
        raise cannot_read(path, "the NIfTI header", exc) from None
    if any(s < 0 for s in shape):
        raise DataError(f"{path}: dim = {shape}: the header declares a negative size; re-export the scan")
    check_voxel_budget(path, shape, 1, max_voxels)
    _check_nifti_size(path, raw, shape, dtype)
    _check_nifti_geometry(path, raw, shape)
    try:
        img = nib.load(str(path), mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for corrupt files
        raise cannot_read(path, "the NIfTI image", exc) from None
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
        raise cannot_read(path, "the NIfTI header", exc) from None
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    if len(head) < klass.template_dtype.itemsize or not sizes & {348, 540}:
        raise DataError(f"{path}: not a NIfTI image (no NIfTI header); expected {SUPPORTED}")
    try:
        return klass(head[: klass.template_dtype.itemsize], check=False)
    except Exception as exc:  # noqa: BLE001 - nibabel's header errors have several types
        raise cannot_read(path, "the NIfTI header", exc) from None


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
        raise cannot_read(path, "the NIfTI image", exc) from None
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


__all__ = ["check_nifti"]
