"""Out of memory during a case's prediction falls back step by step (halved window batch, stitching on the CPU,
network on the CPU), says which, and still gives the normal result.

There is no GPU here: ``cpu:0`` stands for the device (the ladder compares devices, and ``cpu:0 != cpu``, while
tensors put on it are ordinary CPU tensors) and the out-of-memory errors are raised by hooks: a network that
refuses batches larger than ``k`` or any batch while it is on the "device", and a patched stitching allocation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config.schema import InferConfig, PreprocessConfig, SlidingWindowConfig
from pipeline.inference.predictor import Predictor
from pipeline.runtime import sliding_window
from pipeline.runtime.oom import Attempt, is_out_of_memory, ladder, run_with_fallback
from pipeline.runtime.sliding_window import LabelSink, ProbabilitySink, predict_case, stitch, stitch_with_fallback

DEVICE = torch.device("cpu", 0)  # stands for cuda:0
HOST = torch.device("cpu")
ROI = [6, 8, 8]


class FlakyNet(nn.Module):
    """A small conv net that raises ``torch.OutOfMemoryError`` as a GPU would: for a batch of more than
    ``max_batch`` windows, or for any batch while it sits on :data:`DEVICE` (``oom_on_device``), or always
    (``always``). ``calls`` records ``(batch size, where the net is)`` of every forward pass."""

    def __init__(self, max_batch: int | None = None, oom_on_device: bool = False, always: bool = False,
                 error: Exception | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1)).eval()
        self.max_batch, self.oom_on_device, self.always, self.error = max_batch, oom_on_device, always, error
        self.placed = DEVICE
        self.calls: list[tuple[int, torch.device]] = []

    def to(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.placed = torch.device(device)
        return super().to(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], self.placed))
        if self.error is not None:
            raise self.error
        if (self.always or (self.oom_on_device and self.placed == DEVICE)
                or (self.max_batch is not None and x.shape[0] > self.max_batch)):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.net(x)


@pytest.fixture
def warnings_seen() -> Iterator[list[str]]:
    """The messages the ``pipeline`` logger warns with (a handler on it: independent of propagation settings)."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    logger = logging.getLogger("pipeline")
    handler = Keep()
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 12, 20, 20)  # 16 windows per row of windows: batches of 8 really happen


def cfg(sw_batch_size: int) -> SlidingWindowConfig:
    return SlidingWindowConfig(roi_size=ROI, overlap=0.5, sw_batch_size=sw_batch_size, tta_flip_axes=[1])


def reference(net: FlakyNet, sw_batch_size: int) -> torch.Tensor:
    """The result without any out-of-memory error: the inner network, straight through the stitcher."""
    sink = ProbabilitySink(image().shape[1:], dtype=torch.float32)
    stitch(net.net, image(), ROI, HOST, sink, overlap=0.5, sw_batch_size=sw_batch_size, flip_axes=[1])
    assert sink.result is not None
    return sink.result


def run(net: FlakyNet, sw_batch_size: int) -> tuple[torch.Tensor, Attempt]:
    sink = ProbabilitySink(image().shape[1:], dtype=torch.float32)
    reached = stitch_with_fallback(net, image(), cfg(sw_batch_size), DEVICE, sink, case="case007")
    assert sink.result is not None
    return sink.result, reached


def test_ladder_rungs() -> None:
    assert [(a.sw_batch_size, a.step) for a in ladder(8, DEVICE)] == [
        (8, "configured"), (4, "halved"), (2, "halved"), (1, "halved"), (1, "cpu-stitch"), (1, "cpu-network")]
    assert [(a.sw_batch_size, a.step) for a in ladder(3, DEVICE)] == [
        (3, "configured"), (1, "halved"), (1, "cpu-stitch"), (1, "cpu-network")]
    last = ladder(1, DEVICE)
    assert [a.step for a in last] == ["configured", "cpu-stitch", "cpu-network"]
    assert (last[1].network_device, last[1].stitch_device) == (DEVICE, HOST)
    assert (last[2].network_device, last[2].stitch_device) == (HOST, HOST)


def test_halves_the_window_batch(warnings_seen: list[str]) -> None:
    net = FlakyNet(max_batch=2)
    probs, reached = run(net, 8)
    assert (reached.step, reached.sw_batch_size, reached.network_device) == ("halved", 2, DEVICE)
    reason = " (CUDA out of memory. Tried to allocate 2.00 GiB (simulated))"
    assert warnings_seen == ["case007: out of memory on cpu:0 with sw_batch_size 8: retrying with 4" + reason,
                             "case007: out of memory on cpu:0 with sw_batch_size 4: retrying with 2" + reason]
    assert max(b for b, _ in net.calls[-4:]) == 2
    torch.testing.assert_close(probs, reference(net, 8), atol=1e-6, rtol=0)


