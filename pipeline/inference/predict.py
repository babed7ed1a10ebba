"""Sliding-window prediction: a pure function with an explicit device, and device selection."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config.schema import InferConfig
from pipeline.errors import PipelineError
from pipeline.inference.stitch import ProbabilitySink, stitch


def select_device(requested: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a user error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(requested)


def predict_case(model: nn.Module, image: torch.Tensor, cfg: InferConfig, device: torch.device) -> torch.Tensor:
    """Softmax probabilities ``(K, *spatial)`` (CPU, float32) of one preprocessed channel-first image, with the
    workflow's sliding-window settings (:func:`pipeline.inference.stitch.stitch`)."""
    sink = ProbabilitySink(image.shape[1:], dtype=torch.float32)
    stitch(model, image, cfg.roi_size, device, sink, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size,
           mode=cfg.mode, sigma_scale=cfg.sigma_scale, flip_axes=cfg.tta_flip_axes)
    assert sink.result is not None
    return sink.result
