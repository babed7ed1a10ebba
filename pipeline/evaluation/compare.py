"""Compare finished runs side by side: a table of runs × test metrics, from run folders or an MLflow experiment."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


def rows_from_run_dirs(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run folder: its workflow, model and test metrics (the evaluate stage's record).

    Raises:
        PipelineError: a folder is not a run folder, or its evaluate stage has not finished.
    """
    from pipeline.engine.records import read_run
    from pipeline.evaluation.stage import EvaluateRecord, EvaluateStage, flat_test_metrics

    rows = []
    for run_dir in run_dirs:
        if not (Path(run_dir) / "workflow.yaml").is_file():
            evaluated = None
        else:
            run = read_run(Path(run_dir), [EvaluateStage])
            evaluated = run.need(EvaluateRecord, "compare") if run.legacy else run.get(EvaluateRecord)
        if evaluated is None:
            raise PipelineError(f"{run_dir}: no summary.json (the run has not finished its evaluate stage); finish "
                                f"the run first (pipeline run ... --run-dir {run_dir})")
        metrics = {k.removeprefix("test_"): v for k, v in flat_test_metrics(evaluated.summary).items()}
        rows.append({"run": str(run_dir), "workflow": run.workflow.name, "model": run.workflow.model.name,
                     **metrics})
    return rows


def rows_from_experiment(experiment: str, tracking_uri: str) -> list[dict[str, Any]]:
    """One row per finished MLflow run of ``experiment``: its model and ``test_*`` metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise PipelineError(f"no MLflow experiment '{experiment}' in {tracking_uri}; experiments: "
                            f"{', '.join(names) or 'none'}")
    rows = []
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'"):
        metrics = {k.removeprefix("test_"): v for k, v in run.data.metrics.items() if k.startswith("test_")}
        rows.append({"run": run.info.run_name or run.info.run_id, "workflow": experiment,
                     "model": run.data.params.get("model.name", ""), **metrics})
    return rows


def _columns(rows: list[dict[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    keys = ["run", "workflow", "model"]
    order = ("dice", "hd95", "asd")

    def rank(k: str) -> tuple[bool, int, str]:
        return (not k.endswith("_mean"), next((i for i, m in enumerate(order) if k.startswith(m)), len(order)), k)

    found = sorted({k for r in rows for k in r} - set(keys), key=rank)
    return keys + [k for k in found if metrics is None or any(k.startswith(m) for m in metrics)]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def to_markdown(rows: list[dict[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table of runs × metrics (metrics filtered by prefix when given)."""
    cols = _columns(rows, metrics)
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """The same table as CSV."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows, metrics), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
