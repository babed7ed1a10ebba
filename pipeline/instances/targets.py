"""Training targets derived from an instance label map (0 background, one id per object), for the instance-aware
methods of ``instances.method``:

* ``three_class``: :func:`three_class_labels` (0 background, 1 interior, 2 touching boundary) and
  :func:`border_weight_map`, the pixel weights of the U-Net paper (Ronneberger et al. 2015, eq. 2):
  ``w(x) = w_c(x) + w0 · exp(-(d1(x) + d2(x))² / 2σ²)``, with ``w_c`` balancing the class frequencies and ``d1``,
  ``d2`` the distances to the nearest and second-nearest object, so the narrow seams between touching or nearly
  touching objects weigh up to ``w0 + 1`` times a typical pixel.
* ``distance``: :func:`normalised_distance`, each object's Euclidean distance to its own border divided by its
  maximum (1 at the object's centre, towards 0 at its border, 0 in the background): scale-free, so one seed
  threshold serves small and large nuclei alike.

Distances are in pixels of the finest axis: with an anisotropic ``spacing`` a step along a coarser axis counts
``spacing[axis] / min(spacing)`` pixels (3D stacks with thicker z sections).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["border_weight_map", "normalised_distance", "object_slices", "three_class_labels"]

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def _sampling(ndim: int, spacing: Sequence[float] | None) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.asarray(spacing, dtype=np.float64)[:ndim]
    return s / s.min()


def object_slices(instances: np.ndarray, margin: Sequence[int] | int = 0
                  ) -> list[tuple[int, tuple[slice, ...]]]:
    """``(id, bounding box grown by margin voxels per axis, clipped to the image)`` for every object present."""
    margins = [margin] * instances.ndim if isinstance(margin, int) else list(margin)
    out = []
    for i, box in enumerate(ndimage.find_objects(instances.astype(np.int64, copy=False)), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                      for s, m, n in zip(box, margins, instances.shape, strict=True))
        out.append((i, grown))
    return out


def three_class_labels(instances: np.ndarray, boundary_px: int = 2,
                       spacing: Sequence[float] | None = None) -> np.ndarray:
    """0 background, 1 object interior, 2 *touching boundary*: the object's pixels within ``boundary_px`` (in
    finest-axis pixels) of a pixel of another object, so both sides of every seam between touching objects, and of
    gaps narrower than ``boundary_px``, are class 2. Isolated objects are all interior.

    Args:
        instances: integer label map ``(x, y[, z])``.
        boundary_px: half-width of the seam, in pixels of the finest axis (≥ 1).
        spacing: voxel sizes (any unit) for anisotropic data.
    """
    inst = np.asarray(instances)
    out = np.where(inst > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    if not (inst > 0).any():
        return out
    sampling = _sampling(inst.ndim, spacing)
    # Footprint: the ball of radius boundary_px in physical (finest-pixel) units.
    # ... and always the face neighbours, so objects touching along an axis coarser than boundary_px still meet.
    half = [max(1, int(np.floor(boundary_px / s))) for s in sampling]
    steps = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    ball = sum((g * s) ** 2 for g, s in zip(steps, sampling, strict=True)) <= boundary_px ** 2 + 1e-9
    ball |= sum(np.abs(g) for g in steps) <= 1
    as_int = inst.astype(np.int64)
    big = np.iinfo(np.int64).max
    hi = ndimage.maximum_filter(as_int, footprint=ball, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(as_int > 0, as_int, big), footprint=ball, mode="constant", cval=big)
    fg = as_int > 0
    seam = fg & ((hi != as_int) | ((lo != as_int) & (lo != big)))
    out[seam] = BOUNDARY
    return out


def border_weight_map(instances: np.ndarray, labels: np.ndarray, w0: float = 10.0, sigma_px: float = 5.0,
                      spacing: Sequence[float] | None = None, class_balance: bool = True) -> np.ndarray:
    """The U-Net paper's weight map ``w_c(x) + w0 · exp(-(d1 + d2)² / 2σ²)`` (float32, same shape).

    ``w_c`` gives every class of ``labels`` the same total weight (``N / (K · N_c)`` over the classes present;
    1 everywhere with ``class_balance=False``); ``d1`` and ``d2`` are the distances (finest-axis pixels) to the
    nearest and the second-nearest object, 0 inside an object for its own (as in the paper, the term is defined
    for every pixel; it only matters where two objects are near). Each object's distance is computed only in its
    bounding box grown by ``4σ``, beyond which the term is below ``exp(-8) ≈ 3·10⁻⁴`` of ``w0``.
    """
    inst = np.asarray(instances)
    lab = np.asarray(labels)
    if class_balance:
        classes, counts = np.unique(lab, return_counts=True)
        per = {int(c): lab.size / (len(classes) * n) for c, n in zip(classes, counts, strict=True)}
        weight = np.zeros(lab.shape, np.float32)
        for c, w in per.items():
            weight[lab == c] = w
    else:
        weight = np.ones(lab.shape, np.float32)
    if w0 <= 0 or not (inst > 0).any():
        return weight
    sampling = _sampling(inst.ndim, spacing)
    reach = 4.0 * sigma_px
    d1 = np.full(inst.shape, np.inf, np.float32)
    d2 = np.full(inst.shape, np.inf, np.float32)
    for i, box in object_slices(inst, [int(np.ceil(reach / s)) for s in sampling]):
        local = ndimage.distance_transform_edt(inst[box] != i, sampling=sampling).astype(np.float32)
        a, b = d1[box], d2[box]
        b[...] = np.minimum(b, np.maximum(a, local))
        a[...] = np.minimum(a, local)
    total = d1 + d2
    near = np.isfinite(total)
    weight[near] += np.float32(w0) * np.exp(-(total[near] ** 2) / np.float32(2.0 * sigma_px ** 2))
    return weight


def normalised_distance(instances: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Each object's distance to its own border (the nearest pixel not of the object, finest-axis pixels) divided
    by its maximum: float32 in ``(0, 1]`` on objects, 0 in the background."""
    inst = np.asarray(instances)
    out = np.zeros(inst.shape, np.float32)
    sampling = _sampling(inst.ndim, spacing)
    for i, box in object_slices(inst, 1):
        mask = inst[box] == i
        d = ndimage.distance_transform_edt(mask, sampling=sampling)
        peak = float(d.max())
        if peak > 0:
            out[box][mask] = (d[mask] / peak).astype(np.float32)
    return out
