"""Domain metrics: object-level scores for cells, boundary position errors for OCT layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

# Duke DME boundary order; boundary k separates label k (above) from label k + 1 (below).
OCT_BOUNDARIES = ("ILM", "NFL/GCL", "IPL/INL", "INL/OPL", "OPL/ONL", "ISM/ISE", "OS/RPE", "BM")
OCT_FLUID = 9


def instances_from_semantic(labels: np.ndarray, foreground: Sequence[int] = (1,)) -> np.ndarray:
    """Instances as connected components (full connectivity) of the foreground classes."""
    mask = np.isin(labels, list(foreground))
    inst, _ = ndimage.label(mask, structure=np.ones((3,) * labels.ndim))
    return inst


def instances_by_watershed(labels: np.ndarray, foreground: Sequence[int] = (1,), min_distance_px: int = 3
                           ) -> np.ndarray:
    """Split touching objects: watershed of the negated distance transform of the foreground, seeded at its local
    maxima (scikit-image), restricted to the foreground."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = np.isin(labels, list(foreground))
    if not mask.any():
        return np.zeros(labels.shape, np.int32)
    dist = ndimage.distance_transform_edt(mask)
    regions, _ = ndimage.label(mask, structure=np.ones((3,) * labels.ndim))
    peaks = peak_local_max(dist, min_distance=min_distance_px, labels=regions, exclude_border=False)
    markers = np.zeros(labels.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask)


def instance_metrics(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Match predicted to reference instances one-to-one (Hungarian on IoU).

    Args:
        pred: predicted instance ids (0 background).
        truth: reference instance ids (0 background).
        iou_threshold: a matched pair counts as a true positive at IoU ≥ this.

    Returns:
        ``f1`` (at the threshold), ``precision``, ``recall``, ``mean_matched_iou`` (over true positives; NaN if
        none), ``n_pred``, ``n_true``.
    """
    p_ids = np.unique(pred[pred > 0])
    t_ids = np.unique(truth[truth > 0])
    n_p, n_t = len(p_ids), len(t_ids)
    if n_p == 0 or n_t == 0:
        f1 = 1.0 if n_p == n_t else 0.0
        return {"f1": f1, "precision": f1, "recall": f1, "mean_matched_iou": float("nan"),
                "n_pred": float(n_p), "n_true": float(n_t)}
    # Intersections from the joint histogram of (pred id, truth id) over voxels where either is set.
    both = (pred > 0) | (truth > 0)
    p_idx = np.searchsorted(p_ids, pred[both])
    t_idx = np.searchsorted(t_ids, truth[both])
    p_valid = pred[both] > 0
    t_valid = truth[both] > 0
    inter = np.zeros((n_p, n_t))
    np.add.at(inter, (p_idx[p_valid & t_valid], t_idx[p_valid & t_valid]), 1)
    p_area = np.bincount(p_idx[p_valid], minlength=n_p)
    t_area = np.bincount(t_idx[t_valid], minlength=n_t)
    iou = inter / (p_area[:, None] + t_area[None, :] - inter)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    tp = int(np.sum(matched >= iou_threshold))
    precision, recall = tp / n_p, tp / n_t
    f1 = 2 * tp / (n_p + n_t)
    good = matched[matched >= iou_threshold]
    return {"f1": f1, "precision": precision, "recall": recall,
            "mean_matched_iou": float(good.mean()) if len(good) else float("nan"),
            "n_pred": float(n_p), "n_true": float(n_t)}


def boundary_rows(labels: np.ndarray, n_boundaries: int = len(OCT_BOUNDARIES), depth_axis: int = 1) -> np.ndarray:
    """Row of each layer boundary per column of a B-scan label map ``(X, Y)`` (depth along ``depth_axis``).

    Boundary k is the first row whose layer index exceeds k (fluid pixels are skipped); NaN where a column has
    no such row.

    Returns:
        ``(n_boundaries, columns)`` float rows.
    """
    lab = np.moveaxis(labels, depth_axis, -1)  # (columns, depth)
    out = np.full((n_boundaries, lab.shape[0]), np.nan)
    valid = lab != OCT_FLUID
    for k in range(n_boundaries):
        below = (lab > k) & valid
        has = below.any(axis=1)
        out[k, has] = below[has].argmax(axis=1)
    return out


def boundary_errors(pred: np.ndarray, truth_rows: np.ndarray, axial_mm: float, depth_axis: int = 1
                    ) -> dict[str, float]:
    """Mean absolute boundary position error per boundary, in pixels and micrometres.

    Args:
        pred: predicted label map ``(X, Y)``.
        truth_rows: reference rows ``(8, columns)`` (NaN where not annotated).
        axial_mm: pixel size along depth in mm.
        depth_axis: the depth axis of ``pred``.
    """
    rows = boundary_rows(pred, truth_rows.shape[0], depth_axis)
    out: dict[str, float] = {}
    for k, name in enumerate(OCT_BOUNDARIES[: truth_rows.shape[0]]):
        ok = np.isfinite(rows[k]) & np.isfinite(truth_rows[k])
        err = float(np.abs(rows[k][ok] - truth_rows[k][ok]).mean()) if ok.any() else float("nan")
        out[f"{name}_px"] = err
        out[f"{name}_um"] = err * axial_mm * 1000.0
    return out
