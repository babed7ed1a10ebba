"""Geometry of the synthetic nuclei generator (:mod:`pipeline.data.synthetic_cells`): shapes, clusters, raster.

Every function that takes a :class:`numpy.random.Generator` draws from it in a fixed order, so a case stays a
deterministic function of its seed; changing the order or the number of draws changes every generated case.
Positions and sizes are in micrometres in the field-of-view frame (pixel ``i`` covers ``[i, i + 1) * spacing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Nucleus", "neighbour_differs", "place_nuclei", "rasterise", "smooth_noise"]

# Semi-axis range (um) of the radius drawn log-uniformly, and the clip applied after elongation: 2D / 3D.
_RADIUS = {2: (3.2, 7.5), 3: (3.0, 6.0)}
_AXIS_CLIP = {2: (3.0, 9.0), 3: (2.5, 7.5)}
_CLUSTER_SIZE = {2: (3, 8), 3: (3, 6)}  # members per cluster, inclusive
_PRESS = (0.80, 0.93)  # centre distance / sum of the radii along it, for a nucleus pressed against its anchor
_MIN_IN_CLUSTER = 0.78  # the same ratio to any other member of its cluster: contact allowed, no big overlap
_GAP = 1.2  # the same ratio to any nucleus of another cluster or an isolated one: no contact


@dataclass(frozen=True)
class Nucleus:
    """One nucleus: centre (um), semi-axes (um; the third along z), in-plane angle, outline harmonics
    ``(order, amplitude, phase)``, and its cluster (``-1``: isolated)."""

    centre: np.ndarray
    axes: tuple[float, ...]
    angle: float
    harm: tuple[tuple[int, float, float], ...]
    cluster: int

    def radius_along(self, direction: np.ndarray) -> float:
        """Distance from the centre to the (smooth) ellipse/ellipsoid along the unit vector ``direction``."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = c * direction[0] + s * direction[1]
        v = -s * direction[0] + c * direction[1]
        q2 = (u / self.axes[0]) ** 2 + (v / self.axes[1]) ** 2
        if len(self.axes) == 3:
            q2 += (direction[2] / self.axes[2]) ** 2
        return 1.0 / math.sqrt(max(q2, 1e-12))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: Sequence[float]) -> np.ndarray:
    """Gaussian random field, zero mean and unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=list(sigma_px),
                                    mode="reflect")
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def neighbour_differs(inst: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus with a pixel of another nucleus in their full (8/26) neighbourhood."""
    footprint = np.ones((3,) * inst.ndim, dtype=bool)
    big = np.iinfo(np.int32).max
    as_int = inst.astype(np.int32)
    hi = ndimage.maximum_filter(as_int, footprint=footprint, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(as_int > 0, as_int, big), footprint=footprint, mode="constant", cval=big)
    fg = as_int > 0
    return fg & ((hi != as_int) | ((lo != as_int) & (lo != big)))


def _draw_shape(rng: np.random.Generator, ndim: int, centre: np.ndarray, cluster: int) -> Nucleus:
    lo, hi = _RADIUS[ndim]
    r = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elong = rng.uniform(1.5, 2.0) if rng.random() < 0.2 else 1.0 + abs(rng.normal(0.0, 0.12))
    a_lo, a_hi = _AXIS_CLIP[ndim]
    axes = [min(max(r * math.sqrt(elong), a_lo), a_hi), min(max(r / math.sqrt(elong), a_lo), a_hi)]
    if ndim == 3:
        axes.append(r * rng.uniform(0.55, 0.85))
    angle = rng.uniform(0.0, math.pi)
    harm = tuple((k, float(rng.normal(0.0, 0.035)), float(rng.uniform(0, 2 * math.pi))) for k in (2, 3, 4))
    return Nucleus(np.asarray(centre, dtype=np.float64), tuple(axes), angle, harm, cluster)


def _ratio(a: Nucleus, b: Nucleus) -> float:
    """Centre distance over the sum of both radii along the line joining the centres (< 1: they overlap)."""
    d = b.centre - a.centre
    dist = float(np.linalg.norm(d))
    if dist < 1e-9:
        return 0.0
    d = d / dist
    return dist / (a.radius_along(d) + b.radius_along(-d))


def _fits(cand: Nucleus, nuclei: list[Nucleus], anchor: int | None) -> bool:
    for j, other in enumerate(nuclei):
        if j == anchor:
            continue
        same = cand.cluster >= 0 and other.cluster == cand.cluster
        if _ratio(cand, other) < (_MIN_IN_CLUSTER if same else _GAP):
            return False
    return True


def _direction(rng: np.random.Generator, ndim: int) -> np.ndarray:
    direction = rng.normal(size=ndim)
    if ndim == 3:
        direction[2] *= 0.3  # touching mostly side by side, as in a monolayer
    return direction / (np.linalg.norm(direction) + 1e-12)


