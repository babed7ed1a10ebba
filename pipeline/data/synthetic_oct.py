"""Deterministic synthetic retinal OCT B-scans (image + layer/fluid label + boundary rows), Duke DME style.

Stand-in for the Duke DME data set (Chiu et al. 2015) in tests, benchmarks and demos. Each case is a function of
one integer seed only, so the same seed always gives bit-identical arrays.

Geometry and storage:

* A B-scan is a 2D array ``(X, Y)``: ``X`` lateral (A-scan index, left to right), ``Y`` depth (row, increasing
  downwards, away from the vitreous). Default 256 x 192 pixels of 11.33 um lateral x 3.87 um axial (the Duke
  Spectralis sampling), i.e. 2.9 mm x 0.74 mm, centred near the fovea. The affine is ``diag(0.01133, 0.00387)``
  (mm). Written as NIfTI: image float32 (log-compressed intensity in [0, 1]), label uint8.
* ``boundaries``: float32 array ``(8, X)`` saved as ``.npy``, the sub-pixel row (0-based, pixel centres at integer
  rows) of the 8 boundaries in Duke order ``ILM, NFL/GCL, IPL/INL, INL/OPL, OPL/ONL, ISM/ISE, OS/RPE, BM``;
  non-decreasing down the boundary axis in every column (layers may thin to zero width in the foveal pit).

Labels (Duke DME convention, as in ``shared/DATASETS.md`` and :mod:`pipeline.data.importers.duke_dme`): a pixel at
row ``r`` gets the number of boundaries ``b`` with ``r >= b`` (the row of a boundary belongs to the layer below):

====  ==========================================================================
0     vitreous (above ILM)
1     NFL (ILM - NFL/GCL)
2     GCL + IPL (NFL/GCL - IPL/INL)
3     INL (IPL/INL - INL/OPL)
4     OPL (INL/OPL - OPL/ONL)
5     ONL + inner segment myoid (OPL/ONL - ISM/ISE)
6     inner segment ellipsoid + outer segment (ISM/ISE - OS/RPE)
7     RPE (OS/RPE - BM)
8     choroid / below BM
9     fluid (intraretinal cysts and subretinal fluid; overrides the layer)
====  ==========================================================================

Recipe:

* Bruch's membrane (BM) is a gently curved, tilted curve; the other boundaries are stacked above it from per-layer
  thicknesses (parafoveal NFL ~25 um (thicker on the nasal side), GCL+IPL ~95, INL ~40, OPL ~30, ONL+ISM ~85,
  ISE+OS ~35, RPE ~22 um, each scaled +-8 % per case and modulated by a slow +-5 % wobble). A Gaussian foveal pit
  (sigma 0.3-0.45 mm) thins the inner layers (NFL, GCL+IPL, INL, OPL) almost to zero at its centre while the
  ONL thickens, so that the central retinal thickness ILM-BM is ~278 um (N(278, 10) um) against ~330 um
  parafoveally.
* Reflectivity per layer in the linear domain (NFL, the ellipsoid zone line just below ISM/ISE and the RPE bright;
  ONL and INL dark; GCL+IPL and OPL intermediate; textured choroid below BM; almost nothing in the vitreous),
  blurred by the axial / lateral PSF, attenuated by ``exp(-2 * integral of mu dz)`` with a per-layer attenuation
  ``mu`` (retina ~1.5 /mm, RPE 10 /mm, choroid 4 /mm), multiplied by gamma speckle (2-5 looks, mean 1) plus an
  exponential noise floor, then log-compressed (10 log10) and mapped to [0, 1] from the noise floor (+0-3 dB)
  to the 99.7th percentile.
* With probability ``fluid_probability`` (default 0.5) a case has fluid: 1-4 dark intraretinal cysts (ellipses
  between the INL and the ISM/ISE boundary, near the fovea) and, in about a third of them, a dome of subretinal
  fluid that lifts the boundaries ILM..OS/RPE (the lifted OS/RPE boundary is saved; the gap down to the RPE is
  fluid).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.manifest import confined_path
from pipeline.errors import DataError

__all__ = [
    "BOUNDARY_NAMES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "LABELS",
    "case_seed",
    "fill_layers",
    "make_oct_case",
    "make_oct_volume",
    "register",
    "write_oct_case",
]

DEFAULT_SHAPE: tuple[int, int] = (256, 192)  # (X lateral, Y depth)
DEFAULT_SPACING: tuple[float, float] = (0.01133, 0.00387)  # mm
BOUNDARY_NAMES = ("ILM", "NFL/GCL", "IPL/INL", "INL/OPL", "OPL/ONL", "ISM/ISE", "OS/RPE", "BM")
LABELS = {
    "0": "vitreous",
    "1": "NFL",
    "2": "GCL+IPL",
    "3": "INL",
    "4": "OPL",
    "5": "ONL+ISM",
    "6": "ISE+OS",
    "7": "RPE",
    "8": "choroid",
    "9": "fluid",
}
FLUID = 9
CENTRAL_THICKNESS_UM = 278.0

# parafoveal thickness (um) of layers 1..7 and how much of it the pit removes at its centre (layer 5 is solved for)
_PARA_UM = np.array([25.0, 95.0, 40.0, 30.0, 85.0, 35.0, 22.0])
_PIT_DEPLETION = np.array([0.97, 0.95, 0.90, 0.85, 0.0, 0.0, 0.0])
# linear reflectivity per label 0..9 and attenuation (1/mm)
_REFLECTIVITY = np.array([0.002, 1.0, 0.4, 0.12, 0.45, 0.05, 0.4, 1.0, 0.5, 0.006])
_MU_PER_MM = np.array([0.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 10.0, 4.0, 0.5])


def case_seed(source_seed: int, case_id: str) -> int:
    """Derive a per-case seed from the data source's seed and the case id (stable across runs and platforms)."""
    digest = hashlib.sha256(f"synthetic_oct:{int(source_seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def fill_layers(boundaries: np.ndarray, depth: int) -> np.ndarray:
    """Label map ``(X, depth)`` uint8 from boundary rows ``(8, X)``: ``label[x, r] = #{b : r >= boundaries[b, x]}``."""
    rows = np.arange(depth, dtype=np.float64)
    b = np.asarray(boundaries, dtype=np.float64)
    return (rows[None, None, :] >= b[:, :, None]).sum(axis=0).astype(np.uint8)


def _smooth_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    from scipy import ndimage  # lazy: the CLI imports this module when it lists the importers

    f = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=sigma, mode="reflect")
    std = float(f.std())
    return (f - f.mean()) / std if std > 0 else f


