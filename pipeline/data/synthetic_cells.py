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

Recipe (version :data:`RECIPE` = 2; a manifest may pin it as ``source["recipe"]``, and the shipped demos keep
its files under ``recipe2/`` so that folders written by an older recipe are never mistaken for current ones):

* **Shapes** (:mod:`pipeline.data.synthetic_nuclei_shapes`): ellipses (2D) or ellipsoids flattened along z (3D,
  z semi-axis 0.55-0.85 of the in-plane radius) with a log-uniform radius of 3.2-7.5 um (2D) or 3-6 um (3D); a
  fifth are elongated 1.5-2x, the rest 1 + |N(0, 0.12)|; the in-plane semi-axes are clipped to 3-9 um (2D) or
  2.5-7.5 um (3D); a random in-plane orientation and a slightly wobbly outline (angular harmonics 2-4).
* **Layout**: the number of nuclei aims at a coverage of 0.30-0.42 (2D) or 0.20-0.30 (3D) of the field, 45-70 %
  of them in clusters of 3-8 (3D: 3-6) nuclei pressed together. A cluster grows from a nucleus in the middle 70 %
  of the field (z: the middle 40 %); each new member sits against a random member at 0.80-0.93 of the sum of
  their radii along the line between the centres (in 3D mostly side by side), at least 0.78 of it from the other
  members, so neighbours overlap slightly and the overlap is split along the curve where the two normalised radii
  are equal: a shared, flat-ish border, no big overlaps. The other nuclei are isolated, with a gap (1.2x) to every
  other one. Nuclei may be cut by the field-of-view border; each keeps its largest connected piece, and pieces
  under 20 pixels / 40 voxels are dropped.
* **Nuclei**: relative brightness 0.6-1.0 (the brightest in-focus nucleus 1.0), and 1-3 dim nuclei (any, never all)
  at 0.25-0.4; a centre-to-edge fall-off of 5-25 %; a two-scale chromatin texture (correlation 0.6 and 1.8 um,
  standard deviation 10-20 %). The interface between touching nuclei is at most slightly dimmer (x0.88-1.0), so
  the semantic mask alone does not separate them. 1-2 isolated nuclei that are not dim (when there are any) are
  **out of focus**: dimmer (x0.5-0.75, at most 0.75) and blurred on their own by a Gaussian of sigma 2-3.5 um
  laterally (twice that along z in 3D); they are labelled like every other nucleus.
* **Background**: an offset of 0.03-0.06 plus a low-frequency haze (a smooth field of correlation ~8 um scaled to
  0-0.06 ... 0-0.18), 2-6 (3D: 2-8) small unlabelled debris specks (radius 0.4-1.2 um, +0.3-0.9, not on nuclei),
  and an uneven illumination multiplying everything: a linear ramp of +-20-40 % in a random direction times a 6 %
  smooth field (correlation ~20 um), at least 0.3. A single global threshold (e.g. Otsu) then misses the dim
  nuclei.
* **Acquisition**: Gaussian PSF (sigma 0.6 um laterally, 1.2 um axially), Poisson photon noise with a random peak of
  60-200 photons, Gaussian read noise (sigma 1.5-3 counts) and a camera offset of 10 counts.

Typical default cases (24 seeds): 2D 15-20 nuclei (mean 17.5), two thirds of them in 1-3 clusters of 3-8 touching
nuclei; 3D 20-29 (mean 25), about half in 1-4 clusters. :func:`generate_cells_case` also returns each nucleus'
brightness, defocus blur and cluster.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from pipeline.data.manifest import confined_path
from pipeline.data.synthetic_nuclei_shapes import neighbour_differs, place_nuclei, rasterise, smooth_noise
from pipeline.errors import DataError

__all__ = [
    "DEFAULT_SHAPE_2D",
    "DEFAULT_SHAPE_3D",
    "DEFAULT_SPACING_2D",
    "DEFAULT_SPACING_3D",
    "RECIPE",
    "CellsCase",
    "case_seed",
    "generate_cells_case",
    "make_cells_case",
    "register",
    "write_cells_2d_case",
    "write_cells_3d_case",
    "write_cells_case",
]

DEFAULT_SHAPE_2D: tuple[int, int] = (128, 128)
DEFAULT_SPACING_2D: tuple[float, float] = (0.0005, 0.0005)  # mm (0.5 um)
DEFAULT_SHAPE_3D: tuple[int, int, int] = (64, 64, 24)
DEFAULT_SPACING_3D: tuple[float, float, float] = (0.0005, 0.0005, 0.001)  # mm (0.5 x 0.5 x 1.0 um)

