"""The Markdown descriptions MLflow shows: a run's summary (``mlflow.note.content``) and an experiment's."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"


def experiment_note(workflow_file: str, description: str, labels: Mapping[Any, str] | None) -> str:
    """What the experiment is: the workflow file, its task and the classes it segments."""
    lines = [description.strip() or "Segmentation workflow.", "", f"- workflow: `{workflow_file}`"]
    if labels:
        lines.append("- labels: " + ", ".join(f"{k} {v}" for k, v in labels.items()))
    lines.append("- each `pipeline run` of this workflow is a run here; `pipeline compare --experiment NAME` "
                 "tabulates them")
    return "\n".join(lines)


def run_note(params: Mapping[str, Any], metrics: Mapping[str, float], run_dir: Path,
             dataset: Mapping[str, Any] | None) -> str:
    """A run's summary: test Dice and HD95 per class (with and without CRF when the CRF is on), the model, the
    data and the run folder."""
    crf = any(k.endswith("_no_crf") for k in metrics)
    classes = sorted({m.group(1) for k in metrics if (m := re.fullmatch(r"test_dice_(.+?)(_no_crf)?", k))
                      and m.group(1) != "mean"})
    lines: list[str] = []
    if "test_dice_mean" in metrics:
        mean = f"**test Dice {_fmt(metrics['test_dice_mean'])}**"
        if crf:
            mean += f" (without CRF {_fmt(metrics.get('test_dice_mean_no_crf'))})"
        if "test_hd95_mean" in metrics:
            mean += f", HD95 {_fmt(metrics['test_hd95_mean'], 2)}"
        lines += [mean, ""]
        # a list, not a table: MLflow's description pane renders Markdown tables without cell spacing
        for c in classes:
            row = f"- **{c}**: Dice {_fmt(metrics.get(f'test_dice_{c}'))}"
            if crf:
                row += f" (without CRF {_fmt(metrics.get(f'test_dice_{c}_no_crf'))})"
            if f"test_hd95_{c}" in metrics:
                row += f", HD95 {_fmt(metrics[f'test_hd95_{c}'], 2)}"
            lines.append(row)
        lines.append("")
    else:
        lines += ["no test metrics yet (the run did not reach the evaluate stage)", ""]
    model = params.get("model.name")
    if model:
        lines.append(f"- model: `{model}`" + (f", best validation Dice {_fmt(metrics['best_val_dice'])} at epoch "
                                             f"{int(metrics.get('best_epoch', 0))}" if "best_val_dice" in metrics
                                             else ""))
    if dataset:
        splits = ", ".join(f"{n} {s}" for s, n in dataset.get("splits", {}).items())
        lines.append(f"- data: `{dataset.get('name')}` ({splits}) from `{dataset.get('source')}`")
    lines.append(f"- run folder: `{run_dir}`")
    return "\n".join(lines)
