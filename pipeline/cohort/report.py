"""The report of a ``pipeline infer`` batch: one row per case, ``report.json`` and ``report.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io.atomic import WriteFault, write_json, write_text

REPORT_FIELDS = ("case", "input", "status", "seconds", "output", "probabilities", "filled_voxels", "error")


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
    filled_voxels: int = 0  # NaN or infinite voxels filled with the scan's minimum (--nan-policy fill)
    index: int = field(default=0, repr=False)
    # The case failed on a write every later case would fail too (a full disk, a read-only output folder): the
    # batch stops there (:class:`ReportWriter`). Not a report column: ``error`` says what happened.
    stops_batch: bool = field(default=False, repr=False)


def count_statuses(rows: Iterable[Row]) -> dict[str, int]:
    """How many cases were ``written``, ``skipped`` and ``failed``."""
    statuses = [r.status for r in rows]
    return {s: statuses.count(s) for s in ("written", "skipped", "failed")}


def write_report(folder: Path, rows: Iterable[Row], meta: dict[str, Any], stopped: str | None = None) -> None:
    """``report.json`` (with counts and the model, and ``stopped``: why the batch stopped early, when it did) and
    ``report.csv``, in input order."""
    ordered = sorted(rows, key=lambda r: r.index)
    cases = [{k: getattr(r, k) for k in REPORT_FIELDS} for r in ordered]
    write_json(folder / "report.json", {**meta, "counts": count_statuses(ordered),
                                        "filled_voxels": sum(r.filled_voxels for r in ordered),
                                        **({"stopped": stopped} if stopped else {}), "cases": cases})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS)
    w.writeheader()
    w.writerows(cases)
    write_text(folder / "report.csv", buf.getvalue())


class BatchStopped(BaseException):
    """Raised by :meth:`ReportWriter.add` (through the executor) when the batch must stop: see
    :class:`ReportWriter`. :meth:`ReportWriter.outcome` says what happened. Like ``KeyboardInterrupt`` it is no
    ``Exception``: the executors turn an ``Exception`` of a case into that case's failed row and go on."""


@dataclass
class ReportWriter:
    """The report of a running batch, rewritten as each case ends, and the rule for a full disk or a read-only
    output folder.

    A case that failed on such a write (``Row.stops_batch``), or a report that could not be written, stops the
    batch: every later case would fail the same way after its network ran. The rows so far stay in the report
    (with ``stopped``, when it still fits), the cases written before stay on disk with their "done" records, so
    the same command resumes once the folder is writable again. :meth:`outcome` is the one message that says so.

    Attributes:
        folder: the output folder.
        meta: the report's model and options.
        total: how many cases the batch has.
    """

    folder: Path
    meta: dict[str, Any]
    total: int
    rows: list[Row] = field(default_factory=list)
    stopped: str | None = None  # why the batch stopped (the fault's message)
    stopped_at: str | None = None  # the case (or report file) it stopped at
    report_fault: WriteFault | None = None  # the last report write that failed (None: the report is current)

    def add(self, row: Row) -> None:
        """Record a finished case and rewrite the report.

        Raises:
            BatchStopped: the case failed on a write fault every later case would meet, or the report could not
                be written (the first time only: the rows that still arrive while the batch winds down are kept).
        """
        self.rows.append(row)
        first = self.stopped is None
        if row.stops_batch and first:
            self.stopped, self.stopped_at = row.error, row.case
        self.write()
        if first and self.stopped is not None:
            raise BatchStopped(self.stopped)

    def write(self) -> None:
        """Rewrite ``report.json`` and ``report.csv``; a write fault is remembered (and stops the batch), not
        raised."""
        try:
            write_report(self.folder, self.rows, self.meta, self.stopped)
        except WriteFault as fault:
            self.report_fault = fault
            if self.stopped is None:
                self.stopped, self.stopped_at = str(fault), fault.path.name
        else:
            self.report_fault = None

    def outcome(self) -> PipelineError | None:
        """The error the batch ends with when it stopped early or its report is out of date, else None."""
        if self.stopped is None:
            return None
        counts = count_statuses(self.rows)
        done = counts["written"] + counts["skipped"]
        left = self.total - len(self.rows)
        report = (f"{self.folder / 'report.csv'} lists them" if self.report_fault is None else
                  f"the report could not be updated ({self.report_fault.path} not written), so "
                  f"{self.folder / 'report.csv'} lists only the cases that fitted before")
        return PipelineError(f"the batch stopped at {self.stopped_at}: {self.stopped}. {done} case(s) done before "
                             f"stay in {self.folder} (the same command skips them when run again), "
                             f"{counts['failed']} failed, {left} not done; {report}")
