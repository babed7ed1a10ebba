"""Geometry and random fields of the synthetic prostate generator (:mod:`pipeline.data.synthetic_prostate`).

Every function that takes a :class:`numpy.random.Generator` draws from it in a fixed order, so a case stays a
deterministic function of its seed; changing the order or the number of draws changes every generated case.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["ellipsoid_distance", "legendre_bias", "quantize_affine", "random_affine", "rotation", "smooth_field"]


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (need not be unit) by ``angle`` radians (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def quantize_affine(affine: np.ndarray) -> np.ndarray:
    """Round ``affine`` to what a NIfTI qform can hold exactly, so the written qform and sform equal it."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    return np.asarray(header.get_qform(), dtype=np.float64)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma_mm: float,
                  spacing: np.ndarray) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ~``sigma_mm`` (voxel grid)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    sigma = [max(sigma_mm / float(s), 0.3) for s in spacing]
    field = ndimage.gaussian_filter(noise, sigma=sigma, mode="reflect")
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    return field


def legendre_bias(rng: np.random.Generator, shape: tuple[int, int, int], degree: int = 3,
                   strength: float = 0.12) -> np.ndarray:
    """Smooth log bias field: sum of products of Legendre polynomials up to total ``degree``, random coefficients."""
    coords = [np.linspace(-1.0, 1.0, n, dtype=np.float64) for n in shape]
    polys = [np.polynomial.legendre.legvander(c, degree) for c in coords]  # (n, degree+1)
    coeffs = np.zeros((degree + 1,) * 3)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                if i + j + k == 0:
                    continue
                coeffs[i, j, k] = rng.normal(0.0, strength / (1.0 + 0.5 * (i + j + k - 1)))
    field = np.einsum("ai,bj,ck,ijk->abc", polys[0], polys[1], polys[2], coeffs, optimize=True)
    return field.astype(np.float32)


def ellipsoid_distance(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid centred at the origin (negative inside)."""
    qx, qy, qz = x / a, y / b, z / c
    r = np.sqrt(qx * qx + qy * qy + qz * qz)
    grad = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2)
    return (r - 1.0) * r / np.maximum(grad, 1e-6)


def random_affine(rng: np.random.Generator, shape: tuple[int, int, int],
                   spacing: tuple[float, float, float]) -> np.ndarray:
    flips = np.diag([-1.0, -1.0, 1.0]) if rng.random() < 0.5 else np.eye(3)  # LPS-like or RAS-like
    if rng.random() < 0.75:
        angle = math.radians(rng.uniform(1.0, 8.0))
        rot = rotation(rng.normal(size=3), angle)
    else:
        rot = np.eye(3)
    direction = rot @ flips
    linear = direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    fov_centre_world = rng.uniform(-40.0, 40.0, size=3)
    centre_index = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = fov_centre_world - linear @ centre_index
    return quantize_affine(affine)
