"""Segmentation networks, registered by the name a workflow file uses (``model.name``).

Every module of this package is imported when the package is, so adding a model means adding one file that
decorates its class with ``@MODELS.register("name")`` (see :class:`pipeline.models.protocol.SegmentationModel` for
what the class must provide) and its test; nothing else lists the models.
"""

from __future__ import annotations

import inspect

from pipeline.registry import Registry, import_submodules

MODELS: Registry = Registry("model")

import_submodules(__name__, __path__)  # each module registers itself

__all__ = ["MODELS", "build_model", "supported_dims"]


def supported_dims(name: str) -> tuple[int, ...]:
    """Spatial dimensions a registered model handles: its ``supported_dims`` attribute, else 2 and 3.

    Raises:
        KeyError: ``name`` is not registered.
    """
    return tuple(getattr(MODELS.get(name), "supported_dims", (2, 3)))


def build_model(name: str, kwargs: dict, in_channels: int, out_channels: int,  # type: ignore[no-untyped-def]
                spatial_dims: int = 3):
    """Construct a registered model; channel counts and spatial dimensions come from the manifest.

    Args:
        name: the registered name (``model.name``).
        kwargs: the other keyword arguments of the workflow's ``model`` section.
        in_channels: image channels.
        out_channels: classes including background.
        spatial_dims: 2 or 3; passed on only when the constructor takes ``spatial_dims``.

    Raises:
        KeyError: ``name`` is not registered.
        ValueError: the model does not handle ``spatial_dims``, or rejects an argument.
    """
    cls = MODELS.get(name)
    if spatial_dims not in supported_dims(name):
        raise ValueError(f"model '{name}' handles {' and '.join(map(str, supported_dims(name)))}D images only, "
                         f"but the data are {spatial_dims}D")
    extra = {"spatial_dims": spatial_dims} if "spatial_dims" in inspect.signature(cls).parameters else {}
    return cls(in_channels=in_channels, out_channels=out_channels, **extra, **kwargs)
