"""Geometry of NIfTI images (writing lives in :mod:`pipeline.io.scan`)."""

from __future__ import annotations

import nibabel as nib
import numpy as np


def spatial_ndim(img: nib.spatialimages.SpatialImage) -> int:
    """Spatial axes of a scan: 2 for a 2D image, else 3 (a 4th axis holds channels)."""
    return 2 if len(img.shape) == 2 else 3


def spacing_of(img: nib.spatialimages.SpatialImage) -> list[float]:
    """Voxel size in mm per spatial axis of a NIfTI image (see :func:`spacing_from_affine`)."""
    return spacing_from_affine(img.affine, spatial_ndim(img))


def spacing_from_affine(affine: np.ndarray, spatial_dims: int = 3) -> list[float]:
    """Voxel size in mm per spatial axis, from the affine's column norms (right for oblique scans too, where the
    header zooms and the affine can disagree)."""
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)][:spatial_dims]
