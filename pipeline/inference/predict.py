"""Sliding-window prediction: a pure function with an explicit device, and device selection."""

from __future__ import annotations

from collections.abc import Sequence

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


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    device: torch.device,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    flip_axes: Sequence[int] = (),
    amp: bool = True,
) -> torch.Tensor:
    """Class probabilities for one channel-first image ``(C, X, Y, Z)``, stitched window by window
    (:func:`pipeline.inference.stitch.stitch`).

    Args:
        model: network returning logits; it is used as it is (caller puts it in eval mode on ``device``).
        image: the preprocessed image, on any device.
        roi_size: window size.
        device: where the network runs.
        overlap: fraction of overlap between windows.
        sw_batch_size: windows per forward pass.
        mode: ``gaussian`` (weights fall off towards window borders) or ``constant`` blending.
        sigma_scale: width of the gaussian weights relative to the window.
        flip_axes: spatial axes to mirror for test-time augmentation; each window's logits are averaged.
        amp: float16 autocast when ``device`` is CUDA.

    Returns:
        Softmax probabilities ``(K, X, Y, Z)`` on the CPU, float32.
    """
    sink = ProbabilitySink(image.shape[1:], dtype=torch.float32)
    stitch(model, image, roi_size, device, sink, overlap=overlap, sw_batch_size=sw_batch_size, mode=mode,
           sigma_scale=sigma_scale, flip_axes=flip_axes, amp=amp)
    assert sink.result is not None
    return sink.result


def predict_case(model: nn.Module, image: torch.Tensor, cfg: InferConfig, device: torch.device) -> torch.Tensor:
    """:func:`predict_probabilities` with the workflow's inference settings."""
    return predict_probabilities(
        model, image, cfg.roi_size, device, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size, mode=cfg.mode,
        sigma_scale=cfg.sigma_scale, flip_axes=cfg.tta_flip_axes,
    )
