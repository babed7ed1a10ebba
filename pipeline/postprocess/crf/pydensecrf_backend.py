"""Reference backend: Krähenbühl's C++ dense CRF through ``pydensecrf`` (CPU only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.postprocess.crf.params import CRFParams


def grid_features(shape: Sequence[int], spacing: Sequence[float], sigma_mm: float) -> np.ndarray:
    """Scaled position features ``(d, N)`` float32: ``voxel_index * spacing / sigma_mm`` per axis (C order)."""
    n = int(np.prod(shape))
    feats = np.empty((len(shape), n), dtype=np.float32)
    for ax, (size, sp) in enumerate(zip(shape, spacing, strict=True)):
        coord = np.arange(size, dtype=np.float32) * np.float32(float(sp) / sigma_mm)
        view_shape = [1] * len(shape)
        view_shape[ax] = size
        feats[ax].reshape(shape)[...] = coord.reshape(view_shape)
    return feats


def bilateral_features(image: np.ndarray, spacing: Sequence[float], sigma_mm: float, sigma_int: float) -> np.ndarray:
    """Position + intensity features ``(d + C, N)`` float32 for an image ``(C, *spatial)``."""
    shape = image.shape[1:]
    d = len(shape)
    n = int(np.prod(shape))
    feats = np.empty((d + image.shape[0], n), dtype=np.float32)
    feats[:d] = grid_features(shape, spacing, sigma_mm)
    for c in range(image.shape[0]):
        np.multiply(image[c].reshape(-1), np.float32(1.0 / sigma_int), out=feats[d + c], casting="unsafe")
    return feats


def crf_pydensecrf(probs: np.ndarray, image: np.ndarray, spacing: Sequence[float], params: CRFParams) -> np.ndarray:
    """Mean-field inference with ``pydensecrf.densecrf.DenseCRF``.

    Args:
        probs: validated ``(K, *spatial)`` probabilities.
        image: validated ``(C, *spatial)`` float32 image.
        spacing: voxel spacing per spatial axis (mm).
        params: CRF parameters.

    Returns:
        ``(*spatial)`` uint8 labels.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PipelineError(
            "the 'pydensecrf' CRF backend needs the pydensecrf package (pip install pydensecrf2); "
            "or choose backend='torch'"
        ) from exc
    k = probs.shape[0]
    shape = probs.shape[1:]
    n = int(np.prod(shape))
    crf = dcrf.DenseCRF(n, k)
    unary = np.maximum(probs.reshape(k, n), np.float32(1e-8), dtype=np.float32)  # a fresh C-contiguous array
    np.log(unary, out=unary)
    np.negative(unary, out=unary)
    crf.setUnaryEnergy(unary)
    del unary
    if params.smooth_weight > 0:
        feats = grid_features(shape, spacing, params.smooth_sigma_mm)
        crf.addPairwiseEnergy(
            feats, compat=float(params.smooth_weight), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC
        )
        del feats
    if params.bilateral_weight > 0:
        feats = bilateral_features(image, spacing, params.bilateral_sigma_mm, params.bilateral_sigma_intensity)
        crf.addPairwiseEnergy(
            feats,
            compat=float(params.bilateral_weight),
            kernel=dcrf.DIAG_KERNEL,
            normalization=dcrf.NORMALIZE_SYMMETRIC,
        )
        del feats
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    del crf
    return np.argmax(q.reshape(k, n), axis=0).astype(np.uint8).reshape(shape)
