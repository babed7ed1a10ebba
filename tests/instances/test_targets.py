"""Training targets from instance maps: the touching boundary, the U-Net border weights (against a brute-force
evaluation of the paper's formula) and the normalised distance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.instances.targets import border_weight_map, normalised_distance, three_class_labels


def two_touching() -> np.ndarray:
    inst = np.zeros((20, 30), np.uint16)
    inst[5:15, 4:14] = 1
    inst[5:15, 14:24] = 2  # shares the seam between columns 13 and 14
    return inst


def test_touching_boundary_is_both_sides_of_the_seam() -> None:
    lab = three_class_labels(two_touching(), boundary_px=2)
    assert set(np.unique(lab)) == {0, 1, 2}
    rows = lab[10]
    # Columns 12, 13 (object 1) and 14, 15 (object 2) are within 2 px of the other object.
    assert list(rows[11:17]) == [1, 2, 2, 2, 2, 1]
    assert (lab[two_touching() == 0] == 0).all()


def test_isolated_objects_are_all_interior_and_narrow_gaps_are_boundary() -> None:
    inst = np.zeros((20, 40), np.uint16)
    inst[2:8, 2:8] = 1  # alone
    inst[10:18, 10:18] = 2
    inst[10:18, 19:27] = 3  # one background column between 2 and 3
    lab = three_class_labels(inst, boundary_px=2)
    assert (lab[inst == 1] == 1).all()
    assert lab[14, 17] == 2 and lab[14, 19] == 2 and lab[14, 18] == 0


def test_anisotropic_spacing_narrows_the_boundary_along_coarse_axes() -> None:
    inst = np.zeros((12, 12, 12), np.uint16)
    inst[2:10, 2:10, 2:6] = 1
    inst[2:10, 2:10, 6:10] = 2  # touching along z
    iso = three_class_labels(inst, 2)
    aniso = three_class_labels(inst, 2, spacing=(0.5, 0.5, 1.5))  # a z step is 3 fine pixels
    assert (iso[5, 5, 2:10] == [1, 1, 2, 2, 2, 2, 1, 1]).all()
    assert (aniso[5, 5, 2:10] == [1, 1, 1, 2, 2, 1, 1, 1]).all()


def brute_force_weights(inst: np.ndarray, labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    ids = [i for i in np.unique(inst) if i]
    dist = np.stack([ndimage.distance_transform_edt(inst != i) for i in ids])
    dist.sort(axis=0)
    d1, d2 = dist[0], dist[1] if len(ids) > 1 else np.full(inst.shape, np.inf)
    classes, counts = np.unique(labels, return_counts=True)
    wc = np.zeros(inst.shape)
    for c, n in zip(classes, counts):
        wc[labels == c] = labels.size / (len(classes) * n)
    return wc + w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))


def test_border_weights_follow_the_unet_formula() -> None:
    rng = np.random.default_rng(0)
    inst = np.zeros((48, 48), np.uint16)
    for i in range(1, 7):
        x, y = rng.integers(6, 42, size=2)
        inst[max(0, x - 5):x + 5, max(0, y - 4):y + 4] = i
    labels = three_class_labels(inst, 2)
    got = border_weight_map(inst, labels, w0=10.0, sigma_px=5.0)
    want = brute_force_weights(inst, labels, 10.0, 5.0)
    np.testing.assert_allclose(got, want, atol=2e-3 * 10)  # the 4-sigma window cuts terms below 3e-4 * w0


def test_border_weights_peak_in_the_gap_between_near_objects() -> None:
    inst = np.zeros((20, 40), np.uint16)
    inst[5:15, 5:15] = 1
    inst[5:15, 17:27] = 2  # two background columns between them
    labels = (inst > 0).astype(np.uint8)
    w = border_weight_map(inst, labels, w0=10.0, sigma_px=5.0, class_balance=False)
    gap, far = w[10, 15], w[10, 35]
    assert gap == pytest.approx(1 + 10 * np.exp(-(1 + 2) ** 2 / 50), rel=1e-4)
    assert far < 1.01 and gap > 8 * far


def test_normalised_distance_is_one_at_each_centre_and_zero_outside() -> None:
    inst = two_touching()
    d = normalised_distance(inst)
    assert d.dtype == np.float32 and (d[inst == 0] == 0).all()
    for i in (1, 2):
        assert d[inst == i].max() == pytest.approx(1.0) and d[inst == i].min() > 0
    # The seam is near zero on both sides, so the two cores stay apart.
    assert d[10, 13] < 0.25 and d[10, 14] < 0.25
