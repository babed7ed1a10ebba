"""Writing predictions on a scan's own grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import PipelineError
from pipeline.io.atomic import atomic_path


def spatial_ndim(img: nib.spatialimages.SpatialImage) -> int:
    """Spatial axes of a scan: 2 for a 2D image, else 3 (a 4th axis holds channels)."""
    return 2 if len(img.shape) == 2 else 3


def spacing_of(img: nib.spatialimages.SpatialImage) -> list[float]:
    """Voxel size in mm per spatial axis, from the affine's column norms (right for oblique scans too, where the
    header zooms and the affine can disagree)."""
    return [float(v) for v in np.linalg.norm(img.affine[:3, :3], axis=0)][: spatial_ndim(img)]


PROBABILITY_SCALE = 65535  # probabilities are stored as uint16 * 1/65535 (NIfTI-1 has no float16)


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


def write_probabilities(reference: str | Path, probs: np.ndarray, target: str | Path) -> None:
    """Write class probabilities ``(K, *spatial)`` as ``(*spatial, K)`` uint16 with ``scl_slope = 1/65535``: half
    the size of float32, resolution 1.5e-5, read back as floats by any NIfTI reader."""
    write_like(reference, quantise_probabilities(np.moveaxis(probs, 0, -1)), target, slope=1.0 / PROBABILITY_SCALE)


def write_like(reference: str | Path, data: np.ndarray, target: str | Path, slope: float = 1.0) -> None:
    """Write ``data`` (spatial shape of ``reference``) with the reference's affine, qform, sform and their codes.

    ``slope`` is stored as the NIfTI ``scl_slope`` (readers get ``data * slope``), e.g. for quantised probabilities.

    Raises:
        PipelineError: the shape differs from the reference's spatial shape, or the written file's geometry does
            not match the reference (never a silently wrong file).
    """
    ref = nib.load(str(reference))
    spatial = tuple(ref.shape[: spatial_ndim(ref)])
    if tuple(data.shape[: len(spatial)]) != spatial:
        raise PipelineError(f"prediction for {reference} has shape {tuple(data.shape)}, expected {spatial}")
    header = ref.header.copy()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, ref.affine, header=header)
    img.header.set_slope_inter(slope, 0.0)
    img.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
    img.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    with atomic_path(target) as tmp:
        nib.save(img, str(tmp))
        written = nib.load(str(tmp))
        if written.shape != data.shape or not np.allclose(written.affine, ref.affine, atol=1e-5):
            raise PipelineError(f"geometry drift writing {target}: affine or shape differs from {reference}")
