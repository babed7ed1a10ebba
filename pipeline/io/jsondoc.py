"""Reading a small JSON document from an untrusted file (a manifest): a regular file of bounded size, UTF-8,
standard JSON numbers only, nested a bounded number of levels (checked without recursion). The one definition that
the manifest loader (:mod:`pipeline.data.manifest`) and the workflow loader's manifest checks share."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from pipeline.errors import DataError

MAX_MANIFEST_BYTES = 32 * 2**20  # ~150 000 cases; a larger file is refused before it is read
MAX_DEPTH = 32  # JSON nesting: a manifest is a few levels deep; deeper nesting is refused before any recursion
MAX_LABELS = 256  # label maps are stored as 8-bit (uint8) label images


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array"),
             (dict, "object"))
    return "null" if value is None else next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)


def show(value: Any, limit: int = 200) -> str:
    """A value for a message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def read_manifest_document(path: Path) -> Any:
    """The manifest's JSON value; refuses what is not a small, UTF-8, shallow JSON file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"manifest {path} cannot be read ({exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"manifest {path} is a folder; give the manifest's .json file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"manifest {path} is not a regular file (a device, fifo or socket); give a .json file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"manifest {path} is {st.st_size / 2**20:.0f} MiB; a manifest is at most "
                        f"{MAX_MANIFEST_BYTES // 2**20} MiB of JSON (is this the right file?)")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise DataError(f"manifest {path} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise DataError(f"manifest {path} is larger than {MAX_MANIFEST_BYTES // 2**20} MiB; a manifest is at most "
                        f"{MAX_MANIFEST_BYTES // 2**20} MiB of JSON (is this the right file?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8 JSON") from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        doc = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not a valid JSON manifest ({exc.msg} at line {exc.lineno}, column "
                        f"{exc.colno})") from None
    except RecursionError:
        raise DataError(f"manifest {path} nests JSON deeper than {MAX_DEPTH} levels; a manifest is an object of "
                        "case lists") from None
    except ValueError as exc:  # NaN / Infinity, an integer of more than 4300 digits
        why = "a number with thousands of digits" if "integer string conversion" in str(exc) else str(exc)
        raise DataError(f"{path}: not a valid JSON manifest ({why})") from None
    _check_depth(doc, path)
    return doc


def _check_depth(doc: Any, path: Path) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` (iteratively: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DataError(f"manifest {path} nests JSON deeper than {MAX_DEPTH} levels; a manifest is an object "
                            "of case lists")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
