"""``predict_case`` is the stitcher with a workflow's sliding-window settings, and device selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config.schema import SlidingWindowConfig
from pipeline.errors import PipelineError
from pipeline.runtime.device import select_device
from pipeline.runtime.sliding_window import ProbabilitySink, predict_case, stitch

CPU = torch.device("cpu")


def test_predict_case_is_stitch_with_the_config() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1)).eval()
    image = torch.randn(2, 14, 11, 9)
    cfg = SlidingWindowConfig(roi_size=[8, 8, 8], overlap=0.25, sw_batch_size=2, mode="constant",
                              tta_flip_axes=[1])
    probs = predict_case(net, image, cfg, CPU)
    sink = ProbabilitySink(image.shape[1:], dtype=torch.float32)
    stitch(net, image, [8, 8, 8], CPU, sink, overlap=0.25, sw_batch_size=2, mode="constant", flip_axes=[1])
    assert probs.dtype == torch.float32 and probs.shape == (3, 14, 11, 9)
    assert sink.result is not None and torch.equal(probs, sink.result)


def test_select_device() -> None:
    assert select_device("cpu") == CPU
    assert select_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA GPU"):
            select_device("cuda")
