"""Mapping probabilities back to the scan's grid slab by slab agrees with MONAI's ``Invertd`` of the whole
preprocessing chain, for oblique, LPS and anisotropic scans, with resampling and foreground crops, 3D and 2D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pipeline.config.schema import InferConfig, PreprocessConfig
from pipeline.inference import predictor as predictor_module
from pipeline.inference.predictor import Predictor, resample_to_grid
from tests.utils import AFFINES, make_affine, rotation


def smooth_probs(shape: tuple[int, ...], k: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    logits = np.stack([gaussian_filter(rng.normal(0, 1, shape), 2.0) * 8 for _ in range(k)])
    p = np.exp(logits - logits.max(0))
    return torch.as_tensor(p / p.sum(0), dtype=torch.float16)


def image_for(shape: tuple[int, ...]) -> np.ndarray:
    x = np.zeros(shape, np.float32)
    x[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 100  # a body to crop around
    return x + 1


CASES = [
    ("oblique", AFFINES["oblique"], (26, 22, 10), [1.3, 0.9, 2.0], False),
    ("lps", AFFINES["lps"], (24, 20, 12), [1.5, 1.5, 2.0], True),
    ("anisotropic", AFFINES["anisotropic"], (30, 28, 8), [1.2, 1.2, 3.6], False),
    ("lps-no-resampling", AFFINES["lps"], (24, 20, 12), None, True),
    ("2d", make_affine((0.5, 0.4, 1.0), rotation((0, 0, 1), 20.0)), (40, 33), [0.8, 0.8], False),
]


def prepare_case(affine, shape, spacing, crop):
    """A predictor (identity network) with RAS reorientation, optional resampling and crop, and the prepared scan."""
    nd = len(shape)
    cfg = PreprocessConfig(orientation="RAS", spacing=spacing, crop_foreground=crop, crop_margin=1,
                           intensity={"mode": "none"}, patch={"size": [8] * nd})
    pred = Predictor(torch.nn.Identity(), cfg, InferConfig(roi_size=[8] * nd), torch.device("cpu"), nd)
    return pred, pred.prepare(image_for(shape), affine)


@pytest.mark.parametrize(("name", "affine", "shape", "spacing", "crop"), CASES, ids=[c[0] for c in CASES])
def test_matches_monai_invertd(name, affine, shape, spacing, crop, monkeypatch):
    pred, prepared = prepare_case(affine, shape, spacing, crop)
    probs = smooth_probs(tuple(prepared["image"].shape[1:]))
    reference = pred._invert(prepared, probs.float(), nearest=False).numpy()  # MONAI's inverse, all classes
    monkeypatch.setattr(predictor_module, "SLAB_VOXELS", 97)  # many slabs, some of odd size
    labels, kept = resample_to_grid(probs, prepared["image"].affine, affine, shape, True)
    assert labels.shape == shape and kept is not None and kept.shape == (3, *shape)
    inside = reference.sum(0) > 0.5  # MONAI pads a crop's outside with zeros; ours calls it background
    assert np.all(labels[~inside] == 0)
    edge = np.zeros(shape, bool)  # MONAI and grid_sample may pad the last half voxel differently
    edge[tuple(slice(1, -1) for _ in shape)] = True
    both = inside & edge
    np.testing.assert_allclose(kept[:, both].astype(np.float32), reference[:, both], atol=2e-3)
    assert np.mean(labels[both] == reference.argmax(0)[both]) > 0.995


def _both_paths(probs, source_affine, target_affine, shape, monkeypatch):
    fast = resample_to_grid(probs, source_affine, target_affine, shape, True)
    with monkeypatch.context() as m:
        m.setattr(predictor_module, "_axis_permutation", lambda *_: None)  # force grid_sample
        general = resample_to_grid(probs, source_affine, target_affine, shape, True)
    return fast, general


@pytest.mark.parametrize(("name", "affine", "shape", "spacing", "crop"), CASES, ids=[c[0] for c in CASES])
def test_axis_by_axis_sampling_equals_grid_sample(name, affine, shape, spacing, crop, monkeypatch):
    nd = len(shape)
    _, prepared = prepare_case(affine, shape, spacing, crop)
    src = np.asarray(prepared["image"].affine)
    m = np.linalg.inv(src) @ np.asarray(affine)
    assert predictor_module._axis_permutation(m[:nd, :nd]) is not None  # reorient + resample: one axis each
    probs = smooth_probs(tuple(prepared["image"].shape[1:]))
    monkeypatch.setattr(predictor_module, "SLAB_VOXELS", 97)
    (lab_fast, fast), (lab_general, general) = _both_paths(probs, src, affine, shape, monkeypatch)
    np.testing.assert_allclose(fast.astype(np.float32), general.astype(np.float32), atol=2e-3)
    assert np.mean(lab_fast == lab_general) > 0.999


def test_axis_by_axis_sampling_with_permuted_flipped_axes(monkeypatch):
    """Target axes x, y, z read source axes z, x, y, two of them mirrored, with different scales and offsets; part
    of the target lies outside the source (background)."""
    source = np.eye(4)
    target = np.zeros((4, 4))
    target[2, 0], target[0, 1], target[1, 2] = 0.7, -1.3, 2.1  # source voxel = target @ (i, j, k, 1)
    target[:3, 3] = [20.5, 3.2, -1.0]
    target[3, 3] = 1.0
    probs = smooth_probs((18, 14, 9), k=4, seed=3)
    shape = (15, 12, 8)
    assert predictor_module._axis_permutation(target[:3, :3]) == [2, 0, 1]
    (lab_fast, fast), (lab_general, general) = _both_paths(probs, source, target, shape, monkeypatch)
    np.testing.assert_allclose(fast.astype(np.float32), general.astype(np.float32), atol=2e-3)
    assert np.array_equal(lab_fast, lab_general)
    assert 0 < np.mean(lab_fast == 0) < 1 and np.all(fast[0][lab_fast == 0] >= 0)


@pytest.mark.parametrize("mode", ["zscore", "percentile"])
def test_prepare_leaves_the_callers_scan_as_it_was(mode: str) -> None:
    """A float32 scan already in RAS with no resampling is not normalised in place: ``pipeline infer --crf`` gives
    the CRF the scan's own intensities, as the workflow's postprocess stage does."""
    cfg = PreprocessConfig(orientation="RAS", intensity={"mode": mode}, patch={"size": [8, 8, 8]})
    pred = Predictor(torch.nn.Identity(), cfg, InferConfig(roi_size=[8, 8, 8]), torch.device("cpu"), 3)
    scan = image_for((12, 10, 8))
    before = scan.copy()
    prepared = pred.prepare(scan, np.eye(4))
    assert not np.allclose(prepared["image"].numpy()[0], before)  # the model sees normalised values
    np.testing.assert_array_equal(scan, before)
