"""The precision policy: what ``auto`` picks on which hardware, what an explicit choice warns about, and that the
lower precision touches only the network (float32 norms' statistics, float32 probabilities, channels-last kept).

Hardware is described by ``/proc/cpuinfo`` texts in the kernel's format (the flags of real CPUs: an AVX2 EPYC, a
Sapphire Rapids Xeon with AMX, a Zen 4 EPYC with AVX-512 BF16); on this machine's own CPU ``auto`` is checked
against its flags. bf16 runs here are tiny: without hardware bf16 PyTorch emulates it (slowly).
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.inference.optimize import for_inference
from pipeline.runtime.precision import AUTO_ENV, FP32, cpu_info, hardware_summary, parse_cpuinfo, resolve_precision
from pipeline.runtime.sliding_window import ProbabilitySink, stitch

CPU = torch.device("cpu")
AVX2_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"
EPYC_AVX2 = f"processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: {AVX2_FLAGS}\n\nprocessor\t: 1\n"
SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: "
                   f"{AVX2_FLAGS} avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n")
ZEN4 = f"processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: {AVX2_FLAGS} avx512f avx512bw avx512_bf16\n"


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of what ``auto`` picks from the hardware: not pinned (tests/conftest.py pins it)."""
    monkeypatch.delenv(AUTO_ENV, raising=False)


def cpu(text: str):
    return parse_cpuinfo(text)


def test_cpuinfo_is_read_like_lscpu():
    info = cpu(SAPPHIRE_RAPIDS)
    assert info.model == "Intel(R) Xeon(R) Platinum 8481C" and info.hardware_bf16 and info.hardware_fp16
    assert info.reported_flags() == "avx2 avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16"
    epyc = cpu(EPYC_AVX2)
    assert epyc.model == "AMD EPYC 7B13" and not epyc.hardware_bf16 and epyc.reported_flags() == "avx2"
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16\n", "aarch64")
    assert arm.model == "aarch64" and "bf16" in arm.flags and not arm.hardware_bf16  # only x86 flags count