RECIPE = 2  # bump when the output for a given seed changes; manifests may pin it as source["recipe"]
CAMERA_OFFSET = 10.0
_MIN_SIZE = {2: 20, 3: 40}  # pixels / voxels: smaller fragments (border cuts) are dropped


def case_seed(source_seed: int, case_id: str, spatial_dims: int = 2) -> int:
    """Derive a per-case seed from the data source's seed and the case id (stable across runs and platforms)."""
    digest = hashlib.sha256(f"synthetic_cells_{int(spatial_dims)}d:{int(source_seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


class CellsCase(NamedTuple):
    """One generated case: the arrays :func:`make_cells_case` returns, and what each nucleus was made of.

    ``nuclei`` maps a property to an array indexed by instance id (index 0, the background, holds 0 / -1):
    ``brightness`` (relative peak intensity before illumination, the brightest in-focus nucleus 1.0),
    ``out_of_focus`` (bool), ``blur_um`` (the extra defocus blur's sigma; 0 when in focus), ``cluster`` (the cluster
    it was placed in, ``-1`` for an isolated nucleus).
    """

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray
    affine: np.ndarray
    nuclei: dict[str, np.ndarray]


def _appearance(rng: np.random.Generator, n: int, cluster: np.ndarray) -> dict[str, np.ndarray]:
    """Per-nucleus brightness (1-3 dim ones), 1-2 out-of-focus isolated ones, and the centre-to-edge fall-off."""
    bright = np.zeros(n + 1)
    bright[1:] = rng.uniform(0.6, 1.0, size=n)
    n_dim = min(max(n - 1, 0), int(rng.integers(1, 4)))
    dim = 1 + rng.choice(n, size=n_dim, replace=False) if n_dim else np.zeros(0, dtype=np.int64)
    normal = np.arange(n + 1) > 0
    normal[dim] = False
    isolated = np.nonzero(normal & (cluster < 0))[0]
    n_oof = min(len(isolated), int(rng.integers(1, 3)))
    oof = rng.choice(isolated, size=n_oof, replace=False) if n_oof else np.zeros(0, dtype=np.int64)
    blur = np.zeros(n + 1)
    blur[oof] = rng.uniform(2.0, 3.5, size=n_oof)
    in_focus = normal & (blur == 0)
    if n:  # the brightest in-focus nucleus at 1.0
        bright[normal] /= bright[in_focus].max() if in_focus.any() else bright[normal].max()
    bright[oof] = np.minimum(bright[oof] * rng.uniform(0.5, 0.75, size=n_oof), 0.75)
    bright[dim] = rng.uniform(0.25, 0.4, size=n_dim)
    dome = rng.uniform(0.05, 0.25, size=n + 1)
    return {"brightness": bright, "out_of_focus": blur > 0, "blur_um": blur, "cluster": cluster, "dome": dome}


def _defocus(nuc: np.ndarray, instances: np.ndarray, blur_um: np.ndarray, psf_ratio: np.ndarray,
             sp_um: np.ndarray) -> np.ndarray:
    """The in-focus nuclei, plus each out-of-focus nucleus blurred on its own (Gaussian, sigma ``blur_um`` laterally
    and ``psf_ratio`` times that per axis)."""
    out = np.where(blur_um[instances] > 0, np.float32(0.0), nuc).astype(np.float32)
    objects = ndimage.find_objects(instances)
    for i in np.nonzero(blur_um > 0)[0]:
        sigma = blur_um[i] * psf_ratio / sp_um
        pad = np.ceil(3 * sigma).astype(int)
        sl = objects[i - 1]
        win = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(sl, pad, instances.shape))
        layer = np.where(instances[win] == i, nuc[win], np.float32(0.0))
        out[win] += ndimage.gaussian_filter(layer, sigma=list(sigma), mode="constant")
    return out


def _check_geometry(shape: Sequence[int], spacing: Sequence[float] | None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3) or any(s < 8 for s in shape):
        raise DataError(f"synthetic cells: shape must be 2 or 3 ints >= 8, got {shape}")
    if spacing is None:
        spacing = DEFAULT_SPACING_2D if ndim == 2 else DEFAULT_SPACING_3D
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise DataError(f"synthetic cells: spacing must be {ndim} positive numbers (mm), got {spacing}")
    return shape, spacing