def make_oct_case(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    fluid_probability: float = 0.5,
    slow_mm: float = 0.0,
    speckle_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate one synthetic OCT B-scan.

    Args:
        seed: any integer; the output is a deterministic function of ``(seed, shape, spacing, fluid_probability)``.
        shape: ``(X, Y)`` = (A-scans, rows per A-scan).
        spacing: ``(lateral, axial)`` pixel size in mm.
        fluid_probability: chance that the case has fluid (label 9).
        slow_mm: distance of this B-scan from the fovea along the slow (B-scan) axis, for volumes: the pit, the
            cysts and the subretinal dome are radially symmetric en face, so they shrink away from 0.
        speckle_seed: seed of the speckle and texture of this B-scan (default: drawn from ``seed``); the B-scans of
            a volume share the anatomy (``seed``) but not the noise.

    Returns:
        ``(image, label, boundaries, affine)``: image float32 ``(X, Y)`` in [0, 1], label uint8 ``(X, Y)`` (0..9,
        see the module docstring), boundaries float32 ``(8, X)`` (rows, Duke order) and the 4x4 affine.
    """
    from scipy import ndimage  # lazy: the CLI imports this module when it lists the importers

    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 2 or shape[0] < 16 or shape[1] < 64:
        raise DataError(f"synthetic OCT: shape must be (X >= 16, Y >= 64), got {shape}")
    if len(spacing) != 2 or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise DataError(f"synthetic OCT: spacing must be 2 positive numbers (mm), got {spacing}")
    if not 0.0 <= float(fluid_probability) <= 1.0:
        raise DataError(f"synthetic OCT: fluid_probability must be in [0, 1], got {fluid_probability}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) & ((1 << 128) - 1)))
    width, depth = shape
    lat_mm, ax_mm = spacing
    ax_um = ax_mm * 1000.0
    x_mm = (np.arange(width) - (width - 1) / 2.0) * lat_mm

    # --- layer thicknesses (um) per column -----------------------------------------------------------------------
    fovea = rng.uniform(-0.12, 0.12) * width * lat_mm
    pit_sigma = rng.uniform(0.3, 0.45)
    g = np.exp(-0.5 * ((x_mm - fovea) ** 2 + slow_mm**2) / pit_sigma**2)
    para = _PARA_UM * rng.uniform(0.92, 1.08, size=7)
    nasal = rng.choice([-1.0, 1.0])
    thick = np.empty((7, width))
    for k in range(7):
        thick[k] = para[k] * (1.0 - _PIT_DEPLETION[k] * g)
    thick[0] *= 1.0 + 0.35 * np.clip(nasal * (x_mm - fovea) / 1.5, 0.0, None)  # NFL thicker nasally
    thick[5] = para[5] + rng.uniform(6.0, 12.0) * g  # outer segments longer at the fovea
    crt = float(np.clip(rng.normal(CENTRAL_THICKNESS_UM, 10.0), 250.0, 305.0))
    others_at_centre = float(sum(para[k] * (1.0 - _PIT_DEPLETION[k]) for k in (0, 1, 2, 3))) + thick[5].max() \
        + para[6]
    onl_centre = max(crt - others_at_centre, para[4])
    thick[4] = para[4] + (onl_centre - para[4]) * g
    for k in range(7):  # slow wobble, keeps thicknesses positive
        thick[k] *= 1.0 + 0.05 * _smooth_1d(rng, width, sigma=max(width / 10.0, 2.0))
    thick = np.clip(thick, 0.0, None)

    # --- boundaries (rows) ----------------------------------------------------------------------------------------
    half_mm = width * lat_mm / 2.0
    curv = rng.uniform(-3.0, 10.0) / max(half_mm, 1e-6) ** 2  # rows per mm^2 (up to ~10 rows at the edges)
    tilt = rng.uniform(-6.0, 6.0) / max(half_mm, 1e-6)
    bm = curv * x_mm**2 + tilt * x_mm + 0.4 * _smooth_1d(rng, width, sigma=max(width / 8.0, 2.0))
    bounds = np.empty((8, width))
    bounds[7] = bm
    for k in range(6, -1, -1):  # boundary k sits thickness of layer k+1 above boundary k+1
        bounds[k] = bounds[k + 1] - thick[k] / ax_um

    # subretinal fluid dome: lifts ILM..OS/RPE
    has_fluid = rng.random() < float(fluid_probability)
    srf = np.zeros(width)
    if has_fluid and rng.random() < 0.35:
        centre = fovea + rng.uniform(-0.4, 0.4)
        half_width = rng.uniform(0.25, 0.55)
        height_rows = rng.uniform(30.0, 80.0) / ax_um
        u2 = ((x_mm - centre) / half_width) ** 2 + (slow_mm / half_width) ** 2
        srf = height_rows * np.sqrt(np.clip(1.0 - u2, 0.0, None)) ** 1.5
        bounds[:7] -= srf[None, :]

    # place vertically: BM at ~70-78 % of the depth, then keep a margin above the ILM and below the BM
    target_bm = rng.uniform(0.70, 0.78) * depth
    bounds += target_bm - float(np.median(bounds[7]))
    top_margin, bottom_margin = 0.08 * depth, 0.1 * depth
    if bounds[0].min() < top_margin:
        bounds += top_margin - bounds[0].min()
    if bounds[7].max() > depth - 1 - bottom_margin:
        bounds -= bounds[7].max() - (depth - 1 - bottom_margin)
    bounds = np.maximum.accumulate(bounds, axis=0)  # guard against round-off
    bounds = bounds.astype(np.float32)

    label = fill_layers(bounds, depth)
    rows = np.arange(depth)[None, :].astype(np.float32)
    fluid = np.zeros(shape, dtype=bool)
    if srf.max() > 0:
        fluid |= (rows >= bounds[6][:, None]) & (rows < (bounds[6] + srf.astype(np.float32))[:, None])
    if has_fluid:
        xs = np.arange(width)[:, None].astype(np.float32)
        for _ in range(int(rng.integers(1, 5))):
            cx = (fovea + rng.uniform(-0.6, 0.6)) / lat_mm + (width - 1) / 2.0
            cx = float(np.clip(cx, 0, width - 1))
            col = int(round(cx))
            top, bottom = float(bounds[2][col]), float(bounds[5][col])
            if bottom - top < 6:
                continue
            cy = rng.uniform(top + 0.3 * (bottom - top), bottom - 0.3 * (bottom - top))
            rx_mm = rng.uniform(25.0, 70.0) / 1000.0
            rx = rx_mm / lat_mm
            ry = min(rng.uniform(20.0, 60.0) / ax_um, 0.45 * (bottom - top))
            shrink = 1.0 - (slow_mm / rx_mm) ** 2  # round en face: the cyst's cross-section at this B-scan
            if shrink <= 0:
                continue
            rx, ry = rx * math.sqrt(shrink), ry * math.sqrt(shrink)
            cyst = ((xs - cx) / max(rx, 0.6)) ** 2 + ((rows - cy) / ry) ** 2 < 1.0
            cyst &= (rows > bounds[0][:, None]) & (rows < bounds[5][:, None])
            fluid |= cyst
    label[fluid] = FLUID

    # --- image formation -------------------------------------------------------------------------------------------
    refl = (_REFLECTIVITY * rng.uniform(0.85, 1.15, size=_REFLECTIVITY.size))[label].astype(np.float64)
    if speckle_seed is not None:
        rng = np.random.default_rng(np.random.SeedSequence(int(speckle_seed) & ((1 << 128) - 1)))
    refl[label == 0] = _REFLECTIVITY[0]
    ez = (label == 6) & (rows < bounds[5][:, None] + 8.0 / ax_um)  # ellipsoid zone: bright line below ISM/ISE
    refl[ez] = rng.uniform(0.8, 1.0)
    elm = (label == 5) & (rows >= bounds[5][:, None] - 4.0 / ax_um)  # faint external limiting membrane
    refl[elm] *= 2.5
    chor = label == 8
    vessels = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(3.0, 2.0))
    vessels /= vessels.std() + 1e-12
    refl[chor] *= np.clip(1.0 + 0.6 * vessels[chor], 0.15, None)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1.5, 1.0))
    refl *= np.clip(1.0 + 0.15 * texture / (texture.std() + 1e-12), 0.5, None)
    refl = ndimage.gaussian_filter(refl, sigma=(0.6, 0.9), mode="nearest")  # PSF (lateral, axial)

    mu = _MU_PER_MM[label]
    optical_depth = np.cumsum(mu, axis=1) * ax_mm - mu * ax_mm  # exclusive integral down each A-scan
    signal = refl * np.exp(-2.0 * optical_depth)
    looks = rng.uniform(2.0, 5.0)
    speckle = rng.gamma(looks, 1.0 / looks, size=shape)
    floor = rng.uniform(0.002, 0.005)
    intensity = signal * speckle + rng.exponential(floor, size=shape)
    db = 10.0 * np.log10(intensity + 1e-9)
    low_db = 10.0 * math.log10(floor) + rng.uniform(0.0, 3.0)  # display window starts at the noise floor
    top_db = float(np.percentile(db, 99.7))
    image = np.clip((db - low_db) / max(top_db - low_db, 1.0), 0.0, 1.0).astype(np.float32)

    affine = np.eye(4)
    affine[0, 0], affine[1, 1] = lat_mm, ax_mm
    return image, label, bounds, affine


def make_oct_volume(
    seed: int,
    shape: Sequence[int] = (*DEFAULT_SHAPE, 32),
    spacing: Sequence[float] = (*DEFAULT_SPACING, 0.06),
    fluid_probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A volume of B-scans ``(X, Y, Z)`` through one retina, the fovea at the middle B-scan (Z is the slow axis).

    All B-scans share the anatomy drawn from ``seed``; the foveal pit, cysts and subretinal fluid are round en
    face, so they shrink away from the central B-scan; speckle differs per B-scan.

    Returns:
        ``(image (X, Y, Z), label (X, Y, Z), boundaries (8, X, Z), affine)``.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3 or shape[2] < 1 or spacing[2] <= 0:
        raise DataError(f"synthetic OCT volume: shape and spacing need 3 entries (X, Y, Z), got {shape}, {spacing}")
    slices = [
        make_oct_case(seed, shape[:2], spacing[:2], fluid_probability,
                      slow_mm=(z - (shape[2] - 1) / 2.0) * spacing[2], speckle_seed=case_seed(seed, f"bscan{z}"))
        for z in range(shape[2])
    ]
    image = np.stack([s[0] for s in slices], axis=2)
    label = np.stack([s[1] for s in slices], axis=2)
    bounds = np.stack([s[2] for s in slices], axis=2)
    affine = np.diag([*spacing, 1.0])
    return image, label, bounds, affine


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


def _parse_pair(source: Mapping[str, Any], key: str, default: Sequence[float], kind: type) -> tuple:
    value = source.get(key)
    if value is None:
        return tuple(default)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise DataError(f"synthetic OCT source: '{key}' must be a list of 2 numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise DataError(f"synthetic OCT source: '{key}' must hold 2 positive numbers, got {value!r}")
        if kind is int and float(v) != int(v):
            raise DataError(f"synthetic OCT source: '{key}' must hold integers, got {value!r}")
        out.append(kind(v))
    return tuple(out)


def write_oct_case(root: Path, entry: dict, source: dict) -> None:
    """Generate the case ``entry['id']`` and write ``entry['image']``, ``entry['label']`` (NIfTI) and, when the
    entry has one, ``entry['boundaries']`` (``.npy``) under ``root``, atomically (boundaries first, image last).
    Every path (relative to ``root``, or absolute) must resolve under ``root``
    (:func:`pipeline.data.manifest.confined_path`); nothing is written otherwise.

    The seed comes from ``source['seed']`` and the case id (:func:`case_seed`); optional ``source['shape']``
    (``[X, Y]``, or ``[X, Y, Z]`` for a volume of B-scans), ``source['spacing']`` (mm) and
    ``source['fluid_probability']`` override the defaults.

    Raises:
        DataError: the entry or source is malformed.
    """
    from pipeline.data.storage import save_nifti, save_npy
    from pipeline.data.synthetic_cells import _check_entry

    what = "synthetic OCT"
    seed = _check_entry(entry, source, ("id", "image", "label"), what)
    targets = {}  # every target is checked before anything is written
    if isinstance(entry.get("boundaries"), str) and entry["boundaries"]:
        targets["boundaries"] = confined_path(root, entry["boundaries"], f"{what}: entry {entry['id']!r} boundaries")
        if targets["boundaries"].suffix != ".npy":
            raise DataError(f"{what}: entry {entry['id']!r} boundaries path must end in .npy: {entry['boundaries']}")
    for key in ("label", "image"):
        targets[key] = confined_path(root, entry[key], f"{what}: entry {entry['id']!r} {key}")
        if not targets[key].name.endswith((".nii.gz", ".nii")):
            raise DataError(f"{what}: entry {entry['id']!r} {key} path must end in .nii.gz: {entry[key]}")
    prob = source.get("fluid_probability", 0.5)
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        raise DataError(f"{what} source: 'fluid_probability' must be a number in [0, 1], got {prob!r}")
    if isinstance(source.get("shape"), Sequence) and len(source["shape"]) == 3:  # a volume of B-scans
        shape3 = tuple(int(v) for v in source["shape"])
        spacing3 = tuple(float(v) for v in source.get("spacing") or (*DEFAULT_SPACING, 0.06))
        image, label, bounds, affine = make_oct_volume(case_seed(seed, entry["id"]), shape3, spacing3, float(prob))
    else:
        shape = _parse_pair(source, "shape", DEFAULT_SHAPE, int)
        spacing = _parse_pair(source, "spacing", DEFAULT_SPACING, float)
        image, label, bounds, affine = make_oct_case(case_seed(seed, entry["id"]), shape, spacing, float(prob))
    if "boundaries" in targets:
        save_npy(targets["boundaries"], bounds)
    for key, data, dtype in (("label", label, np.uint8), ("image", image, np.float32)):
        save_nifti(targets[key], data, affine, dtype)


def register(registry: Any) -> None:
    """Register ``synthetic_oct`` in a :class:`pipeline.registry.Registry`."""
    registry.register("synthetic_oct")(write_oct_case)
