"""The report of a ``pipeline infer`` batch: one row per case, ``report.json`` and ``report.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.io.atomic import write_json, write_text

REPORT_FIELDS = ("case", "input", "status", "seconds", "output", "probabilities", "error")


@dataclass
class Row:
    """One line of the report."""

    case: str
    input: str
    status: str  # written | skipped | failed
    seconds: float = 0.0
    output: str = ""
    probabilities: str = ""
    error: str = ""
    index: int = field(default=0, repr=False)


def count_statuses(rows: Iterable[Row]) -> dict[str, int]:
    """How many cases were ``written``, ``skipped`` and ``failed``."""
    statuses = [r.status for r in rows]
    return {s: statuses.count(s) for s in ("written", "skipped", "failed")}


def write_report(folder: Path, rows: Iterable[Row], meta: dict[str, Any]) -> None:
    """``report.json`` (with counts and the model) and ``report.csv``, in input order."""
    ordered = sorted(rows, key=lambda r: r.index)
    cases = [{k: getattr(r, k) for k in REPORT_FIELDS} for r in ordered]
    write_json(folder / "report.json", {**meta, "counts": count_statuses(ordered), "cases": cases})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS)
    w.writeheader()
    w.writerows(cases)
    write_text(folder / "report.csv", buf.getvalue())
