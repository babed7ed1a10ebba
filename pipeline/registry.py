"""Explicit registries: one per kind of component (models, losses, stages, postprocessors).

A workflow file names components by the name they are registered under; an unknown name gets the list of known
names and the closest match.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def suggest(name: str, known: list[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A name → object mapping filled by a decorator.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("vnet")
        ... class VNet: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Register the decorated object under ``name``; a duplicate name is an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered ({self._items[name]!r})")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def unknown_message(self, name: str) -> str:
        """The message for an unknown ``name``: what exists and the closest match."""
        return f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}.{suggest(name, self.names())}"

    def get(self, name: str) -> T:
        """Look up ``name``.

        Raises:
            KeyError: with :meth:`unknown_message` when the name is not registered.
        """
        if name not in self._items:
            raise KeyError(self.unknown_message(name))
        return self._items[name]


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every public module of a package (sorted by name), so that each registers what it defines: call it
    at the end of the package's ``__init__`` as ``import_submodules(__name__, __path__)``."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
