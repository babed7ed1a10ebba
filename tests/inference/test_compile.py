"""``infer.compile``: the compiled inference copy gives the eager copy's answer, and the warm-up compiles every
window-batch size the sliding window uses, so no case pays for a compilation (counted with TorchDynamo's own
graph counter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config.schema import InferConfig, PreprocessConfig
from pipeline.errors import PipelineError
from pipeline.inference.optimize import compile_network, warm_up, window_batch_sizes
from pipeline.inference.predictor import Predictor
from pipeline.runtime.precision import FP32

CPU = torch.device("cpu")


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm3d(4, affine=True)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


def test_batch_sizes_cover_every_remainder():
    assert window_batch_sizes(1) == [1]
    assert window_batch_sizes(2) == [2, 1]
    assert window_batch_sizes(4) == [4, 3, 1]  # 4 static, 3 makes the batch axis dynamic (2..), 1 its own


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compiled_predictor_matches_eager_and_compiles_only_in_the_warm_up():
    torch._dynamo.reset()
    pre = PreprocessConfig(intensity={"mode": "none"}, patch={"size": [8, 8, 8]})
    infer = InferConfig(roi_size=[8, 8, 8], overlap=0.5, sw_batch_size=3)
    eager = Predictor(Small(), pre, infer, CPU, 3)
    compiled = Predictor(Small(), pre, infer.model_copy(update={"compile": True}), CPU, 3)
    seconds = compiled.warm_up()
    assert seconds > 0 and compiled.warm_up() == seconds  # once
    after_warm_up = graphs()
    rng = np.random.default_rng(0)
    # 12x12x12: rows of 4 windows (batches 3 + 1); 12x20x12: rows of 8 (3 + 3 + 2); 12x12x16: rows of 6 (3 + 3)
    for shape in ((12, 12, 12), (12, 20, 12), (12, 12, 16)):
        image = rng.normal(size=shape).astype(np.float32)
        a, _ = eager(image, np.eye(4))
        b, _ = compiled(image, np.eye(4))
        assert np.array_equal(a, b), shape
    assert graphs() == after_warm_up  # every batch size was compiled before the first case


def test_a_failed_compilation_says_what_to_do(monkeypatch):
    """Without a working C++ compiler TorchInductor cannot build CPU kernels: one message that names the setting
    and the fix, not a compiler log."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))
    model = compile_network(Small())
    with pytest.raises(PipelineError) as err:
        warm_up(model, 1, [8, 8, 8], 1, CPU, FP32)
    message = str(err.value)
    assert message.startswith("infer.compile: torch.compile of the network failed")
    assert "C++ compiler" in message and "--compile" in message and "Traceback" not in message
    torch._dynamo.reset()
