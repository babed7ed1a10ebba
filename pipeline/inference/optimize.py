"""An inference copy of a network that keeps the channels-last layout from end to end.

oneDNN (CPU) and cuDNN run 2D/3D convolutions faster on channels-last tensors, so the predictor puts the weights
and every window batch in that layout. PyTorch's ``InstanceNorm`` does not keep it: it reshapes its input into one
"batch" of ``N*C`` channels, which needs a contiguous (channels-first) copy, and returns a channels-first tensor,
so every convolution after the first instance norm reorders its input and its output again. On the prostate
V-Net (instance norm after every convolution) that costs about as much as all the normalisation itself
(``bench/infer.py``'s network-alone row measures the effect).

:func:`for_inference` returns a copy of the model whose instance-norm layers compute the same per-sample,
per-channel statistics on a ``(N, voxels, C)`` view of the channels-last memory, so the layout survives. The
arithmetic is the usual two-pass mean and biased variance; results equal ``nn.InstanceNorm`` to float32 rounding
(``tests/inference/test_optimize.py``). The trained model itself is left untouched.
"""

from __future__ import annotations

import copy
import ctypes
import os
import sys

import torch
from torch import nn

from pipeline.runtime.sliding_window import channels_last

_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class ChannelsLastInstanceNorm(nn.Module):
    """Instance normalisation (eval semantics: statistics of each sample) that keeps its input's layout:
    channels-last in, channels-last out."""

    def __init__(self, source: nn.modules.instancenorm._InstanceNorm) -> None:
        super().__init__()
        self.eps = float(source.eps)
        self.weight = source.weight  # None when affine=False
        self.bias = source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        nd = len(spatial)
        dtype = x.dtype
        # (N, C, *S) in channels-last memory is (N, *S, C) in row-major order: this permute+reshape is a view.
        v = x.permute(0, *range(2, nd + 2), 1).reshape(n, -1, c)
        if v.dtype != torch.float32:  # float16 under CUDA autocast: statistics in float32
            v = v.float()
        mean = v.mean(1, keepdim=True)
        centred = v - mean
        var = (centred * centred).mean(1, keepdim=True)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.float()
        out = torch.addcmul(shift, v, scale).to(dtype)
        return out.view(n, *spatial, c).permute(0, nd + 1, *range(1, nd + 1))


def for_inference(model: nn.Module, spatial_dims: int) -> nn.Module:
    """A copy of ``model`` in eval mode and channels-last layout, with channels-last instance norms.

    Instance norms that track running statistics (and so use them in eval mode) are left as they are.
    """
    clone = copy.deepcopy(model).eval()
    _swap_norms(clone)
    return clone.to(memory_format=channels_last(spatial_dims))


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _INSTANCE_NORMS) and not child.track_running_stats:
            setattr(module, name, ChannelsLastInstanceNorm(child))
        else:
            _swap_norms(child)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_allocator_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep freed activation buffers in the process heap instead of handing them back to the kernel (glibc only).

    A forward pass allocates and frees the same few-megabyte activations again and again. glibc serves large
    blocks with ``mmap`` and trims the heap top eagerly, so every pass page-faults (and zeroes) fresh memory; on
    two cores that is about 5 % of the network's time (the usual remedy is preloading jemalloc or tcmalloc). This
    sets the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to 512 MiB for the process; blocks
    above 32 MiB (whole volumes) are still mapped and returned at once. Does nothing, and returns False, when the
    C library is not glibc or the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` themselves.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if not sys.platform.startswith("linux") or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 512 << 20) == 1)
    return _allocator_tuned
