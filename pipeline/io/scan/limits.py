"""What a scan's header must satisfy before its voxels are read: data files inside the header's folder, a voxel
budget, a file long enough for what the header declares, real voxel types and a usable geometry.

Every check here looks at a header only (nothing is decompressed), so a refusal is fast and small whatever the
file claims. Each raises one :class:`~pipeline.errors.DataError` that names the file, the field, its value, the
rule and what to do.

- **Confinement** (:func:`confined`): a header (``.mhd``/``.mha`` ``ElementDataFile``, NRRD ``data file``) may
  name data files only in its own folder or below, symbolic links followed; files of a DICOM series folder must
  not be links to files outside the folder. The scan a user names is trusted; a path written inside it is not.
- **Voxel budget** (:func:`check_voxel_budget`): voxels times channels at most ``max_voxels``
  (:data:`DEFAULT_MAX_VOXELS`; ``pipeline infer --max-voxels``, ``data.max_voxels`` in a workflow).
- **File size** (:func:`check_data_size`): an uncompressed file shorter than its declared data is truncated.
- **Voxel type** (:func:`refuse_voxel_type`): complex, bit, colour (RGB) and extended-precision voxels are refused
  (the network takes real scalars; complex data would lose their imaginary part).
- **Geometry** (:func:`check_axes`, :func:`check_spacing`): finite values, positive spacing, axes that span the
  grid (a singular matrix has no inverse, and every resampling or orientation step needs one).

A file that a reader fails on anyway is truncated or corrupt: :func:`cannot_read` words that error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.errors import DataError

DEFAULT_MAX_VOXELS = 2**28  # 256 Mi voxels: 1 GiB of float32, larger than a whole-body CT at 0.5 mm

RAISE_BUDGET = "pipeline infer --max-voxels N, or data.max_voxels in the workflow"

# The smallest singular value of a grid's axes relative to the largest: below it, the axes do not span the grid.
_CONDITION = 1e-6


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def value_text(values: npt.ArrayLike) -> str:
    """Numbers as a header shows them: ``(0, 1.5, nan)``."""
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.asarray(values, dtype=float).ravel()) + ")"


def check_voxel_budget(path: Path, shape: Sequence[int], channels: int, max_voxels: int | None) -> None:
    """Refuse a header that declares more than ``max_voxels`` voxels (times channels).

    Args:
        path: the scan (file or DICOM folder), named in the message.
        shape: the declared grid (channel axes of NIfTI included).
        channels: components per voxel beyond ``shape`` (ITK vector images, DICOM samples per pixel), else 1.
        max_voxels: the budget (None: none).
    """
    if max_voxels is None:
        return
    count = int(np.prod([int(s) for s in shape], dtype=object)) * int(channels)  # Python ints: no overflow
    if count > max_voxels:
        per = f" x {channels} channels" if channels > 1 else ""
        raise DataError(f"{path}: the header declares {shape_text(shape)}{per} = {count} voxels, more than the "
                        f"budget of {max_voxels} voxels read without asking (a wrong header or a decompression "
                        f"bomb would exhaust memory); if the scan really is this large, raise the budget: "
                        f"{RAISE_BUDGET}")


def check_data_size(path: Path, need: int, have: int, declared: str, holder: str = "the file") -> None:
    """Refuse an uncompressed data file shorter than what its header declares (``need`` bytes, ``have`` present).

    Args:
        path: the header, named first in the message.
        declared: what the header declares, e.g. ``"64x64x30 int16 voxels"``.
        holder: where the data are: ``"the file"``, ``"the file after its header"``, ``"its data file x.raw"``.
    """
    if have < need:
        raise DataError(f"{path}: truncated: the header declares {declared} ({need} bytes), but {holder} holds only "
                        f"{max(have, 0)}; re-export or re-copy the scan")


def refuse_voxel_type(path: Path, field: str, kind: str) -> None:
    """Refuse a voxel type the network cannot take, saying what to convert it to.

    Args:
        field: the header field and its value, e.g. ``"datatype 32 (complex64)"``.
        kind: ``complex``, ``colour``, ``bit``, ``extended`` or ``unknown``.
    """
    what = {
        "complex": "complex voxels (segmenting them would drop the imaginary part); save the magnitude, or the real "
                   "and imaginary parts as two channels, as a real-valued scan first",
        "colour": "colour (RGB) voxels; convert the scan to grey values (or to one channel per colour, channels "
                  "last) first",
        "bit": "1-bit voxels, which nibabel cannot read; save the scan as uint8 first",
        "extended": "extended-precision floats, which PyTorch cannot take; save the scan as float32 or float64 "
                    "first",
        "unknown": "an unknown voxel type; re-export the scan with a standard type (e.g. int16 or float32)",
    }[kind]
    raise DataError(f"{path}: {field}: {what}")


def axes_problem(axes: npt.ArrayLike) -> str | None:
    """Why a matrix whose columns are a grid's axes (3xN, N = 2 or 3) cannot be a voxel-to-world map, or None."""
    axes = np.asarray(axes, dtype=float)
    if not np.all(np.isfinite(axes)):
        return "holds NaN or infinite values"
    if not np.any(axes):
        return "is all zero"
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms == 0):
        zero = ", ".join(str(i + 1) for i in np.flatnonzero(norms == 0))
        return f"is singular (axis {zero} has length 0)"
    s = np.linalg.svd(axes / norms, compute_uv=False)
    if s[-1] < _CONDITION * s[0]:
        return "is singular (its axes are parallel or lie in one plane)"
    return None


