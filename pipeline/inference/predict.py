"""Sliding-window prediction: a pure function with an explicit device, and device selection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from torch import nn

from pipeline.config.schema import InferConfig
from pipeline.errors import PipelineError


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
    """Class probabilities for one channel-first image ``(C, X, Y, Z)``, computed window by window.

    Args:
        model: network returning logits; it is used as it is (caller puts it in eval mode on ``device``).
        image: the preprocessed image, on any device; the result is stitched on that device.
        roi_size: window size.
        device: where the network runs.
        overlap: fraction of overlap between windows.
        sw_batch_size: windows per forward pass.
        mode: ``gaussian`` (weights fall off towards window borders) or ``constant`` blending.
        sigma_scale: width of the gaussian weights relative to the window.
        flip_axes: spatial axes to mirror for test-time augmentation; probabilities are averaged.
        amp: float16 autocast when ``device`` is CUDA.

    Returns:
        Softmax probabilities ``(K, X, Y, Z)`` on ``image``'s device, float32.
    """
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    batch = image.unsqueeze(0)
    variants: list[tuple[int, ...]] = [()] + [(a + 2,) for a in flip_axes]
    total = None
    for dims in variants:
        x = torch.flip(batch, dims) if dims else batch
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = sliding_window_inference(
                x, roi_size=list(roi_size), sw_batch_size=sw_batch_size, predictor=model, overlap=overlap,
                mode=mode, sigma_scale=sigma_scale, sw_device=device, device=image.device,
            )
        probs = torch.softmax(logits.float(), dim=1)
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    assert total is not None
    return (total / len(variants))[0]


def predict_case(model: nn.Module, image: torch.Tensor, cfg: InferConfig, device: torch.device) -> torch.Tensor:
    """:func:`predict_probabilities` with the workflow's inference settings."""
    return predict_probabilities(
        model, image, cfg.roi_size, device, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size, mode=cfg.mode,
        sigma_scale=cfg.sigma_scale, flip_axes=cfg.tta_flip_axes,
    )
