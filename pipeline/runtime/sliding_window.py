"""Sliding-window prediction stitched slab by slab, so memory stays bounded on large scans.

MONAI's ``sliding_window_inference`` accumulates the weighted logits of every class for the whole volume (plus a
count map) before anything is reduced: ``K + 1`` full float32 volumes. Here the windows are visited in MONAI's
order (first spatial axis slowest) and accumulated into a buffer one window deep along that axis; as soon as no
later window can touch a slab, its probabilities are final and are handed to a *sink* (argmax to labels, or
probabilities kept in float16). Window positions, padding and the Gaussian weights are MONAI's own
(``dense_patch_slices``, ``compute_importance_map``), so the result equals MONAI's up to float rounding
(``tests/runtime/test_stitch.py``). The buffer lives on the compute device, so on a GPU the stitching happens
there and only finished slabs travel to host memory (or, as a fallback when the GPU runs out of memory, on the host:
``stitch_device``).

:func:`stitch_with_fallback` is what every inference path calls (the infer stage and ``pipeline infer`` through
:class:`~pipeline.inference.predictor.Predictor`, validation through :func:`predict_case`): :func:`stitch` under the
out-of-memory ladder of :mod:`pipeline.runtime.oom`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby

import torch
import torch.nn.functional as F
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from monai.utils import ensure_tuple_rep, fall_back_tuple
from torch import nn

from pipeline.config.schema import SlidingWindowConfig
from pipeline.runtime.oom import HOST, Attempt, run_with_fallback
from pipeline.runtime.precision import FP32, Precision

Sink = Callable[[int, int, torch.Tensor], None]
Activation = Callable[[torch.Tensor], torch.Tensor]


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=0)


def argmax_labels(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(0)`` as uint8 (first class wins ties), by a running comparison: about 10x faster than
    ``torch.argmax`` over a leading class axis on the CPU."""
    best = probs[0].clone()
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        labels[better] = k
        torch.maximum(best, probs[k], out=best)
    return labels


class LabelSink:
    """Keeps only the argmax of each finished slab: ``uint8`` labels, one byte per voxel."""

    def __init__(self, spatial_shape: Sequence[int]) -> None:
        self.result = torch.zeros(tuple(spatial_shape), dtype=torch.uint8)

    def __call__(self, start: int, stop: int, probs: torch.Tensor) -> None:
        self.result[start:stop] = argmax_labels(probs).cpu()


class ProbabilitySink:
    """Keeps the class probabilities ``(K, *spatial)`` in ``dtype`` (float16 halves the memory of float32)."""

    def __init__(self, spatial_shape: Sequence[int], dtype: torch.dtype = torch.float16) -> None:
        self.shape, self.dtype = tuple(spatial_shape), dtype
        self.result: torch.Tensor | None = None

    def __call__(self, start: int, stop: int, probs: torch.Tensor) -> None:
        if self.result is None:
            self.result = torch.zeros((probs.shape[0], *self.shape), dtype=self.dtype)
        self.result[:, start:stop] = probs.to(self.dtype).cpu()


