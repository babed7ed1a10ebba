"""Tests of the dense CRF: agreement of the torch backend with pydensecrf, usefulness, input validation, 2D,
anisotropic spacing, bounding-box restriction and (when a GPU is present) CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pipeline.errors import PipelineError
from pipeline.postprocess.crf import BACKENDS, CRFParams, dense_crf, resolve_backend
from pipeline.postprocess.crf.permutohedral import PermutohedralLattice

pydensecrf = pytest.importorskip("pydensecrf.densecrf")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _case(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    seed: int = 0,
    blur: float = 2.0,
    noise: float = 0.5,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two nested blobs with a sharp intensity edge; probabilities = blurred one-hot + noise, renormalised."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum(((grid[i] - shape[i] / 2) * spacing[i]) ** 2 for i in range(len(shape))))
    rmax = 0.4 * min(s * sp for s, sp in zip(shape, spacing, strict=True))
    gt = np.zeros(shape, np.uint8)
    gt[r < rmax] = 1
    gt[r < rmax / 2] = 2
    levels = np.array([0.0, 1.5, 3.0], np.float32)
    image = np.stack([levels[gt] * (c + 1) for c in range(channels)])
    image += rng.normal(0, 0.15, image.shape).astype(np.float32)
    onehot = np.stack([(gt == k).astype(np.float32) for k in range(3)])
    sig = [blur / sp for sp in spacing]  # blur in mm
    probs = np.stack([gaussian_filter(o, sig) for o in onehot]) + rng.uniform(0, noise, onehot.shape).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    return probs.astype(np.float32), (image[0] if channels == 1 else image), gt


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * ((a == k) & (b == k)).sum() / max(1, (a == k).sum() + (b == k).sum()) for k in (1, 2)]))


# ---------------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"smooth_weight": -1.0}, "smooth_weight"),
        ({"bilateral_weight": float("nan")}, "bilateral_weight"),
        ({"smooth_sigma_mm": 0.0}, "smooth_sigma_mm"),
        ({"bilateral_sigma_mm": -3.0}, "bilateral_sigma_mm"),
        ({"bilateral_sigma_intensity": 0.0}, "bilateral_sigma_intensity"),
        ({"bbox_margin_mm": -1.0}, "bbox_margin_mm"),
    ],
)
def test_params_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CRFParams(**kwargs)


def test_params_defaults_and_backends() -> None:
    p = CRFParams()
    assert (p.iterations, p.smooth_weight, p.smooth_sigma_mm) == (5, 3.0, 3.0)
    assert (p.bilateral_weight, p.bilateral_sigma_mm, p.bilateral_sigma_intensity, p.bbox_margin_mm) == (
        5.0,
        10.0,
        0.5,
        None,
    )
    assert BACKENDS == ("auto", "torch", "pydensecrf")
    assert resolve_backend("auto", "cpu") == "pydensecrf"
    assert resolve_backend("auto", "cuda") == ("torch" if CUDA else "pydensecrf")


# ---------------------------------------------------------------------------------------------------- the lattice
@pytest.mark.parametrize("d", [2, 3, 4, 5])
@pytest.mark.parametrize("dense_table", [True, False])
def test_lattice_message_matches_pydensecrf(d: int, dense_table: bool) -> None:
    """One mean-field step of pydensecrf exposes its normalised filter output; ours equals it up to rounding."""
    rng = np.random.default_rng(d)
    n, k = 3000, 3
    f = (rng.random((d, n)) * 6).astype(np.float32)
    f[0] = np.round(f[0] * 2) / 2  # grid-like values: exercise rounding ties
    v = (rng.random((k, n)) + 0.1).astype(np.float32)
    v /= v.sum(0)
    crf = pydensecrf.DenseCRF(n, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(v)).astype(np.float32))
    crf.addPairwiseEnergy(f, compat=1.0, kernel=pydensecrf.DIAG_KERNEL, normalization=pydensecrf.NORMALIZE_SYMMETRIC)
    ref = np.log(np.array(crf.inference(1))) - np.log(v)  # message + per-point constant
    ref -= ref.mean(0)

    lat = PermutohedralLattice(torch.from_numpy(f), chunk_size=1000, dense_table_limit=2**25 if dense_table else 0)
    norm = (1.0 / torch.sqrt(lat.compute(torch.ones(n)).double() + 1e-20)).float()
    q = torch.softmax(torch.from_numpy(np.log(v)), dim=0)
    ours = (lat.compute(q * norm) * norm).numpy()
    ours -= ours.mean(0)
    assert np.abs(ours - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())


def test_lattice_approximates_gaussian() -> None:
    rng = np.random.default_rng(0)
    f = (rng.random((3, 2000)) * 5).astype(np.float32)
    v = rng.random(2000).astype(np.float32)
    out = PermutohedralLattice(torch.from_numpy(f)).compute(torch.from_numpy(v)).numpy()
    dist2 = ((f.T[:, None, :] - f.T[None, :, :]) ** 2).sum(-1)
    ref = np.exp(-dist2 / 2) @ v
    assert np.corrcoef(out, ref)[0, 1] > 0.99


# ---------------------------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize(
    ("channels", "params"),
    [
        (1, CRFParams()),
        (2, CRFParams(iterations=3, smooth_weight=2.0, bilateral_weight=4.0, bilateral_sigma_intensity=0.8)),
    ],
)
def test_torch_agrees_with_pydensecrf_3d(channels: int, params: CRFParams) -> None:
    spacing = (1.0, 1.2, 2.5)
    probs, image, _ = _case((48, 48, 24), spacing, seed=1, noise=0.8, channels=channels)
    argmax = probs.argmax(0)
    ref = dense_crf(probs, image, spacing, params, backend="pydensecrf")
    out = dense_crf(probs, image, spacing, params, backend="torch", device="cpu")
    assert out.dtype == np.uint8 and out.shape == probs.shape[1:]
    relabeled = ref != argmax
    assert relabeled.mean() > 0.01, "the test case must make pydensecrf relabel a meaningful number of voxels"
    assert (out == ref).mean() >= 0.99
    assert (out == ref)[relabeled].mean() >= 0.90


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_crf_improves_dice(backend: str) -> None:
    spacing = (1.0, 1.0, 2.0)
    probs, image, gt = _case((48, 48, 24), spacing, seed=2, blur=3.0, noise=0.9)
    base = _dice(probs.argmax(0), gt)
    out = dense_crf(probs, image, spacing, CRFParams(), backend=backend)
    assert _dice(out, gt) > base + 0.02, (base, _dice(out, gt))


# ---------------------------------------------------------------------------------------------------- 2D, spacing
def test_2d_both_backends() -> None:
    spacing = (0.8, 0.8)
    probs, image, gt = _case((64, 64), spacing, seed=3, blur=2.5, noise=0.9)
    ref = dense_crf(probs, image, spacing, backend="pydensecrf")
    out = dense_crf(probs, image[None], spacing, backend="torch")  # image with an explicit channel axis
    assert out.shape == (64, 64) and out.dtype == np.uint8
    relabeled = ref != probs.argmax(0)
    assert relabeled.mean() > 0.01
    assert (out == ref).mean() >= 0.99
    assert (out == ref)[relabeled].mean() >= 0.90
    assert _dice(ref, gt) > _dice(probs.argmax(0), gt)


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_spacing_is_used(backend: str) -> None:
    """Uncertain middle slice between confident slices: joined to them at 1 mm, left alone when slices are 1 m
    apart (the kernels, in mm, no longer reach across slices)."""
    shape = (3, 24, 24)
    probs = np.empty((2, *shape), np.float32)
    probs[1] = 0.9
    probs[1, 1] = 0.4  # middle slice leans to background
    probs[0] = 1.0 - probs[1]
    image = np.zeros(shape, np.float32)
    params = CRFParams(iterations=5, smooth_weight=3.0, bilateral_weight=5.0)
    near = dense_crf(probs, image, (1.0, 1.0, 1.0), params, backend=backend)
    far = dense_crf(probs, image, (1000.0, 1.0, 1.0), params, backend=backend)
    assert (near == 1).all()
    assert (far[1] == 0).all() and (far[0] == 1).all() and (far[2] == 1).all()


def test_anisotropic_spacing_agreement() -> None:
    """The mm conversion is the same in both backends (very anisotropic grid)."""
    spacing = (0.5, 0.7, 5.0)
    probs, image, _ = _case((40, 40, 10), spacing, seed=4, noise=0.8)
    ref = dense_crf(probs, image, spacing, backend="pydensecrf")
    out = dense_crf(probs, image, spacing, backend="torch")
    assert (ref != probs.argmax(0)).mean() > 0.01
    assert (out == ref).mean() >= 0.99


# ---------------------------------------------------------------------------------------------------- bounding box
@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_bbox_restriction(backend: str) -> None:
    spacing = (1.0, 1.0, 1.0)
    probs, image, _ = _case((40, 40, 20), spacing, seed=5, noise=0.3)
    # Move the whole foreground to a corner and add noise elsewhere so that the CRF would change the background.
    probs = np.roll(probs, shift=(-12, -12), axis=(1, 2))
    argmax = probs.argmax(0)
    fg = np.argwhere(argmax != 0)
    lo, hi = fg.min(0), fg.max(0)
    out = dense_crf(probs, image, spacing, CRFParams(bbox_margin_mm=2.0), backend=backend)
    inside = np.zeros(argmax.shape, bool)
    inside[tuple(slice(max(0, a - 2), b + 3) for a, b in zip(lo, hi, strict=True))] = True
    assert (out[~inside] == argmax[~inside]).all()
    # No foreground at all: the argmax (all background) comes back.
    bg = np.zeros_like(probs)
    bg[0] = 0.8
    bg[1] = bg[2] = 0.1
    assert (dense_crf(bg, image, spacing, CRFParams(bbox_margin_mm=5.0), backend=backend) == 0).all()


def test_bbox_backends_agree() -> None:
    spacing = (1.0, 1.0, 2.0)
    probs, image, _ = _case((40, 40, 20), spacing, seed=6, noise=0.8)
    params = CRFParams(bbox_margin_mm=4.0)
    ref = dense_crf(probs, image, spacing, params, backend="pydensecrf")
    out = dense_crf(probs, image, spacing, params, backend="torch")
    assert (out == ref).mean() >= 0.99


# ---------------------------------------------------------------------------------------------------- bad inputs
def _small() -> tuple[np.ndarray, np.ndarray]:
    probs = np.full((3, 8, 8, 4), 1 / 3, np.float32)
    return probs, np.zeros((8, 8, 4), np.float32)


def test_rejects_negative_probabilities() -> None:
    probs, image = _small()
    probs[0, 0, 0, 0] = -0.1
    probs[1, 0, 0, 0] += 0.1
    with pytest.raises(PipelineError, match="negative"):
        dense_crf(probs, image, (1, 1, 1))


def test_rejects_nan_probabilities() -> None:
    probs, image = _small()
    probs[1, 2, 2, 2] = np.nan
    with pytest.raises(PipelineError, match="NaN"):
        dense_crf(probs, image, (1, 1, 1))


def test_rejects_probabilities_not_summing_to_one() -> None:
    probs, image = _small()
    probs *= 1.01
    with pytest.raises(PipelineError, match="sum to 1"):
        dense_crf(probs, image, (1, 1, 1))
    # Within the tolerance is accepted.
    probs, image = _small()
    probs[0] += 5e-4
    assert dense_crf(probs, image, (1, 1, 1), backend="pydensecrf").shape == (8, 8, 4)


def test_rejects_shape_mismatch() -> None:
    probs, _ = _small()
    with pytest.raises(PipelineError, match="does not match"):
        dense_crf(probs, np.zeros((8, 8, 5), np.float32), (1, 1, 1))
    with pytest.raises(PipelineError, match="does not match"):
        dense_crf(probs, np.zeros((2, 8, 8, 5), np.float32), (1, 1, 1))


def test_rejects_bad_spacing_and_layout() -> None:
    probs, image = _small()
    with pytest.raises(PipelineError, match="spacing"):
        dense_crf(probs, image, (1, 1))
    with pytest.raises(PipelineError, match="spacing"):
        dense_crf(probs, image, (1, 0, 1))
    with pytest.raises(PipelineError, match="2 or 3 spatial axes"):
        dense_crf(probs[0, 0], image[0, 0], (1,))
    with pytest.raises(PipelineError, match="NaN or infinite"):
        dense_crf(probs, np.full_like(image, np.nan), (1, 1, 1))


def test_rejects_unknown_backend_and_device() -> None:
    probs, image = _small()
    with pytest.raises(PipelineError, match="unknown CRF backend"):
        dense_crf(probs, image, (1, 1, 1), backend="densecrf")
    with pytest.raises(PipelineError, match="device"):
        dense_crf(probs, image, (1, 1, 1), backend="torch", device="tpu")
    with pytest.raises(PipelineError, match="CRFParams"):
        dense_crf(probs, image, (1, 1, 1), params={"iterations": 3})  # type: ignore[arg-type]


@pytest.mark.skipif(CUDA, reason="checks the message when CUDA is missing")
def test_cuda_requested_without_cuda() -> None:
    probs, image = _small()
    with pytest.raises(PipelineError, match="CUDA is not available"):
        dense_crf(probs, image, (1, 1, 1), backend="torch", device="cuda")
    # 'auto' falls back to the CPU reference.
    assert dense_crf(probs, image, (1, 1, 1), backend="auto", device="cuda").shape == (8, 8, 4)


# ---------------------------------------------------------------------------------------------------- CUDA
@needs_cuda
def test_cuda_matches_cpu() -> None:
    spacing = (1.0, 1.2, 2.5)
    probs, image, _ = _case((48, 48, 24), spacing, seed=1, noise=0.8)
    cpu = dense_crf(probs, image, spacing, backend="torch", device="cpu")
    gpu = dense_crf(probs, image, spacing, backend="torch", device="cuda")
    auto = dense_crf(probs, image, spacing, backend="auto", device="cuda")
    ref = dense_crf(probs, image, spacing, backend="pydensecrf")
    assert (gpu == cpu).mean() >= 0.999
    assert (auto == gpu).all()
    relabeled = ref != probs.argmax(0)
    assert (gpu == ref).mean() >= 0.99 and (gpu == ref)[relabeled].mean() >= 0.90


@needs_cuda
def test_cuda_2d() -> None:
    probs, image, _ = _case((64, 64), (1.0, 1.0), seed=3, noise=0.9)
    out = dense_crf(probs, image, (1.0, 1.0), backend="torch", device="cuda")
    assert (out == dense_crf(probs, image, (1.0, 1.0), backend="torch", device="cpu")).mean() >= 0.999
