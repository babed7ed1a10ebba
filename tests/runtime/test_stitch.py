"""The slab-by-slab stitcher gives MONAI's sliding-window result, holding only a window-deep buffer."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from pipeline.runtime.sliding_window import LabelSink, ProbabilitySink, stitch

CPU = torch.device("cpu")


def tiny_net(nd: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if nd == 3 else nn.Conv2d
    return nn.Sequential(conv(2, 6, 3, padding=1), nn.ReLU(), conv(6, 3, 3, padding=1)).eval()


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "mode"),
    [
        ((13, 11, 9), (6, 5, 4), 0.5, "gaussian"),
        ((5, 20, 7), (8, 8, 8), 0.25, "gaussian"),  # smaller than the window on two axes: padded
        ((16, 16, 16), (8, 8, 8), 0.0, "constant"),  # no overlap: each slab flushed once
        ((30, 17), (8, 16), 0.6, "gaussian"),
    ],
)
def test_matches_monai_sliding_window(shape, roi, overlap, mode):
    net = tiny_net(len(shape))
    image = torch.randn(2, *shape)
    reference = torch.softmax(
        sliding_window_inference(image[None], roi, 2, net, overlap=overlap, mode=mode), dim=1)[0]
    sink = ProbabilitySink(shape, dtype=torch.float32)
    stitch(net, image, roi, CPU, sink, overlap=overlap, sw_batch_size=3, mode=mode)
    assert sink.result is not None
    torch.testing.assert_close(sink.result, reference, atol=1e-6, rtol=0)
    labels = LabelSink(shape)
    stitch(net, image, roi, CPU, labels, overlap=overlap, mode=mode)
    assert torch.equal(labels.result, reference.argmax(0).to(torch.uint8))


def test_every_slab_once_in_order():
    seen: list[tuple[int, int]] = []

    def sink(start: int, stop: int, probs: torch.Tensor) -> None:
        assert probs.shape[1] == stop - start
        torch.testing.assert_close(probs.sum(0), torch.ones(probs.shape[1:]))
        seen.append((start, stop))

    stitch(tiny_net(3), torch.randn(2, 23, 9, 9), (8, 8, 8), CPU, sink, overlap=0.5)
    assert seen[0][0] == 0 and seen[-1][1] == 23
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    assert len(seen) > 2  # really streamed, not one volume at the end


def test_flip_tta_is_equivariant():
    """With left-right TTA, mirroring the input mirrors the output (the windows are placed symmetrically)."""
    net = tiny_net(3, seed=1)
    image = torch.randn(2, 16, 12, 10)
    a, b = ProbabilitySink(image.shape[1:], torch.float32), ProbabilitySink(image.shape[1:], torch.float32)
    stitch(net, image, (8, 8, 8), CPU, a, flip_axes=[0])
    stitch(net, torch.flip(image, (1,)), (8, 8, 8), CPU, b, flip_axes=[0])
    assert a.result is not None and b.result is not None
    torch.testing.assert_close(torch.flip(b.result, (1,)), a.result, atol=1e-5, rtol=0)
