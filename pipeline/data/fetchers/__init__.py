"""Fetchers: download a public data set, check it, extract it safely and write its manifest.

``pipeline data fetch NAME --root DIR [--archive TAR] [--md5 HEX] [--quiet]`` dispatches by name through
:data:`FETCHERS`. Every module of this package is imported when the package is; a data set's module registers its
fetch function with ``@register_fetcher("name", workflow=...)``. The shared building blocks are
:mod:`.download` (download with progress and md5 check) and :mod:`.archive` (safe tar extraction).

A fetch function is called as ``fetch(root, archive=PATH_OR_NONE, progress=BOOL[, md5=HEX])`` (``md5`` only when
the user gave one; the function's default is the official release's) and returns the path of the manifest it
wrote. The manifest follows :mod:`pipeline.data.storage` and splits its labelled cases with
:func:`pipeline.data.splits.split_cases`, like the importers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.registry import Registry, import_submodules

__all__ = ["FETCHERS", "Fetcher", "register_fetcher"]

F = TypeVar("F", bound=Callable[..., Path])


@dataclass(frozen=True)
class Fetcher:
    """A data set ``pipeline data fetch`` can download.

    Attributes:
        fetch: ``fetch(root, *, archive=None, progress=True, md5=...) -> manifest path``.
        workflow: the shipped workflow to suggest running on the fetched data (e.g. ``workflows/vnet_prostate.yaml``).
    """

    fetch: Callable[..., Path]
    workflow: str


FETCHERS: Registry[Fetcher] = Registry("data set fetcher")


def register_fetcher(name: str, *, workflow: str) -> Callable[[F], F]:
    """Decorator: register the decorated fetch function under ``name`` (the function itself is unchanged).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(fetch: F) -> F:
        FETCHERS.register(name)(Fetcher(fetch=fetch, workflow=workflow))
        return fetch

    return deco


import_submodules(__name__, __path__)  # each module registers itself