def generate_cells_case(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE_2D,
    spacing: Sequence[float] | None = None,
    boundary_class: bool = False,
) -> CellsCase:
    """:func:`make_cells_case` with each nucleus' properties (:class:`CellsCase`); same arguments and arrays."""
    shape, spacing = _check_geometry(shape, spacing)
    ndim = len(shape)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) & ((1 << 128) - 1)))
    sp_um = np.asarray(spacing) * 1000.0  # um per pixel
    extent_um = np.asarray(shape) * sp_um

    nuclei = place_nuclei(rng, ndim, extent_um)
    instances, index, q = rasterise(nuclei, shape, sp_um, _MIN_SIZE[ndim])
    n = int(instances.max())
    fg = instances > 0
    interface = neighbour_differs(instances)
    label = fg.astype(np.uint8)
    if boundary_class:
        label[interface] = 2
    info = _appearance(rng, n, np.array([-1] + [nuclei[i].cluster for i in index[1:]], dtype=np.int64))

    # --- nuclei: brightness x centre-to-edge fall-off x chromatin texture; interfaces at most slightly dimmer -------
    fine = smooth_noise(rng, shape, [max(0.6 / s, 0.5) for s in sp_um])
    coarse = smooth_noise(rng, shape, [max(1.8 / s, 0.5) for s in sp_um])
    texture = 1.0 + rng.uniform(0.10, 0.20) * (0.6 * fine + 0.8 * coarse)
    profile = (info["brightness"][instances] * (1.0 - info["dome"][instances] * q * q)).astype(np.float32)
    nuc = np.where(fg, np.clip(profile * texture, 0.0, None), np.float32(0.0)).astype(np.float32)
    nuc[interface] *= np.float32(rng.uniform(0.88, 1.0))
    psf_um = np.array([0.6, 0.6, 1.2][:ndim])
    img = _defocus(nuc, instances, info["blur_um"], psf_um / psf_um[0], sp_um)

    # --- background: offset plus low-frequency haze, unlabelled debris specks, uneven illumination -------------------
    haze = smooth_noise(rng, shape, [max(8.0 / s, 1.0) for s in sp_um])
    haze = (haze - haze.min()) / (float(np.ptp(haze)) + 1e-6)
    img += np.float32(rng.uniform(0.03, 0.06)) + np.float32(rng.uniform(0.06, 0.18)) * haze
    grids = np.ogrid[tuple(slice(0, n_) for n_ in shape)]
    for _ in range(int(rng.integers(2, 7 if ndim == 2 else 9))):
        centre = rng.uniform(0, 1, size=ndim) * np.asarray(shape)
        rad_um = rng.uniform(0.4, 1.2)
        d2 = sum(((g + 0.5 - centre[d]) * sp_um[d]) ** 2 for d, g in enumerate(grids))
        img[(d2 < rad_um**2) & ~fg] += np.float32(rng.uniform(0.3, 0.9))
    direction = rng.normal(size=ndim) * ([1.0, 1.0, 0.3][:ndim])
    ramp = sum(((g + 0.5) / n_ - 0.5) * direction[d] for d, (g, n_) in enumerate(zip(grids, shape)))
    ramp = ramp / (0.5 * float(np.abs(direction).sum()) + 1e-12)
    illum = (1.0 + rng.uniform(0.2, 0.4) * ramp) * (1.0 + 0.06 * smooth_noise(rng, shape, [max(20.0 / s, 1.0)
                                                                                                for s in sp_um]))
    img = (img * np.clip(illum, 0.3, None)).astype(np.float32)

    # --- acquisition --------------------------------------------------------------------------------------------------
    img = ndimage.gaussian_filter(img, sigma=list(psf_um / sp_um), mode="nearest")
    peak = rng.uniform(60.0, 200.0)
    counts = rng.poisson(np.clip(img, 0, None) * peak).astype(np.float32)
    read = rng.uniform(1.5, 3.0)
    counts += CAMERA_OFFSET + rng.standard_normal(shape).astype(np.float32) * read
    image = counts.astype(np.float32)

    affine = np.eye(4)
    for d in range(ndim):
        affine[d, d] = spacing[d]
    del info["dome"]
    return CellsCase(image, label, instances, affine, info)


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

    Raises:
        DataError: the shape or spacing is malformed.
    """
    case = generate_cells_case(seed, shape, spacing, boundary_class)
    return case.image, case.label, case.instances, case.affine


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
    (mm) and ``source['boundary_class']`` (bool) override the defaults; an optional ``source['recipe']`` must be
    :data:`RECIPE` (a manifest written for another recipe is refused instead of getting different data).

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
    recipe = source.get("recipe", RECIPE)
    if isinstance(recipe, bool) or not isinstance(recipe, int) or recipe != RECIPE:
        raise DataError(f"{what} source: 'recipe' {recipe!r} cannot be generated: this generator makes recipe "
                        f"{RECIPE} (files made by an older recipe live under other paths; regenerate them)")
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
