"""Per-case, per-class overlap and surface metrics in millimetres, from MONAI's metric functions."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot


def case_metrics(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float], metrics: Sequence[str]
) -> dict[int, dict[str, float]]:
    """Dice, 95th-percentile Hausdorff distance and average symmetric surface distance for each foreground class.

    Args:
        pred: predicted label map (X, Y, Z).
        truth: reference label map, same shape.
        num_classes: classes including background.
        spacing: voxel size in mm per axis (distances are spacing-aware).
        metrics: any of ``dice``, ``hd95``, ``asd``.

    Returns:
        ``{class: {metric: value}}``. Dice is NaN when the class is absent from both maps; the distances are NaN
        when it is absent from either (no surface to measure).
    """
    p = one_hot(torch.as_tensor(pred.astype(np.int64))[None, None], num_classes)
    t = one_hot(torch.as_tensor(truth.astype(np.int64))[None, None], num_classes)
    out: dict[int, dict[str, float]] = {c: {} for c in range(1, num_classes)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes; they are reported as NaN
        if "dice" in metrics:
            d = compute_dice(p, t, include_background=False, ignore_empty=True)[0]
            for c in range(1, num_classes):
                out[c]["dice"] = float(d[c - 1])
        sp = [float(s) for s in spacing]
        if "hd95" in metrics:
            h = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=sp)[0]
            for c in range(1, num_classes):
                out[c]["hd95"] = _finite(h[c - 1])
        if "asd" in metrics:
            a = compute_average_surface_distance(p, t, include_background=False, symmetric=True, spacing=sp)[0]
            for c in range(1, num_classes):
                out[c]["asd"] = _finite(a[c - 1])
    return out


def _finite(v: torch.Tensor) -> float:
    x = float(v)
    return x if math.isfinite(x) else float("nan")


def nanmean(values: Sequence[float]) -> float:
    """Mean over the finite values; NaN when there are none."""
    vals = [v for v in values if v == v]
    return float(np.mean(vals)) if vals else float("nan")
