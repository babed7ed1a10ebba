"""Cell object metrics and OCT boundary errors on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.domain import boundary_errors, boundary_rows, instance_metrics, instances_from_semantic


def test_instance_matching() -> None:
    truth = np.zeros((20, 20), int)
    truth[2:6, 2:6] = 1  # 16 px
    truth[10:15, 10:15] = 2  # missed
    pred = np.zeros_like(truth)
    pred[2:6, 2:7] = 5  # IoU 16/20 with truth 1
    pred[16:19, 0:3] = 7  # false positive
    m = instance_metrics(pred, truth)
    assert m["f1"] == pytest.approx(0.5) and m["mean_matched_iou"] == pytest.approx(0.8)
    assert instance_metrics(truth, truth)["f1"] == 1.0
    assert math.isnan(instance_metrics(np.zeros_like(truth), truth)["mean_matched_iou"])


def test_touching_objects_merge_in_connected_components() -> None:
    sem = np.zeros((10, 10), int)
    sem[2:5, 2:5] = 1
    sem[5:8, 2:5] = 1  # touches the first
    sem[2:4, 7:9] = 1
    assert instances_from_semantic(sem).max() == 2


def test_boundary_rows_and_errors_in_micrometres() -> None:
    # 4 columns, 12 rows deep; boundary k at row 1 + k, shifted by 1 row in the prediction.
    truth = np.zeros((4, 12), np.uint8)
    for k in range(8):
        truth[:, 1 + k:] = k + 1
    pred = np.roll(truth, 1, axis=1)
    pred[:, 0] = 0
    rows = boundary_rows(truth)
    np.testing.assert_array_equal(rows[:, 0], np.arange(1, 9))
    errs = boundary_errors(pred, rows, axial_mm=0.004)
    assert errs["ILM_px"] == pytest.approx(1.0) and errs["BM_um"] == pytest.approx(4.0)
    fluid = truth.copy()
    fluid[:, 4] = 9  # fluid pixels are skipped, not read as a layer
    assert boundary_rows(fluid)[3, 0] == 5


def test_watershed_splits_touching_discs() -> None:
    from pipeline.evaluation.domain import instances_by_watershed

    x, y = np.meshgrid(np.arange(40), np.arange(30), indexing="ij")
    a = (x - 12) ** 2 + (y - 15) ** 2 < 64
    b = (x - 26) ** 2 + (y - 15) ** 2 < 64  # overlaps a: one connected component
    truth = np.where(a, 1, 0) + np.where(b & ~a, 2, 0)
    sem = (truth > 0).astype(int)
    assert instances_from_semantic(sem).max() == 1
    split = instances_by_watershed(sem)
    assert split.max() == 2
    assert instance_metrics(split, truth)["f1"] == 1.0
