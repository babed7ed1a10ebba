"""Fully connected (dense) CRF post-processing for 2D and 3D segmentations, with two interchangeable backends.

The model is the one of Krähenbühl & Koltun (2011) as used by DeepLab v1/v2 and DeepMedic's 3D CRF: unary
``-log(p)`` of the network's softmax, a smoothness Gaussian kernel over position and a bilateral appearance kernel over
position + intensity, Potts compatibility and a few mean-field iterations. Kernel widths are given in millimetres and
converted per axis with the voxel spacing, so anisotropic scans are handled.

Backends:
    ``"pydensecrf"``: the reference C++ implementation (CPU).
    ``"torch"``: a pure PyTorch re-implementation of the same algorithm (permutohedral lattice with tensor ops), on CPU
    or CUDA.
    ``"auto"``: ``"torch"`` when ``device`` is a CUDA device and CUDA is available, else ``"pydensecrf"``.

Example:
    >>> labels = dense_crf(probs, image, spacing=(0.8, 0.8, 3.0), params=CRFParams(iterations=5))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.errors import DataError, PipelineError
from pipeline.postprocess.crf.params import CRFParams

__all__ = ["BACKENDS", "CRFParams", "dense_crf", "resolve_backend"]

BACKENDS = ("auto", "torch", "pydensecrf")

_SUM_TOLERANCE = 1e-3


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """Return the concrete backend (``"torch"`` or ``"pydensecrf"``) for a requested backend and device.

    Raises:
        PipelineError: unknown backend, or a CUDA device requested where CUDA is not available.
    """
    if backend not in BACKENDS:
        raise PipelineError(f"unknown CRF backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    dev = str(device)
    is_cuda = dev.startswith("cuda")
    if not (dev == "cpu" or is_cuda):
        raise PipelineError(f"unknown CRF device {device!r}; use 'cpu' or 'cuda' (optionally 'cuda:N')")
    if is_cuda:
        import torch

        cuda_ok = torch.cuda.is_available()
    else:
        cuda_ok = False
    if backend == "auto":
        return "torch" if (is_cuda and cuda_ok) else "pydensecrf"
    if backend == "torch" and is_cuda and not cuda_ok:
        raise PipelineError(
            f"CRF device {device!r} was requested but CUDA is not available on this machine; use device='cpu'"
        )
    return backend


def _validate(probs: np.ndarray, image: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Check the inputs and return float32 ``probs``, ``(C, *spatial)`` float32 ``image`` and the spacing tuple."""
    probs = np.asarray(probs)
    image = np.asarray(image)
    if probs.ndim not in (3, 4):
        raise DataError(
            f"CRF probabilities must be (classes, *spatial) with 2 or 3 spatial axes, got shape {probs.shape}; "
            "put the class axis first and drop any batch axis"
        )
    if not (np.issubdtype(probs.dtype, np.floating) or np.issubdtype(probs.dtype, np.integer)):
        raise DataError(f"CRF probabilities must be a float array, got dtype {probs.dtype}")
    k = probs.shape[0]
    spatial = probs.shape[1:]
    if k < 1 or k > 256:
        raise DataError(f"CRF probabilities have {k} classes on axis 0; expected 1..256 (the class axis goes first)")
    if min(spatial) < 1:
        raise DataError(f"CRF probabilities have an empty spatial shape {spatial}")
    probs = probs.astype(np.float32, copy=False)
    if np.isnan(probs).any():
        raise DataError("CRF probabilities contain NaN; check the network output (softmax of finite logits)")
    if (probs < 0).any():
        raise DataError(
            f"CRF probabilities contain negative values (min {float(probs.min()):.3g}); pass softmax probabilities, "
            "not logits"
        )
    total = probs.sum(axis=0, dtype=np.float64)
    worst = float(np.abs(total - 1.0).max())
    if not worst <= _SUM_TOLERANCE:
        raise DataError(
            f"CRF probabilities do not sum to 1 over the class axis (axis 0): largest deviation {worst:.3g} > "
            f"{_SUM_TOLERANCE}; pass softmax probabilities with the class axis first"
        )
    del total

    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise DataError(f"CRF image must be a numeric array, got dtype {image.dtype}")
    if image.ndim == len(spatial):
        image = image[None]
    if image.ndim != len(spatial) + 1 or image.shape[1:] != spatial:
        raise DataError(
            f"CRF image shape {image.shape} does not match the probabilities' spatial shape {spatial} "
            f"(probabilities {probs.shape}); pass the image as (channels, *spatial) or (*spatial) on the same grid"
        )
    if image.shape[0] < 1:
        raise DataError("CRF image has no channels")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise DataError("CRF image contains NaN or infinite values")

    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise DataError(f"CRF spacing must be a sequence of numbers (mm per spatial axis), got {spacing!r}") from exc
    if len(sp) != len(spatial):
        raise DataError(
            f"CRF spacing {sp} has {len(sp)} values but the probabilities have {len(spatial)} spatial axes "
            f"(shape {probs.shape}); give one spacing in mm per spatial axis"
        )
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise DataError(f"CRF spacing must be positive finite millimetres per axis, got {sp}")
    return probs, image, sp


