"""Where a MetaImage or NRRD header keeps its voxels, read from the header text alone (ITK does not say): the data
files it names, or where attached data start, and whether the data are stored uncompressed.

MetaImage (``.mha``, ``.mhd``): ``ElementDataFile`` is the last field; ``LOCAL`` (data follow the header), one file
name, ``LIST [ND]`` followed by one file name per line, or a ``printf`` pattern ``name%03d.raw [min [max [step]]]``.
NRRD (``.nrrd``): fields up to the first empty line; ``data file:`` (or ``datafile:``) names one file, ``LIST
[subdim]`` followed by one name per line, or a pattern ``name%03d.raw min max step [subdim]``; without it the data
follow the empty line. Relative names start from the header's folder in both formats (as ITK reads them).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataError

_HEAD = 1 << 20  # a header longer than this is not a header
_LIST = 64 << 20  # nor a file list


@dataclass
class DataLayout:
    """Where a header's voxels are.

    Attributes:
        field: the header field naming the data (``ElementDataFile``, ``data file``).
        files: the data files, as named (relative to the header's folder, or absolute); empty for attached data.
        offset: attached data: the byte where they start.
        plain: the data are uncompressed and contiguous, so their size can be checked against the header.
        skip: bytes before the data in a single data file (MetaImage ``HeaderSize``).
    """

    field: str
    files: list[str] = dataclasses.field(default_factory=list)
    offset: int | None = None
    plain: bool = False
    skip: int = 0


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_HEAD)


def _rest_lines(path: Path, start: int) -> list[str]:
    """The non-empty lines of ``path`` from byte ``start`` on (a file list)."""
    if path.stat().st_size - start > _LIST:
        raise DataError(f"{path}: the header's file list is longer than {_LIST >> 20} MiB; not a scan header")
    with open(path, "rb") as f:
        f.seek(start)
        text = os.fsdecode(f.read())  # file names: the bytes ITK opens (UTF-8 on Linux), not latin-1
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _pattern(path: Path, fld: str, pattern: str, first: int, last: int, step: int, count: int) -> list[str]:
    """The names a ``printf`` pattern expands to (at most ``count``: the slices the reader reads)."""
    if step == 0:
        raise DataError(f"{path}: {fld} = {pattern} {first} {last} {step}: the step of a file pattern cannot be 0")
    stop = last + (1 if step > 0 else -1)
    try:
        return [pattern % i for i in itertools.islice(range(first, stop, step), max(count, 1))]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {fld} = {pattern}: not a file pattern with one number ({exc})") from None


def _ints(words: list[str]) -> list[int] | None:
    try:
        return [int(w) for w in words]
    except ValueError:
        return None


def metaimage_layout(path: Path) -> DataLayout | None:
    """The data layout of a MetaImage header, or ``None`` when it has no ``ElementDataFile`` line (ITK then says
    what is wrong).

    Raises:
        OSError: the header cannot be read.
        DataError: a file pattern that cannot be expanded.
    """
    head = _read_head(path)
    match = re.search(rb"^[ \t]*ElementDataFile[ \t]*=[ \t]*([^\r\n]*?)[ \t]*\r?$", head, flags=re.MULTILINE)
    if match is None:
        return None
    text = head[: match.start()].decode("latin-1")
    fields = dict(re.findall(r"^[ \t]*(\w+)[ \t]*=[ \t]*(.*?)[ \t]*\r?$", text, flags=re.MULTILINE))
    compressed = fields.get("CompressedData", "False").strip().lower() in ("true", "1")
    value = os.fsdecode(match.group(1))  # a file name: the bytes ITK opens (UTF-8 on Linux), not latin-1
    end = match.end() + (1 if head[match.end(): match.end() + 1] == b"\n" else 0)
    fld = "ElementDataFile"
    dims = _ints(fields.get("DimSize", "").split()) or [1]
    slices = dims[-1]
    if value.upper() == "LOCAL":
        return DataLayout(fld, offset=end, plain=not compressed)
    if value.upper().startswith("LIST"):
        return DataLayout(fld, files=_rest_lines(path, end))
    if "%" in value:
        words = value.split()
        numbers = _ints(words[1:4])
        if numbers is None:
            raise DataError(f"{path}: {fld} = {value}: not a file pattern (expected NAME%d [MIN [MAX [STEP]]])")
        first = numbers[0] if numbers else 1
        last = numbers[1] if len(numbers) > 1 else first + slices - 1
        step = numbers[2] if len(numbers) > 2 else 1
        return DataLayout(fld, files=_pattern(path, fld, words[0], first, last, step, slices))
    skip = _ints(fields.get("HeaderSize", "0").split()) or [0]
    return DataLayout(fld, files=[value], plain=not compressed and skip[0] >= 0, skip=max(skip[0], 0))


def nrrd_layout(path: Path) -> DataLayout | None:
    """The data layout of a NRRD header, or ``None`` when it is not one (ITK then says what is wrong).

    Raises:
        OSError: the header cannot be read.
        DataError: a file pattern that cannot be expanded.
    """
    head = _read_head(path)
    if not head.startswith(b"NRRD"):
        return None
    blank = re.search(rb"\r?\n\r?\n", head)
    header_end = blank.end() if blank else len(head)
    fields: dict[str, str] = {}
    data_value, data_end = None, 0
    for line in re.finditer(rb"^([^\r\n]*)\r?\n?", head[:header_end], flags=re.MULTILINE):
        text = os.fsdecode(line.group(1))  # "data file:" names the bytes ITK opens (UTF-8 on Linux)
        if not text or text.startswith("#") or ":=" in text or ": " not in text:
            continue
        key, value = text.split(": ", 1)
        key = key.strip().lower().replace(" ", "")
        fields.setdefault(key, value.strip())
        if key == "datafile":
            data_value, data_end = value.strip(), line.end()
            if value.strip().upper().startswith("LIST"):
                break  # the names follow, one per line, to the end of the file
    encoding = fields.get("encoding", "").lower()
    skips = any(_ints([fields.get(k, "0")]) != [0] for k in ("lineskip", "byteskip"))
    plain = encoding == "raw" and not skips
    fld = "data file"
    if data_value is None:
        return DataLayout(fld, offset=header_end, plain=plain)
    if data_value.upper().startswith("LIST"):
        return DataLayout(fld, files=_rest_lines(path, data_end))
    words = data_value.split()
    numbers = _ints(words[1:4]) if len(words) in (4, 5) else None
    if numbers is not None and "%" in words[0]:
        sizes = _ints(fields.get("sizes", "").split()) or [1]
        first, last, step = numbers
        return DataLayout(fld, files=_pattern(path, fld, words[0], first, last, step, sizes[-1]))
    return DataLayout(fld, files=[data_value], plain=plain)


__all__ = ["DataLayout", "metaimage_layout", "nrrd_layout"]
