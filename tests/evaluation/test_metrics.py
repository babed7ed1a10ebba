"""Metrics in millimetres on anisotropic grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import case_metrics, nanmean


def test_dice_and_distances_use_spacing() -> None:
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[5:15, 5:15, 3:7] = 1
    pred = np.zeros_like(truth)
    pred[7:17, 5:15, 3:7] = 1  # shifted by 2 voxels along x
    m = case_metrics(pred, truth, 2, spacing=(0.5, 1.0, 3.0), metrics=["dice", "hd95", "asd"])[1]
    assert m["dice"] == pytest.approx(2 * 8 * 10 * 4 / (2 * 400))
    assert m["hd95"] == pytest.approx(1.0, abs=1e-6)  # 2 voxels of 0.5 mm
    m2 = case_metrics(pred, truth, 2, spacing=(2.0, 1.0, 3.0), metrics=["hd95"])[1]
    assert m2["hd95"] == pytest.approx(4.0, abs=1e-6)


def test_absent_classes_are_nan_not_zero() -> None:
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:5, 2:5, 2:5] = 1
    m = case_metrics(truth.copy(), truth, 3, spacing=(1, 1, 1), metrics=["dice", "hd95"])
    assert m[1]["dice"] == pytest.approx(1.0) and m[1]["hd95"] == pytest.approx(0.0)
    assert math.isnan(m[2]["dice"]) and math.isnan(m[2]["hd95"])
    assert nanmean([1.0, float("nan"), 0.5]) == pytest.approx(0.75)
