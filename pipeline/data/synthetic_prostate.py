"""Deterministic synthetic prostate T2-weighted MRI cases (image + PZ/TZ label).

The generator stands in for a real prostate data set in tests, benchmarks and demos. Each case is a function of one
integer seed only, so the same seed always gives bit-identical arrays.

Design:

* **Geometry in world coordinates.** Each case gets its own affine: spacing as given, a direction that is either
  RAS-like (identity) or LPS-like (first two axes flipped), usually a small oblique rotation (up to about 8 degrees)
  and a non-zero origin. Every voxel centre is mapped through the affine to world (RAS+, mm) coordinates and the
  anatomy is evaluated there, so after reorienting to RAS the peripheral zone is always posterior (-y) whatever the
  stored orientation.
* **Anatomy.** An ellipsoidal gland (semi-axes LR 17-24, AP 12-17, SI 14-20 mm, slightly tapered towards the apex
  and flattened posteriorly) near the field-of-view centre. The transition zone (label 2) is an inner ellipsoid
  shifted anteriorly and superiorly; the peripheral zone (label 1) is the rest of the gland, a posterior crescent at
  least 5 mm thick posteriorly that thins to nothing anteriorly.
* **Contrast.** Signal ``PD * exp(-TE / T2)`` with TE = 100 ms, T2(PZ) = 149 ms, T2(TZ) = 125 ms (and PD 1.0 vs
  0.94, so TZ is ~17 % darker than PZ). The gland is fairly
  homogeneous and wrapped in a thin dark capsule, with a faint dark "surgical capsule" between TZ and PZ. The
  surroundings are deliberately *not* separable by intensity: heterogeneous soft tissue whose mean equals the
  gland's, bright fat lobules, dark obturator internus / levator ani bands, a rectum (dark wall, mixed lumen) behind,
  a bright bladder above, pubic bone in front and bright vessels. A single intensity threshold therefore segments the
  gland poorly (see :func:`best_threshold_dice`) while a CNN can use the capsule, the homogeneity and the shape.
* **Acquisition.** A slight point-spread blur (partial volume), a smooth multiplicative bias field
  ``exp(sum c_ijk P_i(x) P_j(y) P_k(z))`` (Legendre polynomials, total degree <= 3, random coefficients), a random
  global gain and Rician noise ``sqrt((s + n1)^2 + n2^2)`` with sigma 3-5 % of the gland signal.
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
from pipeline.data.storage import save_nifti
from pipeline.data.synthetic_prostate_fields import (
    ellipsoid_distance,
    legendre_bias,
    random_affine,
    rotation,
    smooth_field,
)
from pipeline.errors import DataError

__all__ = [
    "best_threshold_dice",
    "case_seed",
    "make_prostate_case",
    "write_prostate_case",
]

DEFAULT_SHAPE: tuple[int, int, int] = (128, 128, 20)
DEFAULT_SPACING: tuple[float, float, float] = (0.6, 0.6, 3.6)

TE_MS = 100.0
T2_PZ_MS = 149.0
T2_TZ_MS = 125.0


def _t2w(t2_ms: float, pd: float = 1.0) -> float:
    """Relative T2-weighted signal of a tissue."""
    return pd * math.exp(-TE_MS / t2_ms)


PZ_SIGNAL = _t2w(T2_PZ_MS)  # ~0.511
TZ_SIGNAL = _t2w(T2_TZ_MS, pd=0.94)  # ~0.422: denser fibromuscular stroma, slightly lower proton density
GLAND_SIGNAL = 0.5 * (PZ_SIGNAL + TZ_SIGNAL)


# ----------------------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------------------


def case_seed(source_seed: int, case_id: str) -> int:
    """Derive a per-case seed from the data source's seed and the case id (stable across runs and platforms)."""
    digest = hashlib.sha256(f"synthetic_prostate:{int(source_seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ----------------------------------------------------------------------------------------------------------------------
# Case generation
# ----------------------------------------------------------------------------------------------------------------------


def make_prostate_case(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one synthetic prostate T2 case.

    Args:
        seed: any integer; the output is a deterministic function of ``(seed, shape, spacing)``.
        shape: voxel grid (X, Y, Z).
        spacing: voxel size in mm.

    Returns:
        ``(image, label, affine)``: image float32 (X, Y, Z), label uint8 (X, Y, Z) with 0 background, 1 peripheral
        zone, 2 transition zone, and the float64 4x4 voxel-to-world (RAS+, mm) affine.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise DataError(f"synthetic prostate: shape must be 3 positive ints, got {shape}")
    if len(spacing) != 3 or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise DataError(f"synthetic prostate: spacing must be 3 positive numbers, got {spacing}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) & ((1 << 128) - 1)))
    sp = np.asarray(spacing)

    affine = random_affine(rng, shape, spacing)

    # --- gland pose and size (world / anatomical frame: x = L->R, y = P->A, z = I->S) ---------------------------
    a_lr, a_ap, a_si = rng.uniform(17.0, 24.0), rng.uniform(12.0, 17.0), rng.uniform(14.0, 20.0)
    fov_centre = affine[:3, :3] @ ((np.asarray(shape) - 1.0) / 2.0) + affine[:3, 3]
    centre = fov_centre + rng.uniform(-4.0, 4.0, size=3)
    tilt = rotation([1.0, 0.0, 0.0], math.radians(rng.uniform(-12.0, 12.0))) @ rotation(
        [0.0, 0.0, 1.0], math.radians(rng.uniform(-6.0, 6.0)))
    # voxel index -> gland-local coordinates: local = tilt^T (A ijk + t - centre)
    lin = tilt.T @ affine[:3, :3]
    off = tilt.T @ (affine[:3, 3] - centre)
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    grids = [g.astype(np.float32) for g in grids]
    x, y, z = (
        (lin[r, 0] * grids[0] + lin[r, 1] * grids[1] + lin[r, 2] * grids[2] + off[r]).astype(np.float32)
        for r in range(3)
    )

    # Gland: ellipsoid narrowing towards the apex and flattened posteriorly (rectal side).
    taper = rng.uniform(0.08, 0.2)
    zn = np.clip(z / a_si, -1.5, 1.5)
    scale_xy = 1.0 + taper * zn
    flatten = rng.uniform(0.8, 0.92)
    a_ap_local = np.where(y < 0, a_ap * flatten, a_ap)
    qx, qy, qz = x / (a_lr * scale_xy), y / (a_ap_local * scale_xy), z / a_si
    r = np.sqrt(qx * qx + qy * qy + qz * qz)
    grad = np.sqrt((qx / (a_lr * scale_xy)) ** 2 + (qy / (a_ap_local * scale_xy)) ** 2 + (qz / a_si) ** 2)
    d_gland = (r - 1.0) * r / np.maximum(grad, 1e-6)
    gland = d_gland < 0

    # Transition zone: inner ellipsoid shifted anteriorly/superiorly; PZ keeps >= ~6 mm posteriorly.
    tz_lr = a_lr * rng.uniform(0.58, 0.74)
    tz_ap = a_ap * rng.uniform(0.66, 0.8)
    tz_si = a_si * rng.uniform(0.62, 0.8)
    shift_ap = a_ap * rng.uniform(0.25, 0.35)
    posterior_pz = a_ap * flatten - (tz_ap - shift_ap)
    if posterior_pz < 6.0:  # keep the posterior PZ at least 6 mm thick
        shift_ap += 6.0 - posterior_pz
    shift_si = a_si * rng.uniform(0.08, 0.2)
    d_tz = ellipsoid_distance(x, y - shift_ap, z - shift_si, tz_lr, tz_ap, tz_si)
    tz = gland & (d_tz < 0)
    pz = gland & ~tz

    label = np.zeros(shape, dtype=np.uint8)
    label[pz] = 1
    label[tz] = 2

    # --- surroundings -------------------------------------------------------------------------------------------
    texture = smooth_field(rng, shape, 1.8, sp)
    texture2 = smooth_field(rng, shape, 6.0, sp)
    # heterogeneous (fine-grained, high-contrast) soft tissue with the gland's mean intensity
    img = (GLAND_SIGNAL * (1.0 + 0.26 * texture + 0.06 * texture2)).astype(np.float32)

    # bright fat lobules
    fat_field = smooth_field(rng, shape, 4.0, sp)
    fat = fat_field > rng.uniform(0.2, 0.6)
    img[fat] = (0.85 + 0.08 * texture[fat]) * rng.uniform(0.95, 1.1)

    # neurovascular bundles / venous plexus: bright tubes postero-laterally and antero-laterally
    wobble = smooth_field(rng, shape, 8.0, sp)
    for side in (-1.0, 1.0):
        for ang_deg in (rng.uniform(-60.0, -35.0), rng.uniform(35.0, 60.0)):  # postero- / antero-lateral
            ang = math.radians(ang_deg)
            cx = side * (a_lr + 3.5) * math.cos(ang)
            cy = (a_ap + 3.5) * math.sin(ang)
            rad = rng.uniform(1.2, 2.2)
            vessel = (x - cx - 1.5 * wobble) ** 2 + (y - cy) ** 2 < rad**2
            img[vessel] = rng.uniform(0.9, 1.1)

    # obturator internus: dark lateral bands
    for side in (-1.0, 1.0):
        inner = a_lr + rng.uniform(6.0, 10.0) + 2.0 * wobble
        width = rng.uniform(6.0, 10.0)
        band = (side * x > inner) & (side * x < inner + width)
        img[band] = (0.2 + 0.03 * texture[band]) * rng.uniform(0.85, 1.15)

    # levator ani: dark sling hugging the gland posterolaterally and at the apex
    lev_r = np.sqrt((x / (a_lr + 7.0)) ** 2 + ((y + 3.0) / (a_ap + 7.0)) ** 2)
    levator = (lev_r > 1.0) & (lev_r < 1.0 + rng.uniform(0.12, 0.2)) & (z < rng.uniform(0.0, 0.4) * a_si) & (
        y < a_ap * 0.3)
    img[levator] = (0.22 + 0.03 * texture[levator]) * rng.uniform(0.85, 1.15)

    # rectum: dark muscular wall, lumen mixes gas (very dark) and mucus (bright)
    rect_rad = rng.uniform(8.0, 12.0)
    rect_cx = rng.uniform(-3.0, 3.0)
    rect_cy = -(a_ap * flatten + rng.uniform(3.0, 5.0) + rect_rad)
    rr = np.sqrt(((x - rect_cx) / (rect_rad * 1.2)) ** 2 + ((y - rect_cy) / rect_rad) ** 2) * rect_rad
    wall_t = rng.uniform(2.5, 4.0)
    rect_wall = (rr < rect_rad) & (rr >= rect_rad - wall_t)
    lumen = rr < rect_rad - wall_t
    img[rect_wall] = 0.18 * rng.uniform(0.85, 1.15)
    gas = lumen & (fat_field > 0.0)
    img[lumen] = 0.7 + 0.15 * texture[lumen]
    img[gas] = 0.05

    # bladder: bright urine above the base, dark wall
    bl_r = rng.uniform(22.0, 30.0)
    bl_c = np.array([rng.uniform(-3, 3), rng.uniform(0.0, 6.0), a_si + rng.uniform(2.0, 5.0) + bl_r])
    d_bl = np.sqrt((x - bl_c[0]) ** 2 / 1.3 + (y - bl_c[1]) ** 2 + (z - bl_c[2]) ** 2) - bl_r
    bl_wall = (d_bl < 0) & (d_bl > -rng.uniform(1.5, 3.0))
    img[d_bl < 0] = 1.25 * rng.uniform(0.9, 1.1)
    img[bl_wall] = 0.25

    # pubic symphysis in front: thick dark cortex around bright fatty marrow
    pub_y = a_ap + rng.uniform(9.0, 14.0)
    d_pub = np.sqrt((x / 1.6) ** 2 + (y - pub_y - 10.0) ** 2) - 10.0
    img[d_pub < 0] = 0.8 + 0.1 * texture[d_pub < 0]
    img[(d_pub < 0) & (d_pub > -3.0)] = 0.08

    # --- the gland ---------------------------------------------------------------------------------------------
    # patchy periprostatic fat just outside the capsule
    rim = (d_gland >= 0) & (d_gland < rng.uniform(2.5, 4.0) + 1.0 * texture2) & (fat_field > -0.6)
    img[rim] = (0.85 + 0.08 * texture[rim]) * rng.uniform(0.95, 1.1)
    cap_t = rng.uniform(1.4, 2.0)
    capsule = (d_gland >= 0) & (d_gland < cap_t)
    img[capsule] = 0.16 * rng.uniform(0.9, 1.1)
    gland_tex = smooth_field(rng, shape, 1.5, sp)
    img[pz] = PZ_SIGNAL * (1.0 + 0.03 * gland_tex[pz])
    img[tz] = TZ_SIGNAL * (1.0 + 0.03 * gland_tex[tz] + 0.02 * texture2[tz])
    # faint "surgical capsule" on the PZ side of the TZ boundary
    surgical = pz & (d_tz < rng.uniform(0.8, 1.2))
    img[surgical] *= 0.8

    # --- acquisition ----------------------------------------------------------------------------------------------
    psf_mm = np.array([0.35, 0.35, 1.2])
    img = ndimage.gaussian_filter(img, sigma=list(psf_mm / sp), mode="nearest")
    img *= np.exp(legendre_bias(rng, shape, degree=3, strength=0.12))
    gain = rng.uniform(400.0, 900.0)
    img *= gain
    sigma = rng.uniform(0.03, 0.05) * GLAND_SIGNAL * gain
    n1 = rng.standard_normal(shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(shape, dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)
    return img, label, affine


# ----------------------------------------------------------------------------------------------------------------------
# Difficulty measure
# ----------------------------------------------------------------------------------------------------------------------


def best_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Best foreground Dice of a single intensity threshold.

    Foreground is ``label > 0``; the prediction is ``image > t`` or ``image < t``; the maximum over every threshold
    and both directions is returned. Pool several cases by concatenating their flattened arrays.
    """
    values = np.asarray(image, dtype=np.float64).ravel()
    fg = np.asarray(label).ravel() > 0
    if values.shape != fg.shape:
        raise ValueError(f"image and label sizes differ: {values.shape} vs {fg.shape}")
    positives = int(fg.sum())
    if positives == 0:
        raise ValueError("label has no foreground voxel")
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    n = sorted_values.size
    below = np.concatenate([[0], np.cumsum(fg[order], dtype=np.int64)])  # foreground among the k lowest
    k = np.arange(n + 1)
    valid = np.ones(n + 1, dtype=bool)  # cut between k-1 and k only where the value changes
    valid[1:n] = sorted_values[1:] > sorted_values[:-1]
    k = k[valid]
    below = below[valid]
    dice_low = 2.0 * below / (positives + k)  # predict the k lowest voxels
    dice_high = 2.0 * (positives - below) / (positives + (n - k))  # predict the n-k highest voxels
    return float(max(dice_low.max(), dice_high.max()))


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


def _parse_triplet(source: Mapping[str, Any], key: str, default: Sequence[float], kind: type) -> tuple:
    value = source.get(key)
    if value is None:
        return tuple(default)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise DataError(f"synthetic prostate source: '{key}' must be a list of 3 numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataError(f"synthetic prostate source: '{key}' must be a list of 3 numbers, got {value!r}")
        if kind is int and (float(v) != int(v)):
            raise DataError(f"synthetic prostate source: '{key}' must hold integers, got {value!r}")
        if not (v > 0 and math.isfinite(v)):
            raise DataError(f"synthetic prostate source: '{key}' must be positive, got {value!r}")
        out.append(kind(v))
    return tuple(out)


def write_prostate_case(root: Path, entry: dict, source: dict) -> None:
    """Generate the case ``entry['id']`` and write ``entry['image']`` / ``entry['label']`` under ``root``.

    Both paths (relative to ``root``, or absolute) must resolve under ``root``
    (:func:`pipeline.data.manifest.confined_path`); nothing is written otherwise.

    The seed is derived from ``source['seed']`` and the case id with :func:`case_seed`. Optional ``source['shape']``
    (3 ints) and ``source['spacing']`` (3 floats) override the defaults. Both files are NIfTI (``.nii.gz``) written
    atomically, with qform and sform (code 1) set to the generated affine; the image is float32, the label uint8.

    Raises:
        DataError: the entry or source is malformed.
    """
    if not isinstance(entry, Mapping):
        raise DataError(f"synthetic prostate: manifest entry must be a mapping, got {type(entry).__name__}")
    if not isinstance(source, Mapping):
        raise DataError(f"synthetic prostate: source must be a mapping, got {type(source).__name__}")
    for key in ("id", "image", "label"):
        if not isinstance(entry.get(key), str) or not entry.get(key):
            raise DataError(f"synthetic prostate: manifest entry needs a non-empty string '{key}', got {entry!r}")
    seed = source.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"synthetic prostate source: 'seed' must be an integer, got {seed!r}")
    shape = _parse_triplet(source, "shape", DEFAULT_SHAPE, int)
    spacing = _parse_triplet(source, "spacing", DEFAULT_SPACING, float)

    targets = {}  # every target is checked before anything is written
    for key in ("image", "label"):
        targets[key] = confined_path(root, entry[key], f"synthetic prostate: entry {entry['id']!r} {key}")
        if not targets[key].name.endswith((".nii.gz", ".nii")):
            raise DataError(f"synthetic prostate: entry {entry['id']!r} {key} path must end in .nii.gz: {entry[key]}")
    image, label, affine = make_prostate_case(case_seed(seed, entry["id"]), shape=shape, spacing=spacing)
    for key, data, dtype in (("image", image, np.float32), ("label", label, np.uint8)):
        save_nifti(targets[key], data, affine, dtype)
