"""Deterministic synthetic fluorescence-microscopy nuclei, 2D and 3D (image + semantic label + instance label).

Stand-in for nucleus data sets (DSB 2018, Cell Tracking Challenge) in tests, benchmarks and demos. Each case is a
function of one integer seed only, so the same seed always gives bit-identical arrays.

Units and storage:

* Spacing is in **millimetres** like every other data set of the pipeline: the 2D default is 0.5 um pixels
  (``0.0005`` mm), the 3D default 0.5 x 0.5 x 1.0 um voxels (``0.0005, 0.0005, 0.001`` mm; z twice as coarse, as in
  a confocal stack). Physical sizes below are quoted in micrometres.
* Arrays are ``(X, Y)`` in 2D and ``(X, Y, Z)`` in 3D; the affine is ``diag(spacing)`` (origin 0). Written as NIfTI:
  the image float32 (camera counts), the semantic label uint8, the instance label uint16.

Labels:

* **Semantic** (``label``): ``0`` background, ``1`` nucleus. With ``source["boundary_class"] = true`` a third class
  ``2`` marks the *touching interface*: nucleus pixels that have a pixel of a *different* nucleus among their
  neighbours (8-neighbourhood in 2D, 26 in 3D). It is off by default so the semantic task stays a well-posed
  two-class problem a small U-Net learns to Dice >= 0.9 in minutes; switch it on to train the boundary-aware
  variant used for instance separation (and declare ``"2": "boundary"`` in the manifest's ``labels``).
* **Instances** (``instances``): ``0`` background, ``1..N`` one id per nucleus, consecutive, each a single connected
  component (4-/6-connected). ``instances > 0`` equals ``label > 0`` exactly.

Recipe:

* Nuclei are ellipses (2D) or ellipsoids flattened along z (3D) with semi-axes of 4-7 um (2D) or 3.5-6 um in
  x/y and 0.6-0.9 of that along z (3D), a random in-plane orientation and a slightly wobbly outline (low-order
  angular harmonics). About a third are placed against an existing nucleus so that they touch or overlap
  (overlaps are split along the curve where the two normalised ellipse radii are equal); the rest are placed
  without contact. Nuclei may be cut by the field-of-view border.
* Each nucleus has its own brightness (0.55-1.0) and chromatin texture; the interface between touching nuclei is
  slightly dimmer; a few small unlabelled debris specks, a dim background and smooth uneven illumination are added.
* Acquisition: Gaussian PSF (sigma 0.6 um laterally, 1.2 um axially), Poisson photon noise with a random peak of
  60-200 photons, Gaussian read noise (sigma 1.5-3 counts) and a camera offset of 10 counts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.data.manifest import confined_path
from pipeline.errors import DataError

__all__ = [
    "DEFAULT_SHAPE_2D",
    "DEFAULT_SHAPE_3D",
    "DEFAULT_SPACING_2D",
    "DEFAULT_SPACING_3D",
    "case_seed",
    "make_cells_case",
    "write_cells_2d_case",
    "write_cells_3d_case",
    "write_cells_case",
    "register",
]

DEFAULT_SHAPE_2D: tuple[int, int] = (128, 128)
DEFAULT_SPACING_2D: tuple[float, float] = (0.0005, 0.0005)  # mm (0.5 um)
DEFAULT_SHAPE_3D: tuple[int, int, int] = (64, 64, 24)
DEFAULT_SPACING_3D: tuple[float, float, float] = (0.0005, 0.0005, 0.001)  # mm (0.5 x 0.5 x 1.0 um)

CAMERA_OFFSET = 10.0
_MIN_SIZE = {2: 20, 3: 40}  # pixels / voxels: smaller fragments (border cuts) are dropped


def case_seed(source_seed: int, case_id: str, spatial_dims: int = 2) -> int:
    """Derive a per-case seed from the data source's seed and the case id (stable across runs and platforms)."""
    digest = hashlib.sha256(f"synthetic_cells_{int(spatial_dims)}d:{int(source_seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: Sequence[float]) -> np.ndarray:
    """Gaussian random field, zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=list(sigma_px),
                                    mode="reflect")
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def _neighbour_differs(inst: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus with a pixel of another nucleus in their full (8/26) neighbourhood."""
    footprint = np.ones((3,) * inst.ndim, dtype=bool)
    big = np.iinfo(np.int32).max
    as_int = inst.astype(np.int32)
    hi = ndimage.maximum_filter(as_int, footprint=footprint, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(as_int > 0, as_int, big), footprint=footprint, mode="constant", cval=big)
    fg = as_int > 0
    return fg & ((hi != as_int) | ((lo != as_int) & (lo != big)))


def make_cells_case(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE_2D,
    spacing: Sequence[float] | None = None,
    boundary_class: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate one synthetic nuclei image.

    Args:
        seed: any integer; the output is a deterministic function of ``(seed, shape, spacing, boundary_class)``.
        shape: ``(X, Y)`` or ``(X, Y, Z)``; the length picks 2D or 3D.
        spacing: pixel size in mm (default :data:`DEFAULT_SPACING_2D` / :data:`DEFAULT_SPACING_3D`).
        boundary_class: add semantic class 2 on the interface between touching nuclei.

    Returns:
        ``(image, label, instances, affine)``: image float32 (camera counts), label uint8 (0/1, or 0/1/2 with
        ``boundary_class``), instances uint16 (0 background, 1..N), and the 4x4 float64 affine ``diag(spacing)``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3) or any(s < 8 for s in shape):
        raise DataError(f"synthetic cells: shape must be 2 or 3 ints >= 8, got {shape}")
    if spacing is None:
        spacing = DEFAULT_SPACING_2D if ndim == 2 else DEFAULT_SPACING_3D
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise DataError(f"synthetic cells: spacing must be {ndim} positive numbers (mm), got {spacing}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) & ((1 << 128) - 1)))
    sp_um = np.asarray(spacing) * 1000.0  # um per pixel
    extent_um = np.asarray(shape) * sp_um

    # --- nuclei geometry (in um, field-of-view frame) ---------------------------------------------------------------
    r_lo, r_hi = (4.0, 7.0) if ndim == 2 else (3.5, 6.0)
    mean_vol = (math.pi * ((r_lo + r_hi) / 2) ** 2) if ndim == 2 else (4 / 3 * math.pi * ((r_lo + r_hi) / 2) ** 3
                                                                       * 0.75)
    coverage = rng.uniform(0.22, 0.38)
    n_target = max(3, int(round(coverage * float(np.prod(extent_um)) / mean_vol)))
    nuclei: list[dict[str, Any]] = []
    for _ in range(n_target):
        r = rng.uniform(r_lo, r_hi)
        elong = rng.uniform(0.75, 1.3)
        axes = [r * elong, r / elong] + ([r * rng.uniform(0.6, 0.9)] if ndim == 3 else [])
        angle = rng.uniform(0.0, math.pi)
        harmonics = [(k, rng.normal(0.0, 0.04), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4)]
        centre = None
        touching = nuclei and rng.random() < 0.35
        for _attempt in range(30):
            if touching:
                other = nuclei[int(rng.integers(len(nuclei)))]
                direction = rng.normal(size=ndim)
                if ndim == 3:
                    direction[2] *= 0.3  # touching mostly side by side
                direction /= np.linalg.norm(direction) + 1e-12
                reach = (min(other["axes"][:2]) + min(axes[:2])) * rng.uniform(0.85, 1.02)
                cand = other["centre"] + direction * reach
                if np.any(cand < 0) or np.any(cand > extent_um):
                    continue
            else:
                cand = rng.uniform(-0.1, 1.1, size=ndim) * extent_um
                if any(np.linalg.norm(cand - o["centre"]) < 1.05 * (max(o["axes"]) + max(axes)) for o in nuclei):
                    continue
            centre = cand
            break
        if centre is None:
            continue
        nuclei.append({"centre": centre, "axes": axes, "angle": angle, "harm": harmonics})

    # --- rasterise: per pixel the nucleus with the smallest normalised radius (< 1) ----------------------------------
    inst = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    for k, nuc in enumerate(nuclei, start=1):
        reach_um = max(nuc["axes"]) * 1.25
        lo = np.maximum(np.floor((nuc["centre"] - reach_um) / sp_um).astype(int), 0)
        hi = np.minimum(np.ceil((nuc["centre"] + reach_um) / sp_um).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[(np.arange(lo[d], hi[d]) + 0.5) * sp_um[d] - nuc["centre"][d] for d in range(ndim)],
                            indexing="ij")
        c, s = math.cos(nuc["angle"]), math.sin(nuc["angle"])
        u = c * grids[0] + s * grids[1]
        v = -s * grids[0] + c * grids[1]
        q2 = (u / nuc["axes"][0]) ** 2 + (v / nuc["axes"][1]) ** 2
        if ndim == 3:
            q2 = q2 + (grids[2] / nuc["axes"][2]) ** 2
        phi = np.arctan2(v, u)
        wobble = 1.0 + sum(a * np.cos(m * phi + p) for m, a, p in nuc["harm"])
        q = (np.sqrt(q2) / wobble).astype(np.float32)
        window = tuple(slice(lo[d], hi[d]) for d in range(ndim))
        sub_best = best[window]
        take = (q < 1.0) & (q < sub_best)
        inst[window][take] = k
        sub_best[take] = q[take]

    # keep the largest connected piece of each nucleus, drop tiny fragments, renumber 1..N in placement order
    clean = np.zeros(shape, dtype=np.uint16)
    objects = ndimage.find_objects(inst)
    next_id = 1
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        mask = inst[sl] == k
        comps, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(comps.ravel())[1:]
            mask = comps == (int(np.argmax(sizes)) + 1)
        if int(mask.sum()) < _MIN_SIZE[ndim]:
            continue
        clean[sl][mask] = next_id
        next_id += 1
    instances = clean
    fg = instances > 0
    interface = _neighbour_differs(instances)

    label = fg.astype(np.uint8)
    if boundary_class:
        label[interface] = 2

    # --- intensities --------------------------------------------------------------------------------------------------
    tex_sigma = [max(0.8 / s, 0.5) for s in sp_um]
    texture = _smooth_noise(rng, shape, tex_sigma)
    brightness = np.concatenate([[0.0], rng.uniform(0.55, 1.0, size=int(instances.max()))]).astype(np.float32)
    background = rng.uniform(0.05, 0.12)
    img = np.where(fg, brightness[instances] * (1.0 + 0.12 * texture), background).astype(np.float32)
    img[interface] *= rng.uniform(0.7, 0.85)
    # unlabelled debris specks (small, dim)
    for _ in range(int(rng.integers(0, 4))):
        centre = rng.uniform(0, 1, size=ndim) * np.asarray(shape)
        rad_um = rng.uniform(0.7, 1.3)
        grids = np.ogrid[tuple(slice(0, n) for n in shape)]
        d2 = sum(((g + 0.5 - centre[d]) * sp_um[d]) ** 2 for d, g in enumerate(grids))
        speck = (d2 < rad_um**2) & ~fg
        img[speck] = rng.uniform(0.2, 0.35)
    illum = 1.0 + 0.12 * _smooth_noise(rng, shape, [max(20.0 / s, 1.0) for s in sp_um])
    img *= illum.astype(np.float32)

    # --- acquisition --------------------------------------------------------------------------------------------------
    psf_um = np.array([0.6, 0.6, 1.2][:ndim])
    img = ndimage.gaussian_filter(img, sigma=list(psf_um / sp_um), mode="nearest")
    peak = rng.uniform(60.0, 200.0)
    counts = rng.poisson(np.clip(img, 0, None) * peak).astype(np.float32)
    read = rng.uniform(1.5, 3.0)
    counts += CAMERA_OFFSET + rng.standard_normal(shape).astype(np.float32) * read
    image = counts.astype(np.float32)

    affine = np.eye(4)
    for d in range(ndim):
        affine[d, d] = spacing[d]
    return image, label, instances, affine


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


def _parse_tuple(source: Mapping[str, Any], key: str, default: Sequence[float], n: int, kind: type) -> tuple:
    value = source.get(key)
    if value is None:
        return tuple(default)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise DataError(f"synthetic cells source: '{key}' must be a list of {n} numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise DataError(f"synthetic cells source: '{key}' must hold {n} positive numbers, got {value!r}")
        if kind is int and float(v) != int(v):
            raise DataError(f"synthetic cells source: '{key}' must hold integers, got {value!r}")
        out.append(kind(v))
    return tuple(out)


def _check_entry(entry: Any, source: Any, keys: Sequence[str], what: str) -> int:
    if not isinstance(entry, Mapping):
        raise DataError(f"{what}: manifest entry must be a mapping, got {type(entry).__name__}")
    if not isinstance(source, Mapping):
        raise DataError(f"{what}: source must be a mapping, got {type(source).__name__}")
    for key in keys:
        if not isinstance(entry.get(key), str) or not entry.get(key):
            raise DataError(f"{what}: manifest entry needs a non-empty string '{key}', got {dict(entry)!r}")
    seed = source.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{what} source: 'seed' must be an integer, got {seed!r}")
    return seed


def write_cells_case(root: Path, entry: dict, source: dict, spatial_dims: int | None = None) -> None:
    """Generate the case ``entry['id']`` and write ``entry['image']``, ``entry['label']`` and, when the entry has
    one, ``entry['instances']`` under ``root`` (NIfTI, atomically; instances first, image last). Every path
    (relative to ``root``, or absolute) must resolve under ``root`` (:func:`pipeline.data.manifest.confined_path`);
    nothing is written otherwise.

    ``spatial_dims`` (2 or 3) defaults to ``source['spatial_dims']``, else 2. The seed comes from
    ``source['seed']`` and the case id (:func:`case_seed`); optional ``source['shape']``, ``source['spacing']``
    (mm) and ``source['boundary_class']`` (bool) override the defaults.

    Raises:
        DataError: the entry or source is malformed.
    """
    from pipeline.data.storage import save_nifti

    ndim = int(spatial_dims if spatial_dims is not None else (source.get("spatial_dims", 2)
                                                             if isinstance(source, Mapping) else 2))
    what = f"synthetic cells {ndim}D"
    if ndim not in (2, 3):
        raise DataError(f"synthetic cells: spatial_dims must be 2 or 3, got {ndim}")
    seed = _check_entry(entry, source, ("id", "image", "label"), what)
    shape = _parse_tuple(source, "shape", DEFAULT_SHAPE_2D if ndim == 2 else DEFAULT_SHAPE_3D, ndim, int)
    spacing = _parse_tuple(source, "spacing", DEFAULT_SPACING_2D if ndim == 2 else DEFAULT_SPACING_3D, ndim, float)
    boundary = source.get("boundary_class", False)
    if not isinstance(boundary, bool):
        raise DataError(f"{what} source: 'boundary_class' must be true or false, got {boundary!r}")
    keys = ["instances"] if isinstance(entry.get("instances"), str) and entry["instances"] else []
    keys += ["label", "image"]
    targets = {}  # every target is checked before anything is written
    for key in keys:
        targets[key] = confined_path(root, entry[key], f"{what}: entry {entry['id']!r} {key}")
        if not targets[key].name.endswith((".nii.gz", ".nii")):
            raise DataError(f"{what}: entry {entry['id']!r} {key} path must end in .nii.gz: {entry[key]}")
    image, label, instances, affine = make_cells_case(case_seed(seed, entry["id"], ndim), shape, spacing, boundary)
    arrays = {"instances": (instances, np.uint16), "label": (label, np.uint8), "image": (image, np.float32)}
    for key in keys:
        save_nifti(targets[key], arrays[key][0], affine, arrays[key][1])


def write_cells_2d_case(root: Path, entry: dict, source: dict) -> None:
    """:func:`write_cells_case` in 2D (generator ``synthetic_cells_2d``)."""
    write_cells_case(root, entry, source, spatial_dims=2)


def write_cells_3d_case(root: Path, entry: dict, source: dict) -> None:
    """:func:`write_cells_case` in 3D (generator ``synthetic_cells_3d``)."""
    write_cells_case(root, entry, source, spatial_dims=3)


def register(registry: Any) -> None:
    """Register ``synthetic_cells_2d`` and ``synthetic_cells_3d`` in a :class:`pipeline.registry.Registry`."""
    registry.register("synthetic_cells_2d")(write_cells_2d_case)
    registry.register("synthetic_cells_3d")(write_cells_3d_case)
