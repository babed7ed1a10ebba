"""Shape constraints a model puts on the patches and windows it is given."""

from __future__ import annotations

from torch import nn

from pipeline.errors import PipelineError


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
