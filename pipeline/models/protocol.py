"""What a segmentation model must provide to be registered in :data:`pipeline.models.MODELS`.

The contract, in the order the pipeline relies on it:

* **Construction** (:func:`pipeline.models.build_model`): the registered object is called with keyword arguments
  only. ``in_channels`` (image channels, from the manifest's modalities) and ``out_channels`` (classes including
  background, from the manifest's labels) are always passed; ``spatial_dims`` (2 or 3, from the manifest) is passed
  when the constructor has such a parameter, which it must have when it supports both 2D and 3D. These three are
  set by the pipeline, never by the workflow file. Every other parameter is a key of the workflow's ``model``
  section: annotate it (the loader validates the values strictly against the annotations) and give it a default
  unless the workflow must set it. Invalid values raise :class:`ValueError` (or :class:`TypeError`) naming the
  argument; the loader builds the model once to report them before any work starts.
* **Supported dimensions** (optional class attribute ``supported_dims``, e.g. ``(3,)`` for V-Net): the spatial
  dimensions the model handles; :func:`pipeline.models.supported_dims` reads ``(2, 3)`` when it is absent.
* **Sizes** (optional method ``total_stride()``): one factor per spatial axis that patch and window sizes must be
  divisible by (:func:`pipeline.models.shapes.check_divisible` checks ``preprocess.patch.size``,
  ``infer.roi_size`` and ``train.validation.roi_size`` against it). A model without it takes any input size and
  pads, crops or interpolates internally so that its logits have the input's spatial size.
* **Eval mode** (``model.eval()``; validation, sliding-window inference, export): ``forward(x)`` with ``x`` of shape
  ``(N, in_channels, *spatial)`` returns one tensor of unnormalised class logits ``(N, out_channels, *spatial)``
  (the stitcher applies the softmax and blends the windows).
* **Training mode** (``model.train()``): ``forward`` returns the logits as in eval mode or, for a deeply supervised
  model, a tuple ``(logits, aux_logits, ...)`` of such tensors; :func:`pipeline.training.trainer.compute_loss` then
  adds the optional attribute ``aux_weight`` (0.4 when absent) times the loss of every auxiliary output.
* **Module**: it is a :class:`torch.nn.Module`: checkpoints hold its ``state_dict`` together with its name, workflow
  arguments and channel counts, so the same constructor call must rebuild the same parameters; inference moves it
  with ``.to(device)``/``.to(memory_format=...)`` and runs a deep copy whose instance-norm layers are replaced
  (:func:`pipeline.inference.optimize.for_inference`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

DEFAULT_DIMS: tuple[int, ...] = (2, 3)
"""The spatial dimensions of a model without a ``supported_dims`` attribute."""

SET_BY_PIPELINE: tuple[str, ...] = ("in_channels", "out_channels", "spatial_dims")
"""Constructor keywords filled from the manifest, never from the workflow file."""


@runtime_checkable
class SegmentationModel(Protocol):
    """A network that maps images ``(N, in_channels, *spatial)`` to logits ``(N, out_channels, *spatial)``; see the
    module docstring for the constructor keywords and the optional ``supported_dims``, ``total_stride()`` and
    ``aux_weight``. Every :class:`torch.nn.Module` with that behaviour satisfies it structurally."""

    training: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits ``(N, out_channels, *spatial)`` of ``x`` ``(N, in_channels, *spatial)``; in training mode a deeply
        supervised model may return ``(logits, aux_logits, ...)``."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run :meth:`forward` (with the module hooks)."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Switch to training mode (auxiliary outputs, batch statistics, dropout)."""
        ...

    def eval(self) -> Any:
        """Switch to eval mode: :meth:`forward` returns the logits tensor only."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The trainable parameters (given to the optimiser)."""
        ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The weights saved in checkpoints."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Restore the weights of a checkpoint into a model built with the same arguments."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move to a device or memory format."""
        ...


@runtime_checkable
class StridedModel(Protocol):
    """A model whose input sizes must be divisible by a factor per spatial axis."""

    def total_stride(self) -> Sequence[int]:
        """One factor per spatial axis that patch and window sizes must be divisible by."""
        ...


@runtime_checkable
class DeeplySupervisedModel(Protocol):
    """A model that returns ``(logits, aux_logits, ...)`` in training mode, with the auxiliary losses' weight."""

    aux_weight: float


def model_dims(factory: Any) -> tuple[int, ...]:
    """The spatial dimensions a registered model class handles: its ``supported_dims``, else :data:`DEFAULT_DIMS`."""
    return tuple(getattr(factory, "supported_dims", DEFAULT_DIMS))


def size_multiple(model: Any, spatial_dims: int) -> tuple[int, ...]:
    """The factor per spatial axis that input sizes must be divisible by: ``model.total_stride()``, or 1 per axis
    for a model that takes any size.

    Raises:
        ValueError: ``total_stride()`` does not give one factor per spatial axis.
    """
    if not isinstance(model, StridedModel):
        return (1,) * spatial_dims
    stride = tuple(int(s) for s in model.total_stride())
    if len(stride) != spatial_dims:
        raise ValueError(f"total_stride() gave {list(stride)}, not one factor per axis of {spatial_dims}D input")
    return stride


def constructor_problems(factory: Any) -> list[str]:
    """What a registered model's class (or factory function) lacks of the constructor contract (module docstring).

    Args:
        factory: the registered object, e.g. ``MODELS.get("vnet")``.

    Returns:
        One message per problem; empty when the constructor conforms.
    """
    problems: list[str] = []
    dims = model_dims(factory)
    if not dims or any(isinstance(d, bool) or d not in DEFAULT_DIMS for d in dims):
        problems.append(f"supported_dims must be a non-empty subset of {DEFAULT_DIMS}, not {dims!r}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:
        return [*problems, f"no inspectable constructor signature ({exc})"]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in ("in_channels", "out_channels"):
        p = params.get(name)
        if p is None and not takes_any:
            problems.append(f"the constructor does not take the keyword '{name}'")
        elif p is not None and p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            problems.append(f"'{name}' must be passable by keyword")
    if len(dims) > 1 and "spatial_dims" not in params:
        problems.append(f"supports {' and '.join(map(str, dims))}D but the constructor has no 'spatial_dims'")
    for name, p in params.items():
        if name in SET_BY_PIPELINE or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            problems.append(f"'{name}' must be passable by keyword (it is a workflow key)")
        if p.annotation is inspect.Parameter.empty:
            problems.append(f"'{name}' has no annotation (the loader validates workflow values against it)")
    return problems
