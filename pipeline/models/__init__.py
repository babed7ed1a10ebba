"""Segmentation networks, registered by the name a workflow file uses (``model.name``)."""

from __future__ import annotations

from pipeline.registry import Registry

MODELS: Registry = Registry("model")

# Importing the modules registers their models.
from pipeline.models import deeplab, fcn, pspnet, unet, vnet  # noqa: E402,F401

__all__ = ["MODELS"]


def supported_dims(name: str) -> tuple[int, ...]:
    """Spatial dimensions a registered model handles: its ``supported_dims`` attribute, else 2 and 3."""
    return tuple(getattr(MODELS.get(name), "supported_dims", (2, 3)))


def build_model(name: str, kwargs: dict, in_channels: int, out_channels: int,  # type: ignore[no-untyped-def]
                spatial_dims: int = 3):
    """Construct a registered model; channel counts and spatial dimensions come from the manifest.

    Raises:
        ValueError: the model does not handle ``spatial_dims``, or rejects an argument.
    """
    import inspect

    cls = MODELS.get(name)
    if spatial_dims not in supported_dims(name):
        raise ValueError(f"model '{name}' handles {' and '.join(map(str, supported_dims(name)))}D images only, "
                         f"but the data are {spatial_dims}D")
    extra = {"spatial_dims": spatial_dims} if "spatial_dims" in inspect.signature(cls).parameters else {}
    return cls(in_channels=in_channels, out_channels=out_channels, **extra, **kwargs)
