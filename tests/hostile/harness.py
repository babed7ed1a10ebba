"""The hostile-input corpus's one check: a refusal is one clear message, fast, small, and leaves nothing behind.

Every test in ``tests/hostile`` feeds the pipeline one broken input (a class of the corpus, listed in the README's
"Hostile input" table) and calls :func:`refused` (the command line) or :func:`refused_call` (a Python function).
Both assert what the issue asks of every refusal:

- the command exits non-zero (2, a user error, unless told otherwise) with one message on stderr;
- the message names the offending file, key or case (every string of ``names`` appears in it);
- the message is not a bare library error: no ``Traceback``, no ``object at 0x`` (an object's repr), no
  ``RuntimeError:``/``KeyError:``-style exception prefix;
- the refusal took at most ``seconds`` (2 s) of wall time and allocated at most ``max_bytes`` (1 GiB) as traced by
  :mod:`tracemalloc` (NumPy's arrays and Python's objects, which is where a YAML alias bomb or a decompressed
  gzip bomb would land);
- with ``untouched``, no file under those folders was created or changed (``snapshot`` before, compare after).

Time and memory are measured around the call itself: the interpreter, PyTorch and MONAI are imported before the
clock starts (:func:`warm_imports`), since a user's refusal pays them once per command while the test suite pays
them once per session.
"""

from __future__ import annotations

import os
import re
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SECONDS = 2.0
MAX_BYTES = 1 << 30
BARE_LIBRARY_ERROR = re.compile(r"Traceback|object at 0x[0-9a-fA-F]+|^\w*(Error|Exception): ", re.MULTILINE)


def warm_imports() -> None:
    """Import what a command imports lazily, so that the refusal's clock measures the refusal."""
    import monai.transforms  # noqa: F401
    import torch  # noqa: F401

    import pipeline.cli  # noqa: F401
    import pipeline.losses  # noqa: F401
    import pipeline.models  # noqa: F401
    import pipeline.cohort  # noqa: F401
    import pipeline.stages

    pipeline.stages.stage_classes()  # imports every stage module (what `pipeline run` loads)


@dataclass
class Refusal:
    """What a refused command printed and cost."""

    code: int
    message: str
    seconds: float
    peak_bytes: int


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folders`` (and symlinks, not followed) with its size and mtime."""
    out: dict[str, tuple[int, int]] = {}
    for folder in folders:
        if not folder.exists():
            continue
        for root, dirs, files in os.walk(folder):
            for name in [*files, *dirs]:
                p = Path(root) / name
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns) if not p.is_dir() or p.is_symlink() else (0, 0)
    return out


def _measure(call: Callable[[], Any]) -> tuple[Any, BaseException | None, float, int]:
    warm_imports()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result: Any = None
    error: BaseException | None = None
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the caller asserts on it
        error = exc
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    if not tracing:
        tracemalloc.stop()
    return result, error, seconds, peak


def check_message(message: str, names: Iterable[str]) -> None:
    """The message names every one of ``names`` and is not a bare library error."""
    assert message.strip(), "the refusal printed nothing"
    for name in names:
        assert str(name) in message, f"the message does not name {name!r}:\n{message}"
    bare = BARE_LIBRARY_ERROR.search(message)
    assert bare is None, f"a bare library error or object repr ({bare.group(0)!r}) in:\n{message}"


def refused(argv: Sequence[str], capsys: pytest.CaptureFixture[str], names: Iterable[str], *,
            code: int = 2, seconds: float = SECONDS, max_bytes: int = MAX_BYTES,
            untouched: Sequence[Path] = ()) -> Refusal:
    """Run ``pipeline ARGV`` in this process and assert that it is refused as the corpus requires.

    Args:
        argv: the command line after ``pipeline``.
        capsys: pytest's fixture (stdout and stderr of the command).
        names: strings the message must contain (the file, key or case, and what is wrong).
        code: the expected exit code (2: a user error; 1: ``pipeline infer`` with some cases failed).
        seconds, max_bytes: the refusal's budget.
        untouched: folders in which nothing may be created or changed (outside the run/output/data folders).
    """
    from pipeline.cli import main

    before = snapshot(*untouched)
    capsys.readouterr()
    result, error, took, peak = _measure(lambda: main(list(argv)))
    out, err = capsys.readouterr()
    if error is not None:
        raise AssertionError(f"pipeline {' '.join(argv)} raised instead of refusing: {error!r}") from error
    assert result == code, f"exit code {result}, expected {code}; stderr:\n{err}\nstdout:\n{out}"
    check_message(err, names)
    assert took <= seconds, f"the refusal took {took:.2f} s (budget {seconds} s)"
    assert peak <= max_bytes, f"the refusal allocated {peak / 2**20:.0f} MiB (budget {max_bytes / 2**20:.0f} MiB)"
    assert snapshot(*untouched) == before, "files were created or changed in a folder that must stay untouched"
    return Refusal(code=int(result), message=err, seconds=took, peak_bytes=peak)


def refused_call(call: Callable[[], Any], error: type[BaseException], names: Iterable[str], *,
                 seconds: float = SECONDS, max_bytes: int = MAX_BYTES, untouched: Sequence[Path] = ()) -> Refusal:
    """Call ``call()`` and assert that it raises ``error`` (a PipelineError kind) with a message as above."""
    before = snapshot(*untouched)
    result, exc, took, peak = _measure(call)
    assert exc is not None, f"accepted instead of refused (returned {result!r})"
    assert isinstance(exc, error), f"raised {type(exc).__name__}: {exc} (expected {error.__name__})"
    check_message(str(exc), names)
    assert took <= seconds, f"the refusal took {took:.2f} s (budget {seconds} s)"
    assert peak <= max_bytes, f"the refusal allocated {peak / 2**20:.0f} MiB (budget {max_bytes / 2**20:.0f} MiB)"
    assert snapshot(*untouched) == before, "files were created or changed in a folder that must stay untouched"
    return Refusal(code=2, message=str(exc), seconds=took, peak_bytes=peak)
