"""The inference copy of a network gives the trained network's output and keeps the channels-last layout."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.inference.optimize import ChannelsLastInstanceNorm, for_inference
from pipeline.models import MODELS

CL3 = torch.channels_last_3d


def random_affine(norm: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    return norm


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_instance_norm_matches_torch(affine, layout):
    reference = random_affine(nn.InstanceNorm3d(5, affine=affine), seed=1).eval()
    # A large offset against a small spread: a one-pass E[x^2] - E[x]^2 variance would lose it in float32.
    x = torch.randn(3, 5, 9, 7, 4) * 0.1 + 300.0
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL3)
    out = ChannelsLastInstanceNorm(reference)(x)
    # Against float64: float32 inputs near 300 are only resolved to ~3e-5 (3e-4 of the spread), torch's own
    # instance norm is off by as much; a one-pass variance would be off by order 1.
    exact = copy.deepcopy(reference).double()(x.double())
    torch.testing.assert_close(out.double(), exact, atol=2e-3, rtol=0)
    torch.testing.assert_close(reference(x).double(), exact, atol=2e-3, rtol=0)
    assert out.is_contiguous(memory_format=CL3 if layout == "channels_last" else torch.contiguous_format)


def test_instance_norm_2d_and_half_precision():
    reference = random_affine(nn.InstanceNorm2d(4, affine=True), seed=2).eval()
    x = torch.randn(2, 4, 11, 6).contiguous(memory_format=torch.channels_last)
    fast = ChannelsLastInstanceNorm(reference)
    torch.testing.assert_close(fast(x), reference(x), atol=1e-5, rtol=1e-5)
    half = fast(x.half())  # what autocast hands it on CUDA: statistics in float32, output in the input's dtype
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), reference(x), atol=5e-3, rtol=1e-3)


def conv_inputs(model: nn.Module, x: torch.Tensor) -> list[bool]:
    """For each convolution call, whether its input was channels-last."""
    seen: list[bool] = []
    fmt = CL3 if x.ndim == 5 else torch.channels_last
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous(memory_format=fmt)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("vnet", {"base_channels": 4, "levels": 3, "strides": [[2, 2, 1], [2, 2, 2]]}, (2, 1, 16, 16, 8)),
        ("unet", {"spatial_dims": 2, "channels": [4, 8, 16], "strides": [2, 2]}, (2, 1, 32, 32)),
    ],
)
def test_inference_copy_equals_model_and_stays_channels_last(name, kwargs, shape):
    torch.manual_seed(0)
    model = MODELS.get(name)(in_channels=1, out_channels=3, **kwargs).eval()
    for m in model.modules():
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            random_affine(m, seed=3)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    fast = for_inference(model, spatial_dims=len(shape) - 2)
    fmt = CL3 if len(shape) == 5 else torch.channels_last
    xc = x.contiguous(memory_format=fmt)
    with torch.no_grad():
        got = fast(xc)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert all(conv_inputs(fast, xc)), "a convolution received a channels-first tensor"
    # The trained model is untouched: still PyTorch's instance norms, its own parameters.
    assert any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in model.modules())
    assert not any(isinstance(m, ChannelsLastInstanceNorm) for m in model.modules())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), fast.parameters(), strict=True))
    assert not all(conv_inputs(model.to(memory_format=fmt), xc)), "PyTorch's instance norm kept channels-last"


def test_running_statistics_are_left_alone():
    norm = nn.InstanceNorm3d(3, track_running_stats=True)
    fast = for_inference(nn.Sequential(nn.Conv3d(1, 3, 3), norm), spatial_dims=3)
    assert isinstance(fast[1], nn.InstanceNorm3d)


def test_allocator_tuning_is_applied_once_on_glibc(monkeypatch):
    import platform

    import pipeline.inference.optimize as optimize

    monkeypatch.setattr(optimize, "_allocator_tuned", None)
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    expected = platform.libc_ver()[0] == "glibc"
    assert optimize.tune_allocator() is expected
    assert optimize.tune_allocator() is expected  # cached: mallopt is not called again
    monkeypatch.setattr(optimize, "_allocator_tuned", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own setting wins
    assert optimize.tune_allocator() is False