@torch.no_grad()
def stitch(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    device: torch.device,
    sink: Sink,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    flip_axes: Sequence[int] = (),
    precision: Precision = FP32,
    stitch_device: torch.device | None = None,
    activation: Activation | None = None,
) -> None:
    """Predict a channel-first image ``(C, *spatial)`` window by window and feed finished slabs to ``sink``.

    Args:
        model: network returning logits, in eval mode on ``device``.
        image: the preprocessed image (any device; windows are copied to ``device`` one batch at a time).
        roi_size: window size.
        device: where the network runs and the stitching buffer lives.
        sink: called as ``sink(start, stop, probs)`` with softmax probabilities ``(K, stop - start, *rest)`` for
            the slab ``start:stop`` of the first spatial axis; every slab exactly once, in order.
        overlap: fraction of overlap between windows.
        sw_batch_size: windows per forward pass.
        mode: ``gaussian`` (weights fall off towards window borders) or ``constant`` blending.
        sigma_scale: width of the Gaussian weights relative to the window.
        flip_axes: spatial axes to mirror for test-time augmentation: each window's logits are averaged with
            those of its mirrored copies (mirrored back).
        precision: the network's arithmetic (:mod:`pipeline.runtime.precision`; bf16 or fp16 run it under
            autocast); the logits are cast to float32 before blending and the activation.
        stitch_device: where the stitching buffer lives (default ``device``); each window batch's logits are
            copied there.
        activation: blended logits ``(C, *slab)`` → what the sink gets (default: softmax over the channels; an
            instance head's: :meth:`pipeline.instances.heads.Head.activation`).
    """
    activate = activation or _softmax
    sdev = device if stitch_device is None else stitch_device
    x = image.as_tensor() if isinstance(image, MetaTensor) else image
    x = x[None].float()
    nd = x.ndim - 2
    layout = channels_last(nd)
    size = tuple(int(s) for s in x.shape[2:])
    roi = tuple(int(r) for r in fall_back_tuple(roi_size, size))
    padded = tuple(max(s, r) for s, r in zip(size, roi, strict=True))
    before = [(p - s) // 2 for p, s in zip(padded, size, strict=True)]
    pad: list[int] = []
    for k in reversed(range(nd)):  # F.pad takes the last axis first
        pad += [before[k], padded[k] - size[k] - before[k]]
    if any(pad):
        x = F.pad(x, pad)
    interval = _get_scan_interval(padded, roi, nd, ensure_tuple_rep(overlap, nd))
    windows = [tuple(int(s.start) for s in w) for w in dense_patch_slices(padded, roi, interval)]
    weight = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=sdev, dtype=torch.float32)
    variants = [()] + [(a + 2,) for a in flip_axes]
    precision = precision.on(device)
    depth = roi[0]
    acc: torch.Tensor | None = None  # (K, depth, *padded[1:]) weighted logits of the slab under the windows
    count = _buffer((depth, *padded[1:]), sdev)
    inner = tuple(slice(b, b + s) for b, s in zip(before[1:], size[1:], strict=True))

    def flush(lo: int, hi: int) -> None:
        """Hand over the finished padded-axis-0 range ``lo:hi`` (buffer row 0 is ``lo``), cropped to the image."""
        a, b = max(lo, before[0]), min(hi, before[0] + size[0])
        if a >= b or acc is None:
            return
        rows = slice(a - lo, b - lo)
        logits = acc[(slice(None), rows, *inner)] / count[(rows, *inner)]
        sink(a - before[0], b - before[0], activate(logits))

    previous: int | None = None
    for start0, group in groupby(windows, key=lambda w: w[0]):
        if previous is not None:  # rows previous:start0 get no more windows
            shift = start0 - previous
            flush(previous, min(start0, previous + depth))
            if acc is not None:
                keep = depth - shift
                if keep > 0:
                    acc[:, :keep] = acc[:, shift:].clone()
                    count[:keep] = count[shift:].clone()
                acc[:, max(keep, 0):] = 0
                count[max(keep, 0):] = 0
        previous = start0
        starts = list(group)
        for i in range(0, len(starts), sw_batch_size):
            batch_starts = starts[i : i + sw_batch_size]
            crops = [tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True)) for st in batch_starts]
            batch = torch.cat([x[(slice(None), slice(None), *c)] for c in crops]).to(device)
            batch = batch.contiguous(memory_format=layout)
            logits = None
            for dims in variants:
                inp = torch.flip(batch, dims) if dims else batch
                with precision.autocast():
                    out = model(inp)
                out = out.float()
                out = torch.flip(out, dims) if dims else out
                logits = out if logits is None else logits + out
            assert logits is not None
            logits = (logits / len(variants)).to(sdev)
            if acc is None:
                acc = _buffer((logits.shape[1], depth, *padded[1:]), sdev)
            for win, st in zip(logits, batch_starts, strict=True):
                region = (slice(0, depth), *(slice(s, s + r) for s, r in zip(st[1:], roi[1:], strict=True)))
                acc[(slice(None), *region)] += win * weight
                count[region] += weight
    assert previous is not None
    flush(previous, previous + depth)


