"""Training losses, registered by the name a workflow file uses (``train.loss.name``).

Every module of this package is imported when the package is, so adding a loss means adding one file whose factory
is decorated with ``@LOSSES.register("name")`` (keyword arguments with annotations and defaults: they are the keys
of the workflow's ``train.loss`` section; it returns an ``nn.Module`` called as ``loss(logits, labels)`` with
logits ``(N, K, *spatial)`` and integer labels ``(N, 1, *spatial)``) and its test; nothing else lists the losses.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.registry import Registry

LOSSES: Registry = Registry("loss")


def _import_submodules() -> None:
    """Import every module of this package (sorted by name): importing a loss's module registers it."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")


_import_submodules()

__all__ = ["LOSSES"]