def _bbox(labels: np.ndarray, spacing: tuple, margin_mm: float) -> tuple[slice, ...] | None:
    """Bounding box of ``labels != 0`` grown by ``margin_mm`` per axis (None when there is no foreground)."""
    fg = labels != 0
    if not fg.any():
        return None
    box = []
    for ax, sp in enumerate(spacing):
        other = tuple(a for a in range(fg.ndim) if a != ax)
        idx = np.flatnonzero(fg.any(axis=other))
        pad = int(math.ceil(margin_mm / sp - 1e-9))
        box.append(slice(max(0, int(idx[0]) - pad), min(fg.shape[ax], int(idx[-1]) + 1 + pad)))
    return tuple(box)


def dense_crf(
    probs: np.ndarray,
    image: np.ndarray,
    spacing: Sequence[float],
    params: CRFParams = CRFParams(),
    backend: str = "auto",
    device: str = "cpu",
) -> np.ndarray:
    """Refine a soft segmentation with a fully connected CRF.

    Args:
        probs: ``(K, *spatial)`` softmax probabilities, class axis first, 2 or 3 spatial axes; non-negative, summing
            to 1 over the class axis (tolerance 1e-3).
        image: ``(C, *spatial)`` (C >= 1) or ``(*spatial)`` intensities on the same grid (z-scored: the bilateral
            intensity width is in these units).
        spacing: voxel spacing in mm, one value per spatial axis (same order as the array axes).
        params: CRF parameters.
        backend: ``"pydensecrf"``, ``"torch"`` or ``"auto"`` (torch when ``device`` is CUDA and CUDA is available,
            else pydensecrf).
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``; used by the torch backend (pydensecrf always runs on CPU).

    Returns:
        ``(*spatial)`` uint8 labels.

    Raises:
        PipelineError: invalid inputs (negative/NaN probabilities, not summing to 1, shape or spacing mismatch),
            unknown backend or unavailable device. Data problems raise its subclass :class:`DataError`.
    """
    if not isinstance(params, CRFParams):
        raise PipelineError(f"CRF params must be a CRFParams, got {type(params).__name__}")
    which = resolve_backend(backend, device)
    probs, image, sp = _validate(probs, image, spacing)
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    if probs.shape[0] == 1:
        return labels
    region: tuple[slice, ...] | None = tuple(slice(None) for _ in sp)
    if params.bbox_margin_mm is not None:
        region = _bbox(labels, sp, params.bbox_margin_mm)
        if region is None:
            return labels
    sub_probs = probs[(slice(None), *region)]
    sub_image = image[(slice(None), *region)]
    if which == "torch":
        from pipeline.postprocess.crf.torch_backend import crf_torch

        out = crf_torch(sub_probs, sub_image, sp, params, device=device)
    else:
        from pipeline.postprocess.crf.pydensecrf_backend import crf_pydensecrf

        out = crf_pydensecrf(sub_probs, sub_image, sp, params)
    labels[region] = out
    return labels
