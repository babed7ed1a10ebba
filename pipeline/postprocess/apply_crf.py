"""Running the dense CRF on saved predictions: inputs as the pipeline stores them, the workflow's settings, and
the optional grid search on validation cases."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.config.schema import CRFConfig
from pipeline.errors import DataError
from pipeline.io.nifti import spacing_of, spatial_ndim
from pipeline.runtime.device import select_device

AFFINE_TOL = 1e-3


def zscore_channels(image: np.ndarray, spatial_dims: int = 3) -> np.ndarray:
    """Channel-first z-scored image ``(C, *spatial)`` from a NIfTI array ``(*spatial)`` or ``(*spatial, C)``: the
    intensity units of ``bilateral_sigma_intensity``."""
    data = image.astype(np.float32)
    data = data[None] if data.ndim == spatial_dims else np.moveaxis(data, -1, 0)
    flat = data.reshape(len(data), -1)
    shape = (len(data),) + (1,) * spatial_dims
    return (data - flat.mean(1).reshape(shape)) / np.maximum(flat.std(1).reshape(shape), 1e-8)


def load_crf_inputs(probs_path: Path, image_path: Path, num_classes: int | None = None, nan_policy: str = "refuse"
                    ) -> tuple[np.ndarray, np.ndarray, list[float], nib.Nifti1Image]:
    """Read class probabilities (x, y, z, class) and the scan they belong to; check they share one grid. NaN or
    infinite image voxels are refused, or with ``nan_policy="fill"`` (the workflow's ``preprocess.nan_policy``)
    filled with the channel's minimum, as in the image the network saw.

    Returns:
        probabilities ``(K, X, Y, Z)`` float32 summing to 1, z-scored image ``(C, X, Y, Z)``, spacing in mm, the image.

    Raises:
        DataError: unreadable files, shape or affine mismatch, a class count other than ``num_classes``,
            negative or NaN values, sums off 1 beyond tolerance.
    """
    from pipeline.data.checks import read_nifti
    from pipeline.io.finite import count_non_finite, fill_non_finite

    pimg, probs = read_nifti(Path(probs_path), "probabilities", Path(probs_path).name)
    iimg, image = read_nifti(Path(image_path), "image", Path(image_path).name)
    nd = spatial_ndim(iimg)
    if probs.ndim != nd + 1:
        raise DataError(f"{probs_path}: probabilities must have the image's {nd} spatial axes plus the class axis "
                        f"last (x, y{', z' if nd == 3 else ''}, class), got shape {probs.shape}")
    if probs.shape[:nd] != image.shape[:nd]:
        raise DataError(f"{probs_path} has spatial shape {probs.shape[:nd]} but {image_path} has "
                        f"{image.shape[:nd]}; they must be on the same grid")
    if not np.allclose(pimg.affine, iimg.affine, atol=AFFINE_TOL):
        raise DataError(f"{probs_path} and {image_path} have different affines; the probabilities must be on the "
                        "image's grid")
    if num_classes is not None and probs.shape[-1] != num_classes:
        raise DataError(f"{probs_path} holds {probs.shape[-1]} classes but the model's labels have {num_classes}")
    # Quantised or half-precision storage rounds each value a little, so sums get a tolerance of 1e-3 per class.
    tol = 1e-3 * max(probs.shape[-1], 1)
    k_first = np.moveaxis(np.asarray(probs, dtype=np.float32), -1, 0)
    if not np.all(np.isfinite(k_first)) or k_first.min() < 0:
        raise DataError(f"{probs_path}: probabilities must be finite and non-negative (found NaN, inf or < 0)")
    worst = float(np.abs(k_first.sum(0) - 1).max())
    if worst > tol:
        raise DataError(f"{probs_path}: probabilities must sum to 1 over the class axis (last axis); the worst voxel "
                        f"is off by {worst:.3g}. Save softmax outputs, not logits or label maps")
    image = np.asarray(image)
    if nan_policy == "fill":
        image = fill_non_finite(image, None if image.ndim == nd else -1, f"{image_path}:")[0]
    elif bad := count_non_finite(image, None if image.ndim == nd else -1)[0]:
        raise DataError(f"{image_path}: has {bad} NaN or infinite voxel(s); the CRF needs a finite image: fix or "
                        "mask the scan (a workflow fills them with its minimum: preprocess.nan_policy: fill)")
    return renormalise(k_first), zscore_channels(image, nd), spacing_of(iimg), iimg


def renormalise(probs: np.ndarray) -> np.ndarray:
    """Undo storage rounding: rescale each voxel's probabilities to sum to exactly 1."""
    return probs / np.maximum(probs.sum(0, keepdims=True), 1e-8)


def params_from(cfg: CRFConfig, **overrides: float) -> Any:
    """The CRF model's parameters of ``cfg`` (:meth:`CRFParams.from_config`), ``overrides`` replacing some."""
    from pipeline.postprocess.crf import CRFParams

    return CRFParams.from_config(cfg, **overrides)


def run_crf(probs: np.ndarray, image: np.ndarray, spacing: Sequence[float], cfg: CRFConfig,
            **overrides: float) -> np.ndarray:
    """Labels from :func:`pipeline.postprocess.crf.dense_crf` with the workflow's settings."""
    from pipeline.postprocess.crf import dense_crf

    device = select_device(cfg.device).type
    return dense_crf(probs, image, spacing, params_from(cfg, **overrides), backend=cfg.backend, device=device)


def foreground_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in either map."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        if denom:
            scores.append(2.0 * np.logical_and(p, t).sum() / denom)
    return float(np.mean(scores)) if scores else float("nan")


def tune_crf(cases: list[tuple[Path, Path, Path]], cfg: CRFConfig, num_classes: int,
             nan_policy: str = "refuse") -> dict[str, Any]:
    """Grid-search ``cfg.tune`` on validation cases ``(probs, image, label)``; return the best settings
    (``nan_policy``: as in :func:`load_crf_inputs`).

    Returns:
        ``{"best": {param: value}, "best_dice": float, "no_crf_dice": float, "grid": [{...params, "dice"}]}``.
    """
    assert cfg.tune is not None
    loaded = []
    for probs_path, image_path, label_path in cases:
        probs, image, spacing, _ = load_crf_inputs(probs_path, image_path, num_classes, nan_policy)
        truth = np.asarray(nib.load(str(label_path)).dataobj)
        loaded.append((probs, image, spacing, truth))
    grid = cfg.tune.model_dump()
    names = list(grid)
    results = []
    for values in itertools.product(*(grid[n] for n in names)):
        combo = dict(zip(names, values, strict=True))
        dice = float(np.mean([foreground_dice(run_crf(p, i, s, cfg, **combo), t, num_classes)
                              for p, i, s, t in loaded]))
        results.append({**combo, "dice": dice})
    best = max(results, key=lambda r: r["dice"])
    baseline = float(np.mean([foreground_dice(p.argmax(0), t, num_classes) for p, _, _, t in loaded]))
    return {"best": {n: best[n] for n in names}, "best_dice": best["dice"], "no_crf_dice": baseline,
            "grid": results}