def _buffer(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A zeroed float32 stitching buffer (one place to allocate it: the out-of-memory tests patch it)."""
    return torch.zeros(shape, dtype=torch.float32, device=device)


def stitch_with_fallback(
    model: nn.Module,
    image: torch.Tensor,
    cfg: SlidingWindowConfig,
    device: torch.device,
    sink: Sink,
    case: str = "",
    host: torch.device = HOST,
    activation: Activation | None = None,
    precision: Precision = FP32,
) -> Attempt:
    """:func:`stitch` with ``cfg``'s settings, retried on out-of-memory errors with a halved window batch, then
    the stitching on ``host``, then the network on ``host`` (:func:`pipeline.runtime.oom.run_with_fallback`).

    The sink is reused across attempts: it assigns each slab (never accumulates), and every attempt hands it every
    slab again. For the last rung the model is moved to ``host`` in place and moved back to ``device`` afterwards
    (a copy would need device memory, which just ran out).

    Args:
        model: network returning logits, in eval mode on ``device``.
        image: the preprocessed image ``(C, *spatial)``.
        cfg: window size, overlap, blending, window batch and test-time flips.
        device: where the network runs and the windows are stitched, to begin with.
        sink: as for :func:`stitch`.
        case: names the case in the warnings.
        host: where the fallback stitches and runs the network.
        activation: as for :func:`stitch`.
        precision: as for :func:`stitch` (on the host rung: what ``auto`` picks there).

    Returns:
        the rung that produced the result (``step == "configured"`` when nothing ran out of memory).
    """

    def attempt(step: Attempt) -> None:
        moved = step.network_device != device
        if moved:
            model.to(step.network_device)
        try:
            stitch(model, image, cfg.roi_size, step.network_device, sink, overlap=cfg.overlap,
                   sw_batch_size=step.sw_batch_size, mode=cfg.mode, sigma_scale=cfg.sigma_scale,
                   flip_axes=cfg.tta_flip_axes, stitch_device=step.stitch_device, activation=activation,
                   precision=precision)
        finally:
            if moved:
                model.to(device)

    _, reached = run_with_fallback(attempt, cfg.sw_batch_size, device, case=case, host=host)
    return reached


def channels_last(spatial_dims: int) -> torch.memory_format:
    """The channels-last layout for 2D or 3D batches: oneDNN (CPU) and cuDNN run convolutions faster in it;
    :class:`~pipeline.inference.predictor.Predictor` puts the model's weights in it too."""
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def predict_case(model: nn.Module, image: torch.Tensor, cfg: SlidingWindowConfig, device: torch.device,
                 case: str = "", activation: Activation | None = None, precision: Precision = FP32) -> torch.Tensor:
    """Softmax probabilities ``(K, *spatial)`` (CPU, float32) of one preprocessed channel-first image, with the
    workflow's sliding-window settings (:func:`stitch_with_fallback`: out-of-memory errors fall back).

    Args:
        model: network returning logits, in eval mode on ``device``.
        image: the preprocessed image ``(C, *spatial)``.
        cfg: window size, overlap, blending and test-time flips (``infer`` or ``train.validation``).
        device: where the network runs.
        case: names the case in out-of-memory warnings.
        activation: as for :func:`stitch`.
        precision: as for :func:`stitch`.
    """
    sink = ProbabilitySink(image.shape[1:], dtype=torch.float32)
    stitch_with_fallback(model, image, cfg, device, sink, case=case, activation=activation, precision=precision)
    assert sink.result is not None
    return sink.result
