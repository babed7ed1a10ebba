"""Segmentation networks, registered by the name a workflow file uses (``model.name``)."""

from __future__ import annotations

from pipeline.registry import Registry

MODELS: Registry = Registry("model")

# Importing the modules registers their models.
from pipeline.models import vnet  # noqa: E402,F401

__all__ = ["MODELS"]


def build_model(name: str, kwargs: dict, in_channels: int, out_channels: int):  # type: ignore[no-untyped-def]
    """Construct a registered model; the channel counts come from the manifest."""
    return MODELS.get(name)(in_channels=in_channels, out_channels=out_channels, **kwargs)
