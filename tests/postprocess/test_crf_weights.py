"""The CRF's pairwise weights are applied at their strength, in both backends: a weight 2x or 10x off (or half)
changes the labels, and these tests see it.

The inputs are weak, noisy probabilities, where the pairwise term decides voxels (on confident inputs any weight
gives the argmax). Two checks:

- **A mean-field step by hand.** With kernel widths far larger than the grid (``1e6`` mm and intensity units) both
  Gaussian kernels are constant over the grid, and with the symmetric normalisation (``norm_i = 1 / sqrt(sum_j
  k_ij)``) the message a voxel gets is exactly the mean of ``Q`` over the grid, whatever the kernel's scale. One
  mean-field step is then ``Q = softmax(log p + w * mean(p))`` with ``w`` the sum of the enabled kernels' weights
  (Potts compatibility ``-w * Q``, as in pydensecrf's ``PottsCompatibility``): computed here in NumPy, compared
  voxel for voxel with each backend, each kernel alone and both together.
- **The backends agree on local kernels** (the default widths) on weak probabilities: the torch backend's labels
  are pydensecrf's at the same weights (all but a few voxels of rounding), while the same backend at twice or half a
  weight differs on several percent of the voxels.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.postprocess.crf import CRFParams, dense_crf

pytest.importorskip("pydensecrf.densecrf")

BACKENDS = ("pydensecrf", "torch")
WIDE = {"smooth_sigma_mm": 1e6, "bilateral_sigma_mm": 1e6, "bilateral_sigma_intensity": 1e6}
KERNELS = {"smooth": (3.0, 0.0), "bilateral": (0.0, 5.0), "both": (3.0, 5.0)}  # (smooth_weight, bilateral_weight)
FACTORS = (0.5, 2.0, 10.0)  # the mistakes a test must see


def weak_probabilities(shape: tuple[int, ...], seed: int = 2) -> np.ndarray:
    """Two classes: 70% of the voxels lean to background (p1 in 0.05-0.15), the rest lean to class 1 by a logit
    spread evenly over 0-8, so that a pairwise pull of any size moves some of them."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    background = rng.random(n) < 0.7
    p1 = np.where(background, rng.uniform(0.05, 0.15, n), 1 / (1 + np.exp(-rng.uniform(0.0, 8.0, n))))
    return np.stack([1 - p1, p1]).reshape(2, *shape).astype(np.float32)


def one_step(probs: np.ndarray, weight: float) -> np.ndarray:
    """One mean-field step with a kernel that is constant over the grid: ``softmax(log p + w * mean(p))``."""
    p = probs.astype(np.float64)
    mean = p.reshape(p.shape[0], -1).mean(1).reshape(-1, *([1] * (p.ndim - 1)))
    logits = np.log(p) + weight * mean
    q = np.exp(logits - logits.max(0))
    return q / q.sum(0)


@pytest.mark.parametrize("shape, spacing", [((8, 8, 4), (0.8, 1.1, 2.5)), ((12, 12), (0.5, 0.7))],
                         ids=["3d", "2d"])
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_mean_field_step_matches_the_hand_computation(backend: str, kernel: str, shape: tuple[int, ...],
                                                          spacing: tuple[float, ...]) -> None:
    smooth, bilateral = KERNELS[kernel]
    probs = weak_probabilities(shape)
    image = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    q = one_step(probs, smooth + bilateral)
    expected = q.argmax(0)
    assert np.abs(q[1] - q[0]).min() > 1e-3, "a voxel too close to a tie to tell"
    for factor in FACTORS:  # the test of the test: a wrong weight gives other labels
        assert (one_step(probs, (smooth + bilateral) * factor).argmax(0) != expected).sum() >= 3, factor
    params = CRFParams(iterations=1, smooth_weight=smooth, bilateral_weight=bilateral, **WIDE)
    labels = dense_crf(probs, image, spacing, params, backend=backend)
    wrong = int((labels != expected).sum())
    assert wrong == 0, (f"{backend}: {wrong} of {expected.size} voxels differ from one mean-field step with "
                        f"weight {smooth + bilateral}; is a pairwise weight applied at another strength?")


def test_backends_agree_on_weak_probabilities_and_a_wrong_weight_shows() -> None:
    rng = np.random.default_rng(0)
    shape, spacing = (24, 24, 12), (1.0, 1.0, 2.0)
    grid = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum(((grid[i] - shape[i] / 2) * spacing[i]) ** 2 for i in range(3)))
    inside = (r < 7).astype(np.float32)
    image = (inside * 2.0 + rng.normal(0, 0.5, shape)).astype(np.float32)
    p1 = 1 / (1 + np.exp(-((inside - 0.5) * 0.6 + rng.normal(0, 0.8, shape))))  # weak and noisy
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    params = CRFParams(iterations=3)

    def crf(backend: str, smooth: float = 1.0, bilateral: float = 1.0) -> np.ndarray:
        p = params.model_copy(update={"smooth_weight": params.smooth_weight * smooth,
                                      "bilateral_weight": params.bilateral_weight * bilateral})
        return dense_crf(probs, image, spacing, p, backend=backend)

    ref = crf("pydensecrf")
    assert (ref != probs.argmax(0)).mean() > 0.1, "the CRF must relabel many voxels for the weights to matter"
    assert (crf("torch") == ref).mean() >= 0.998
    for smooth, bilateral in ((2.0, 1.0), (0.5, 1.0), (1.0, 2.0), (1.0, 0.5)):
        changed = (crf("pydensecrf", smooth, bilateral) != ref).mean()
        assert changed > 0.01, (smooth, bilateral, changed)  # far more than the backends' disagreement