def check_axes(path: Path, field: str, axes: npt.ArrayLike, origin: npt.ArrayLike | None, fix: str) -> None:
    """Refuse a voxel-to-world matrix that is not finite and invertible, or a non-finite origin.

    Args:
        field: the header fields it comes from, e.g. ``"sform (sform_code 1: srow_x/y/z)"``.
        axes: 3xN or NxN matrix, one column per spatial axis.
        fix: what to do, ending the message.
    """
    problem = axes_problem(axes)
    if problem is not None:
        raise DataError(f"{path}: {field} = {value_text(axes)} {problem}: a scan needs a finite, invertible "
                        f"voxel-to-world matrix; {fix}")
    if origin is not None and not np.all(np.isfinite(np.asarray(origin, dtype=float))):
        raise DataError(f"{path}: {field}: the origin {value_text(origin)} is not finite; {fix}")


def check_spacing(path: Path, field: str, spacing: npt.ArrayLike, fix: str) -> None:
    """Refuse a voxel size that is zero, negative or not finite."""
    values = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DataError(f"{path}: {field} = {value_text(values)}: voxel sizes must be positive and finite; {fix}")


def inside(folder: Path, target: Path) -> bool:
    """Whether ``target`` (resolved, links followed) is ``folder`` (resolved) or below it."""
    return Path(os.path.realpath(target)).is_relative_to(Path(os.path.realpath(folder)))


def confined(header: Path, field: str, name: str) -> Path:
    """The data file that ``header`` names in ``field``, refused when it resolves outside the header's folder.

    Relative names start from the header's folder (as ITK reads them); absolute names are taken as they are;
    symbolic links are followed, so a link in the folder that points elsewhere counts as elsewhere.

    Returns:
        The path as the reader will open it (``header.parent / name``).

    Raises:
        DataError: naming the header, the field, the path, where it leads and the rule.
    """
    path = header.parent / name
    if not inside(header.parent, path):
        resolved = os.path.realpath(path)
        via = f" (resolves to {resolved})" if str(resolved) != os.path.normpath(path) else ""
        raise DataError(f"{header}: {field} names {name}{via}, outside the header's folder "
                        f"{os.path.realpath(header.parent)}: a header may name data files only in its own folder or "
                        "below (symbolic links count as where they point); put the data file next to the header and "
                        "name it relative to it")
    return path


def cannot_read(path: Path, what: str, exc: BaseException) -> DataError:
    """The error for a file a reader failed on (``exc``, from nibabel or ITK): truncated or corrupt."""
    return DataError(f"{path}: cannot read {what} (truncated or corrupt file: {error_reason(exc)}); "
                     "re-export or re-copy it")


def error_reason(exc: BaseException) -> str:
    """One line out of an exception; ITK's messages span several lines with source locations."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "ERROR:" in ln:  # "ITK ERROR: MetaImageIO(0x...): <what went wrong>"
            msg = ln.split("): ", 1)[1] if "): " in ln else ln.split("ERROR:", 1)[1].strip()
            if msg.endswith(":") and i + 1 < len(lines):  # NRRD: the innermost cause comes last
                msg = f"{msg} {lines[-1].removeprefix('[nrrd] ')}"
            return msg
    return lines[0] if lines else type(exc).__name__


__all__ = [
    "DEFAULT_MAX_VOXELS",
    "RAISE_BUDGET",
    "axes_problem",
    "cannot_read",
    "check_axes",
    "check_data_size",
    "check_spacing",
    "check_voxel_budget",
    "confined",
    "error_reason",
    "inside",
    "refuse_voxel_type",
    "shape_text",
    "value_text",
]
