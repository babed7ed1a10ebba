"""Helpers every manifest writer shares: split sizes and manifest-relative paths."""

from __future__ import annotations

import os
from pathlib import Path


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(training, validation, test) sizes for ``n`` labelled cases.

    With at least 3 cases, validation and test get at least one case each and training keeps at least one; with
    fewer, all cases are training.
    """
    if n < 3:
        return n, 0, 0
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    while n - n_val - n_test < 1:
        if n_test >= n_val and n_test > 1:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def rel_to(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder``, POSIX style (manifest paths are relative to the manifest's folder)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