@pytest.mark.parametrize(("text", "expected", "reason"), [
    (EPYC_AVX2, "fp32", "no hardware bf16"),
    (SAPPHIRE_RAPIDS, "bf16", "amx_bf16 avx512_bf16"),
    (ZEN4, "bf16", "avx512_bf16"),
])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it(text, expected, reason, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        p = resolve_precision("auto", CPU, cpu=cpu(text))
    assert p.name == expected and reason in p.reason and p.reason.startswith("auto")
    assert p.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[expected]
    assert not caplog.records


def test_amp_false_makes_auto_fp32():
    assert resolve_precision("auto", CPU, amp=False, cpu=cpu(SAPPHIRE_RAPIDS)).name == "fp32"
    assert resolve_precision("auto", "cuda", amp=False, cuda_bf16=True).name == "fp32"
    assert resolve_precision("bf16", CPU, amp=False, cpu=cpu(SAPPHIRE_RAPIDS)).name == "bf16"  # explicit wins


def test_auto_can_be_pinned_by_the_environment(monkeypatch):
    monkeypatch.setenv(AUTO_ENV, "bf16")
    p = resolve_precision("auto", CPU, cpu=cpu(EPYC_AVX2))
    assert p.name == "bf16" and p.reason == f"auto pinned by ${AUTO_ENV}"
    assert resolve_precision("auto", CPU, amp=False).name == "fp32"
    assert resolve_precision("fp32", CPU).name == "fp32"  # an explicit choice is not overridden
    monkeypatch.setenv(AUTO_ENV, "FP32")
    assert resolve_precision("auto", CPU, cpu=cpu(SAPPHIRE_RAPIDS)).name == "fp32"
    monkeypatch.setenv(AUTO_ENV, "half")
    with pytest.raises(PipelineError, match=f"\\${AUTO_ENV}='half': use fp32, bf16 or fp16"):
        resolve_precision("auto", CPU)


def test_auto_on_gpus():
    assert resolve_precision("auto", "cuda", cuda_bf16=True).name == "bf16"
    old = resolve_precision("auto", "cuda", cuda_bf16=False)
    assert old.name == "fp16" and old.needs_scaler  # what train.amp did on every GPU before precision
    assert resolve_precision("auto", "mps").name == "fp32"


def test_explicit_emulated_precision_warns_by_name(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        p = resolve_precision("bf16", CPU, cpu=cpu(EPYC_AVX2))
    assert p.name == "bf16" and "emulated" in p.reason
    assert "bf16 on a CPU without hardware bf16 (flags: avx2)" in caplog.text and "use auto or fp32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert resolve_precision("bf16", CPU, cpu=cpu(ZEN4)).name == "bf16"
        assert resolve_precision("fp16", CPU, cpu=cpu(SAPPHIRE_RAPIDS)).name == "fp16"
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        resolve_precision("fp16", CPU, cpu=cpu(ZEN4))
    assert "fp16 on a CPU without hardware fp16" in caplog.text
    with pytest.raises(ValueError, match="precision 'half': use one of auto, fp32, bf16, fp16"):
        resolve_precision("half", CPU)


def test_this_machine_auto_follows_its_own_flags():
    """On the CPU running the tests: bf16 exactly when /proc/cpuinfo lists amx_bf16 or avx512_bf16 (on the 2-core
    AVX2 machines of CI: fp32)."""
    here = cpu_info()
    p = resolve_precision("auto", CPU)
    assert p.name == ("bf16" if {"amx_bf16", "avx512_bf16"} & here.flags else "fp32")
    summary = hardware_summary()
    assert summary["cpu"] == here.model and summary["torch_threads"] == str(torch.get_num_threads())
    assert summary["hardware_bf16"] == ("yes" if p.name == "bf16" else "no")


def test_fallback_to_the_host_never_emulates():
    gpu = resolve_precision("auto", "cuda", cuda_bf16=True)
    assert gpu.on(torch.device("cuda")) is gpu
    host = gpu.on(CPU)
    assert host.device_type == "cpu" and host.name == resolve_precision("auto", CPU).name
    assert FP32.on(torch.device("cuda")) is FP32  # fp32 stays fp32 anywhere


class Probe(nn.Module):
    """A small conv net that records the autocast state, the layout its input comes in and the dtype and layout of
    its convolution's output."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.norm = nn.InstanceNorm3d(3, affine=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
        self.seen: list[tuple[bool, bool, torch.dtype, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        cl = torch.channels_last_3d
        self.seen.append((torch.is_autocast_enabled("cpu"), x.is_contiguous(memory_format=cl), y.dtype,
                          y.is_contiguous(memory_format=cl)))
        return self.norm(y) * 4.0


def test_bf16_runs_only_the_network_lower():
    """Under bf16 the convolution computes in bf16 on channels-last tensors, the instance norm's statistics and the
    probabilities stay float32, and the labels agree with fp32 but for voxels near a tie."""
    torch.manual_seed(1)
    image = torch.randn(1, 12, 12, 8)
    results = {}
    for name in ("fp32", "bf16"):
        net = for_inference(Probe(), 3)
        sink = ProbabilitySink(image.shape[1:], dtype=torch.float32)
        stitch(net, image, (8, 8, 8), CPU, sink, overlap=0.5, sw_batch_size=2,
               precision=resolve_precision(name, CPU, quiet=True))
        assert sink.result is not None and sink.result.dtype == torch.float32
        torch.testing.assert_close(sink.result.sum(0), torch.ones(image.shape[1:]))
        autocast, channels_last_in, dtype, channels_last_out = net.seen[0]
        assert autocast == (name == "bf16") and channels_last_in
        assert dtype == (torch.bfloat16 if name == "bf16" else torch.float32)
        # oneDNN keeps the layout; PyTorch's fallback for bf16 3D convolutions without it (no hardware bf16)
        # returns channels-first.
        if name == "fp32" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
            assert channels_last_out
        results[name] = sink.result
    agree = (results["fp32"].argmax(0) == results["bf16"].argmax(0)).float().mean().item()
    assert agree >= 0.97
    assert (results["fp32"] - results["bf16"]).abs().max().item() < 0.1  # bf16 rounding, not another answer
