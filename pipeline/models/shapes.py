"""Shape constraints a model puts on the patches and windows it is given, and the size of the model itself."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from pipeline.errors import PipelineError

# Far above any segmentation network (a 3D nnU-Net has ~30 million parameters, SwinUNETR ~60 million): 2e9 float32
# parameters are 8 GB before gradients and optimizer state; such a model is a typo (an extra zero in a width).
MAX_PARAMETERS = 2_000_000_000
MAX_MODULES = 20_000  # layers; real networks have hundreds to a few thousand


class ModelTooLarge(ValueError):
    """A model whose parameters (or layers) exceed the limits of :func:`build_on_meta`."""


# Weight initialisation (torch.nn.init) and in-place operations that only write values: without data on the meta
# device they do nothing, yet some (normal_, erfinv_) have no meta kernel and go through PyTorch's Python reference
# implementations, whose first use imports hundreds of modules (seconds).
_VALUE_WRITES = frozenset(
    [getattr(torch.Tensor, name) for name in (
        "normal_", "uniform_", "fill_", "zero_", "copy_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_",
        "exponential_", "geometric_", "log_normal_", "cauchy_", "random_", "bernoulli_", "fill_diagonal_")]
    + [f for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")
       for f in [getattr(nn.init, name)] if callable(f)])


class _MetaBuild(TorchFunctionMode):
    """Under ``torch.device("meta")``: skips :data:`_VALUE_WRITES` on meta tensors (their shapes do not change).

    Other operations without a meta kernel of their own (``torch.arange``, ``1.0 - tensor``: FCN's bilinear kernels)
    still run PyTorch's reference implementations: their first use in a process imports ``torch._dynamo`` (1-2 s).
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _VALUE_WRITES:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))  # nn.init passes tensor=...
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def build_on_meta(name: str, kwargs: dict[str, Any], in_channels: int, out_channels: int, spatial_dims: int = 3,
                  max_parameters: int = MAX_PARAMETERS, max_modules: int = MAX_MODULES) -> nn.Module:
    """Construct a registered model on PyTorch's meta device: every layer and shape, no memory for the weights.

    Used to check a workflow's model arguments (and its stride, with :func:`check_divisible`) without allocating
    a model that may not fit in memory. Parameters and buffers are counted as the constructor registers them, so a
    huge model is refused before it is complete.

    Args:
        name, kwargs, in_channels, out_channels, spatial_dims: as :func:`pipeline.models.build_model` takes them.
        max_parameters: the most parameter and buffer values the model may hold.
        max_modules: the most layers (sub-modules) it may have.

    Raises:
        ModelTooLarge: naming the model and its count.
        ValueError, TypeError (and whatever the constructor raises): the constructor rejects an argument.
    """
    from pipeline.models import build_model

    counts = {"values": 0, "modules": 0}

    def on_tensor(module: nn.Module, _: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or is_lazy(tensor):
            return
        counts["values"] += tensor.numel()
        if counts["values"] > max_parameters:
            raise ModelTooLarge(
                f"'{name}' with these arguments has more than {max_parameters:,} parameters (already "
                f"{counts['values']:,} before it was complete); that does not fit in memory: use fewer channels "
                "(or levels, or a smaller width)")

    def on_module(module: nn.Module, _: str, sub: nn.Module | None) -> None:
        counts["modules"] += 1
        if counts["modules"] > max_modules:
            raise ModelTooLarge(f"'{name}' with these arguments has more than {max_modules:,} layers; use fewer "
                                "levels or blocks")

    handles = [register_module_parameter_registration_hook(on_tensor),
               register_module_buffer_registration_hook(on_tensor),
               register_module_module_registration_hook(on_module)]
    try:
        with torch.device("meta"), _MetaBuild():
            model = build_model(name, kwargs, in_channels, out_channels, spatial_dims=spatial_dims)
    finally:
        for handle in handles:
            handle.remove()
    total = sum(t.numel() for t in (*model.parameters(), *model.buffers()) if not is_lazy(t))
    if total > max_parameters:
        raise ModelTooLarge(f"'{name}' with these arguments has {total:,} parameters, more than {max_parameters:,}; "
                            "that does not fit in memory: use fewer channels (or levels, or a smaller width)")
    return model


def check_divisible(model: nn.Module, sizes: dict[str, list[int]]) -> None:
    """Patch and window sizes must be divisible by the network's total down-sampling stride.

    A model without ``total_stride()`` (see :class:`pipeline.models.protocol.SegmentationModel`) takes any size.

    Args:
        model: the built network.
        sizes: the sizes to check, by the dotted workflow key that sets them (named in the error).

    Raises:
        PipelineError: a size is not divisible by the stride along some axis.
    """
    stride_of = getattr(model, "total_stride", None)
    if stride_of is None:
        return
    stride = stride_of()
    for what, size in sizes.items():
        if any(s % f for s, f in zip(size, stride, strict=True)):
            raise PipelineError(f"{what} {size} must be divisible by the model's total stride {list(stride)} "
                                f"per axis; change {what} or model.strides/levels")