def test_stitches_on_the_cpu(warnings_seen: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    allocate = sliding_window._buffer

    def buffer_on_device_fails(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if device == DEVICE:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated stitching buffer)")
        return allocate(shape, device)

    monkeypatch.setattr(sliding_window, "_buffer", buffer_on_device_fails)
    net = FlakyNet()
    probs, reached = run(net, 2)
    assert (reached.step, reached.network_device, reached.stitch_device) == ("cpu-stitch", DEVICE, HOST)
    assert len(warnings_seen) == 2
    assert warnings_seen[0].startswith("case007: out of memory on cpu:0 with sw_batch_size 2: retrying with 1")
    assert warnings_seen[1].startswith("case007: out of memory on cpu:0 with sw_batch_size 1: retrying with the "
                                       "stitching buffer on the cpu (network still on cpu:0)")
    assert net.calls and all(where == DEVICE for _, where in net.calls)  # the network stayed on the device
    torch.testing.assert_close(probs, reference(net, 2), atol=1e-6, rtol=0)


def test_runs_the_network_on_the_cpu(warnings_seen: list[str]) -> None:
    net = FlakyNet(oom_on_device=True)
    probs, reached = run(net, 4)
    assert (reached.step, reached.network_device, reached.stitch_device) == ("cpu-network", HOST, HOST)
    assert [m.split(": retrying")[1].split(" (")[0] for m in warnings_seen] == [
        " with 2", " with 1", " with the stitching buffer on the cpu", " with the network on the cpu"]
    assert warnings_seen[2].startswith("case007: out of memory on cpu:0 with sw_batch_size 1: ")
    assert warnings_seen[3].startswith("case007: out of memory on cpu:0 with sw_batch_size 1 and the stitching on "
                                       "cpu: retrying with the network on the cpu")
    assert net.calls[-1][1] == HOST
    assert net.placed == DEVICE  # moved back for the next case
    torch.testing.assert_close(probs, reference(net, 4), atol=1e-6, rtol=0)


def test_labels_sink_too(warnings_seen: list[str]) -> None:
    net = FlakyNet(oom_on_device=True)
    labels = LabelSink(image().shape[1:])
    stitch_with_fallback(net, image(), cfg(2), DEVICE, labels)
    assert torch.equal(labels.result, sliding_window.argmax_labels(reference(net, 2)))
    assert warnings_seen[0].startswith("out of memory on cpu:0")  # no case name given: none in the message


def test_out_of_memory_on_the_cpu_too_propagates(warnings_seen: list[str]) -> None:
    net = FlakyNet(always=True)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        run(net, 2)
    assert len(warnings_seen) == 3  # 2 -> 1, stitching on the CPU, network on the CPU; then the error
    assert net.placed == DEVICE


@pytest.mark.parametrize("error", [ValueError("bad input"), RuntimeError("Given groups=1, weight of size ...")])
def test_other_errors_are_not_swallowed(error: Exception, warnings_seen: list[str]) -> None:
    net = FlakyNet(error=error)
    with pytest.raises(type(error), match=str(error).split()[0]):
        run(net, 8)
    assert len(net.calls) == 1 and warnings_seen == []


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only RuntimeErrors


def test_run_with_fallback_returns_the_rung() -> None:
    seen: list[Attempt] = []

    def attempt(step: Attempt) -> str:
        seen.append(step)
        if step.sw_batch_size > 1:
            raise RuntimeError("CUDA error: out of memory")
        return "done"

    result, reached = run_with_fallback(attempt, 4, DEVICE)
    assert result == "done" and reached.sw_batch_size == 1 and [s.sw_batch_size for s in seen] == [4, 2, 1]


def test_predict_case_names_the_case(warnings_seen: list[str]) -> None:
    net = FlakyNet(max_batch=1)
    probs = predict_case(net, image(), cfg(2), DEVICE, case="val_003")
    assert warnings_seen and warnings_seen[0].startswith("val_003: out of memory on cpu:0 with sw_batch_size 2")
    torch.testing.assert_close(probs, reference(net, 2), atol=1e-6, rtol=0)


def test_predictor_starts_every_case_at_the_configured_settings(warnings_seen: list[str]) -> None:
    """The inference path (infer stage, ``pipeline infer``): the ladder is per case."""
    pre = PreprocessConfig(orientation=None, intensity={"mode": "none"}, patch={"size": ROI})
    infer = InferConfig(roi_size=ROI, overlap=0.5, sw_batch_size=4, tta_flip_axes=[1])
    predictor = Predictor(FlakyNet(max_batch=2), pre, infer, DEVICE, 3)
    net = predictor.model
    assert isinstance(net, FlakyNet)
    scan = np.moveaxis(image().numpy(), 0, -1)  # (*spatial, C)
    labels = []
    for name in ("case_a.nii.gz", "case_b.nii.gz"):
        first = len(net.calls)
        out = predictor.network(predictor.prepare(scan, np.eye(4), name))
        assert net.calls[first][0] == 4  # each case starts with the configured batch
        labels.append(out.labels)
    assert [m.split(":")[0] for m in warnings_seen] == ["case_a.nii.gz", "case_b.nii.gz"]
    assert torch.equal(labels[0], labels[1])
    assert torch.equal(labels[0], sliding_window.argmax_labels(reference(net, 4)))
