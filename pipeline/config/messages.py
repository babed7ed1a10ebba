"""How the configuration loader shows values and locations in its messages: values cut to a few dozen characters
(:func:`_shown`), texts cut to a limit (:func:`_cut`), and dotted paths such as ``train.loss.name`` (:func:`_dotted`)
whose odd keys are quoted and cut, so that a hostile workflow cannot make a message as long as itself.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

MAX_SHOWN = 80  # characters of a value shown in a message
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` for a message: a short repr (long strings, lists and deep nesting abbreviated)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxset, r.maxlevel = limit, limit, 8, 8, 4, 4, 3
    r.maxlong = 40
    text = r.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _cut(text: str, limit: int = 300) -> str:
    """A message or path for a message, cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _key(part: Any) -> str:
    """One part of a dotted path for a message: plain keys and list indices as they are, others quoted; cut."""
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)
    if isinstance(part, str) and _KEY.fullmatch(part):
        return _cut(part, 60)
    return _shown(part, 40)


def _dotted(*parts: Any) -> str:
    return ".".join(_key(p) for p in parts)