def place_nuclei(rng: np.random.Generator, ndim: int, extent_um: np.ndarray) -> list[Nucleus]:
    """Clusters of 3-8 (3D: 3-6) nuclei pressed together, then isolated nuclei without contact.

    The number of nuclei follows a coverage of 0.30-0.42 (2D) or 0.20-0.30 (3D) of the field; 45-70 % of that
    number goes into clusters. A cluster grows from a seed nucleus (centre in the middle 70 % of the field, z in
    the middle 40 %): each new member is drawn with its own shape and placed against a random member already in
    the cluster, at a centre distance of 0.80-0.93 of the sum of the two radii along that line (so after the split
    by normalised radius they share a flat-ish border), at no less than 0.78 of it from any other member and
    with a gap (1.2) to every other nucleus; a member without a free spot after 25 tries is skipped. Isolated
    nuclei are then placed anywhere (centres up to 5 % outside the field) with the same gap to all.
    """
    lo, hi = _RADIUS[ndim]
    mean_r2 = (hi * hi - lo * lo) / (2.0 * math.log(hi / lo))  # E[r^2] for a log-uniform radius
    mean_size = math.pi * mean_r2 if ndim == 2 else 4.0 / 3.0 * math.pi * mean_r2 ** 1.5 * 0.7
    coverage = rng.uniform(0.30, 0.42) if ndim == 2 else rng.uniform(0.20, 0.30)
    n_target = max(4, round(coverage * float(np.prod(extent_um)) / mean_size))
    n_clustered = round(n_target * rng.uniform(0.45, 0.70))
    nuclei: list[Nucleus] = []
    z_band = np.array([0.15, 0.15] + ([0.3] if ndim == 3 else []))
    size_lo, size_hi = _CLUSTER_SIZE[ndim]
    cluster = 0
    for _try in range(8):
        if sum(n.cluster >= 0 for n in nuclei) >= n_clustered - 1:
            break
        size = int(rng.integers(size_lo, size_hi + 1))
        seed_centre = (z_band + rng.uniform(0, 1, size=ndim) * (1 - 2 * z_band)) * extent_um
        first = _draw_shape(rng, ndim, seed_centre, cluster)
        if not _fits(first, nuclei, None):
            continue
        members = [len(nuclei)]
        nuclei.append(first)
        for _member in range(size - 1):
            for _attempt in range(25):
                anchor = members[int(rng.integers(len(members)))]
                direction = _direction(rng, ndim)
                shape = _draw_shape(rng, ndim, nuclei[anchor].centre, cluster)
                reach = (nuclei[anchor].radius_along(direction) + shape.radius_along(-direction)) * rng.uniform(*_PRESS)
                cand = Nucleus(nuclei[anchor].centre + direction * reach, shape.axes, shape.angle, shape.harm, cluster)
                if np.any(cand.centre < -0.05 * extent_um) or np.any(cand.centre > 1.05 * extent_um):
                    continue
                if _fits(cand, nuclei, anchor):
                    members.append(len(nuclei))
                    nuclei.append(cand)
                    break
        cluster += 1
    for _ in range(max(n_target - len(nuclei), 0)):
        for _attempt in range(25):
            cand = _draw_shape(rng, ndim, rng.uniform(-0.05, 1.05, size=ndim) * extent_um, -1)
            if _fits(cand, nuclei, None):
                nuclei.append(cand)
                break
    return nuclei


def rasterise(nuclei: Sequence[Nucleus], shape: tuple[int, ...], sp_um: np.ndarray,
              min_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the nuclei: each pixel goes to the nucleus with the smallest normalised radius ``q`` (< 1), so overlaps
    split along the curve of equal normalised radii. Each nucleus keeps its largest connected (4/6) piece; pieces
    smaller than ``min_size`` pixels are dropped; ids are renumbered 1..N in placement order.

    Returns:
        ``(instances, index, q)``: instances uint16, ``index[id]`` the position in ``nuclei`` of instance ``id``
        (``index[0] = -1``), and ``q`` float32 the normalised radius of each pixel in its nucleus (1 outside).
    """
    ndim = len(shape)
    inst = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    for k, nuc in enumerate(nuclei, start=1):
        reach_um = max(nuc.axes) * 1.25
        lo = np.maximum(np.floor((nuc.centre - reach_um) / sp_um).astype(int), 0)
        hi = np.minimum(np.ceil((nuc.centre + reach_um) / sp_um).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[((np.arange(lo[d], hi[d]) + 0.5) * sp_um[d] - nuc.centre[d]).astype(np.float32)
                              for d in range(ndim)], indexing="ij")
        c, s = math.cos(nuc.angle), math.sin(nuc.angle)
        u = c * grids[0] + s * grids[1]
        v = -s * grids[0] + c * grids[1]
        q2 = (u / nuc.axes[0]) ** 2 + (v / nuc.axes[1]) ** 2
        if ndim == 3:
            q2 = q2 + (grids[2] / nuc.axes[2]) ** 2
        phi = np.arctan2(v, u)
        wobble = 1.0 + sum(a * np.cos(m * phi + p) for m, a, p in nuc.harm)
        q = (np.sqrt(q2) / wobble).astype(np.float32)
        window = tuple(slice(lo[d], hi[d]) for d in range(ndim))
        sub_best = best[window]
        take = (q < 1.0) & (q < sub_best)
        inst[window][take] = k
        sub_best[take] = q[take]

    clean = np.zeros(shape, dtype=np.uint16)
    index = [-1]
    for k, sl in enumerate(ndimage.find_objects(inst), start=1):
        if sl is None:
            continue
        mask = inst[sl] == k
        comps, n = ndimage.label(mask)
        if n > 1:
            mask = comps == (int(np.argmax(np.bincount(comps.ravel())[1:])) + 1)
        if int(mask.sum()) < min_size:
            continue
        clean[sl][mask] = len(index)
        index.append(k - 1)
    q_map = np.where(clean > 0, best, np.float32(1.0)).astype(np.float32)
    return clean, np.asarray(index, dtype=np.int64), q_map
