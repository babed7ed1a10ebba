"""Surface distances against values worked out by hand, on masks where the two directions differ.

A 3x3 square (its 8 rim voxels are its surface; the centre is inside) in the middle of a 9x9 square (32 rim
voxels). Every rim voxel of the small square lies exactly 3 voxels from the big square's rim, so the distance
small -> big is 3 everywhere. From the big rim to the small one the distance depends on where one stands: 3 on the
12 voxels facing the small square's sides, sqrt(3² + 1²) on the 8 next to them, sqrt(3² + 2²) on the 8 after, and
sqrt(3² + 3²) at the 4 corners. So:

- ASD (average symmetric surface distance: the mean over the rim voxels of both masks of the distance to the other
  rim) = (8·3 + 12·3 + 8·√10 + 8·√13 + 4·√18) / 40 = 3.27783; one way only it would be 3 (small -> big) or
  3.34729 (big -> small), and the mean of the two one-way means 3.17364 (medpy's ``assd`` convention; the pooled
  mean here is that of Heimann et al. 2009 and MONAI's ``symmetric=True``);
- HD95 (the larger of the two one-way 95th percentiles) = √18 = 4.24264 (big -> small: the 4 corners are the top
  1/8 of its 32 distances); one way small -> big it would be 3.

Both are symmetric in their arguments, in millimetres (a spacing of 2 mm doubles them), and on an anisotropic grid
equal the definition evaluated voxel by voxel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import case_metrics

ASD = (8 * 3 + 12 * 3 + 8 * math.sqrt(10) + 8 * math.sqrt(13) + 4 * math.sqrt(18)) / 40
HD95 = math.sqrt(18)
SMALL_TO_BIG = 3.0
BIG_TO_SMALL = (12 * 3 + 8 * math.sqrt(10) + 8 * math.sqrt(13) + 4 * math.sqrt(18)) / 32


def squares() -> tuple[np.ndarray, np.ndarray]:
    """(small, big): a 3x3 square centred in a 9x9 one, on a 13x13 grid."""
    big = np.zeros((13, 13), np.uint8)
    big[2:11, 2:11] = 1
    small = np.zeros_like(big)
    small[5:8, 5:8] = 1
    return small, big


def rim(mask: np.ndarray) -> np.ndarray:
    """Voxel coordinates of a mask's rim: its voxels with a face neighbour outside it."""
    m = np.pad(mask.astype(bool), 1)
    inner = m.copy()
    for ax in range(m.ndim):
        inner &= np.roll(m, 1, ax) & np.roll(m, -1, ax)
    return np.argwhere((m & ~inner)[tuple(slice(1, -1) for _ in range(m.ndim))])


def by_definition(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """(ASD, HD95) straight from their definitions: every rim voxel's distance in mm to the nearest rim voxel of
    the other mask."""
    ra, rb = rim(a) * np.asarray(spacing), rim(b) * np.asarray(spacing)
    dist = np.sqrt(((ra[:, None, :] - rb[None, :, :]) ** 2).sum(-1))
    a_to_b, b_to_a = dist.min(1), dist.min(0)
    asd = (a_to_b.sum() + b_to_a.sum()) / (len(a_to_b) + len(b_to_a))
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    return float(asd), float(hd95)


def test_the_hand_computed_values_are_the_definitions() -> None:
    """The reference values of this file agree with each other (the test of the test)."""
    small, big = squares()
    assert len(rim(small)) == 8 and len(rim(big)) == 32
    assert by_definition(small, big, (1.0, 1.0)) == pytest.approx((ASD, HD95))
    assert len({round(v, 4) for v in (ASD, SMALL_TO_BIG, BIG_TO_SMALL, (SMALL_TO_BIG + BIG_TO_SMALL) / 2)}) == 4


@pytest.mark.parametrize("order", ["small-vs-big", "big-vs-small"])
def test_asd_and_hd95_are_symmetric_and_match_hand_values(order: str) -> None:
    """Predicting the small square against the big one, or the other way round, gives the same hand values."""
    small, big = squares()
    pred, truth = (small, big) if order == "small-vs-big" else (big, small)
    m = case_metrics(pred, truth, 2, spacing=(1.0, 1.0), metrics=["dice", "hd95", "asd"])[1]
    assert m["dice"] == pytest.approx(2 * 9 / (9 + 81))
    assert m["asd"] == pytest.approx(ASD, abs=1e-5), "ASD must average both directions over both surfaces"
    assert m["hd95"] == pytest.approx(HD95, abs=1e-5), "HD95 must take the larger of the two directions"


def test_distances_are_in_millimetres() -> None:
    """2 mm voxels double every distance; on an anisotropic grid the values are those of the definition."""
    small, big = squares()
    m = case_metrics(small, big, 2, spacing=(2.0, 2.0), metrics=["hd95", "asd"])[1]
    assert m["asd"] == pytest.approx(2 * ASD, abs=1e-5) and m["hd95"] == pytest.approx(2 * HD95, abs=1e-5)
    spacing = (0.7, 2.5)
    asd, hd95 = by_definition(small, big, spacing)
    assert asd != pytest.approx(ASD * 0.7) and asd != pytest.approx(ASD * 2.5)  # the spacing changes the ranking
    for pred, truth in ((small, big), (big, small)):
        m = case_metrics(pred, truth, 2, spacing=spacing, metrics=["hd95", "asd"])[1]
        assert m["asd"] == pytest.approx(asd, abs=1e-5) and m["hd95"] == pytest.approx(hd95, abs=1e-5)


def test_3d_nested_cubes() -> None:
    """The same construction in 3D on an anisotropic grid: a 3x3x3 cube inside a 9x9x9 one (rims: 26 and 386)."""
    big = np.zeros((13, 13, 13), np.uint8)
    big[2:11, 2:11, 2:11] = 1
    small = np.zeros_like(big)
    small[5:8, 5:8, 5:8] = 1
    spacing = (0.8, 1.0, 2.0)
    asd, hd95 = by_definition(small, big, spacing)
    for pred, truth in ((small, big), (big, small)):
        m = case_metrics(pred, truth, 2, spacing=spacing, metrics=["hd95", "asd"])[1]
        assert m["asd"] == pytest.approx(asd, abs=1e-5) and m["hd95"] == pytest.approx(hd95, abs=1e-5)
