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

:func:`compile_network` and :func:`warm_up` are ``infer.compile`` / ``pipeline infer --compile``: ``torch.compile``
of that copy, compiled before the first case for every window-batch size the sliding window uses, so the cases'
times hold none of it.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import locale
import os
import sys
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.runtime.precision import Precision
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


@contextlib.contextmanager
def _utf8_text() -> Iterator[None]:
    """TorchInductor reads its kernel templates with the locale's encoding; ITK (reading a scan) sets the process
    locale to "C", whose encoding is ASCII, and the templates hold UTF-8. Compile under a UTF-8 ``LC_CTYPE`` and put
    the locale back after."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        yield
        return
    before = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    except locale.Error:
        yield
        return
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def compile_network(model: nn.Module) -> nn.Module:
    """``torch.compile`` (TorchInductor) of an inference copy; nothing is compiled until :func:`warm_up`."""
    with _utf8_text():
        return torch.compile(model)  # type: ignore[return-value]


def window_batch_sizes(sw_batch_size: int) -> list[int]:
    """The batch sizes :func:`warm_up` compiles for: the full window batch, one below it (the second size makes
    PyTorch compile the batch axis as dynamic, which then serves every size from 2 up) and 1 (always its own
    graph): the last batch of a row of windows can be any size up to ``sw_batch_size``."""
    return sorted({sw_batch_size, max(sw_batch_size - 1, 1), 1}, reverse=True)


def warm_up(model: nn.Module, in_channels: int, roi_size: Sequence[int], sw_batch_size: int, device: torch.device,
            precision: Precision) -> float:
    """Run the (compiled) network once per window-batch size on zeros, in the inference layout and precision, so
    that compilation happens here and not inside a case; returns the seconds it took.

    Raises:
        PipelineError: compilation failed (on the CPU TorchInductor needs a C++ compiler).
    """
    layout = channels_last(len(roi_size))
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), _utf8_text():
            for b in window_batch_sizes(sw_batch_size):
                x = torch.zeros((b, in_channels, *map(int, roi_size)), device=device).contiguous(memory_format=layout)
                with precision.on(device).autocast():
                    model(x)
    except Exception as exc:  # torch._dynamo / inductor errors have many types; the cause is in the message
        raise PipelineError(f"infer.compile: torch.compile of the network failed ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}); on the CPU it "
                            "needs a C++ compiler (apt-get install g++); or run without --compile "
                            "(infer.compile: false)") from None
    return time.perf_counter() - t0


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
