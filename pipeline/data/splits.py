"""Helpers every manifest writer shares (importers and fetchers): split sizes, the split itself, relative paths.

:func:`split_cases` is the one way the pipeline cuts labelled cases into ``training`` / ``validation`` / ``test``:
cases (or groups of cases, e.g. all B-scans of one subject, when there are at least 3 groups) are sorted, shuffled
with ``random.Random(seed)`` and cut about 70/10/20 (:func:`split_counts`), with at least one validation and one
test case (group) once there are 3 or more; training cases get folds ``0..NUM_FOLDS-1`` round-robin (per group),
validation and test cases fold ``-1``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["NUM_FOLDS", "TEST_FRACTION", "VALIDATION_FRACTION", "rel_to", "split_cases", "split_counts"]

# Cross-validation folds over the training cases (validation and test cases get fold -1).
NUM_FOLDS = 5
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.2


def split_counts(n: int, val_fraction: float = VALIDATION_FRACTION,
                 test_fraction: float = TEST_FRACTION) -> tuple[int, int, int]:
    """(training, validation, test) sizes for ``n`` labelled cases (about 70/10/20 by default).

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


def split_cases(cases: Sequence[dict[str, Any]], seed: int = 0, group_key: str | None = None) -> dict[str, list]:
    """Split case dicts (each with ``id``) into ``training`` / ``validation`` / ``test`` and set ``fold``.

    With ``group_key`` and at least 3 distinct groups, whole groups are split (no subject in two splits);
    otherwise single cases are. Training groups get folds ``0..NUM_FOLDS-1`` round-robin in shuffled order,
    validation and test cases ``-1``. Each split is sorted by id.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    use_groups = group_key is not None and len({str(c[group_key]) for c in cases}) >= 3
    for c in cases:
        groups.setdefault(str(c[group_key]) if use_groups else str(c["id"]), []).append(c)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    n_train, n_val, _ = split_counts(len(order))
    parts = {"training": order[:n_train], "validation": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    out: dict[str, list] = {}
    for split, keys in parts.items():
        members = []
        for i, key in enumerate(keys):
            for c in groups[key]:
                c["fold"] = i % NUM_FOLDS if split == "training" else -1
                members.append(c)
        out[split] = sorted(members, key=lambda c: c["id"])
    return out


def rel_to(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder``, POSIX style (manifest paths are relative to the manifest's folder)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
