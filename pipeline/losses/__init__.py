"""Training losses, registered by the name a workflow file uses (``train.loss.name``).

Every module of this package is imported when the package is, so adding a loss means adding one file whose factory
is decorated with ``@LOSSES.register("name")`` (keyword arguments with annotations and defaults: they are the keys
of the workflow's ``train.loss`` section; it returns an ``nn.Module`` called as ``loss(logits, labels)`` with
logits ``(N, K, *spatial)`` and integer labels ``(N, 1, *spatial)``) and its test; nothing else lists the losses.
"""

from __future__ import annotations


from pipeline.registry import Registry, import_submodules

LOSSES: Registry = Registry("loss")


import_submodules(__name__, __path__)  # each module registers itself

__all__ = ["LOSSES"]
