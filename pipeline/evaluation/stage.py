"""The ``evaluate`` stage: per-case, per-class metrics (``evaluate/cases.csv``), their means
(``summary.json`` at the run folder's root) and an overview figure."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import load_cases
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.evaluation.figures import overview_png
from pipeline.evaluation.metrics import case_metrics, nanmean
from pipeline.io.atomic import write_json, write_text
from pipeline.tracking.tracker import Tracker


def _spacing(img: nib.Nifti1Image) -> list[float]:
    """Voxel size in mm per axis, from the affine's column norms (right for oblique scans too)."""
    return [float(v) for v in np.linalg.norm(img.affine[:3, :3], axis=0)]


@STAGES.register("evaluate")
class EvaluateStage(Stage):
    """Outputs the summary (also written to ``summary.json``) and the paths of the table and figure."""

    name = "evaluate"
    requires = ("prepare", "postprocess")

    def config(self, workflow: Workflow) -> Any:
        return workflow.evaluate.model_dump(mode="json")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        wf = ctx.workflow
        labels: dict[str, str] = ctx.upstream["prepare"]["labels"]
        num_classes = max(int(k) for k in labels) + 1
        preds = ctx.upstream["postprocess"]["predictions"]
        cases = load_cases(ctx.run_dir)["test"]
        rows: list[dict[str, Any]] = []
        for case in tqdm(cases, desc="evaluate", unit="case", disable=not wf.train.progress):
            truth_img = nib.load(case["label"])
            truth = np.asarray(truth_img.dataobj).astype(np.int64)
            pred = np.asarray(nib.load(str(ctx.run_dir / preds[case["id"]])).dataobj).astype(np.int64)
            per_class = case_metrics(pred, truth, num_classes, _spacing(truth_img), wf.evaluate.metrics)
            for c, values in per_class.items():
                rows.append({"case": case["id"], "class": c, "class_name": labels[str(c)], **values})
        metrics = list(wf.evaluate.metrics)
        classes = {
            labels[str(c)]: {m: nanmean([r[m] for r in rows if r["class"] == c]) for m in metrics}
            for c in range(1, num_classes)
        }
        summary: dict[str, Any] = {"workflow": wf.name, "n_cases": len(cases)}
        for m in metrics:
            summary[f"{m}_mean"] = nanmean([v[m] for v in classes.values()])
        summary["classes"] = classes
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["case", "class", "class_name", *metrics], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        write_text(ctx.stage_dir / "cases.csv", buf.getvalue())
        files = ["evaluate/cases.csv", "summary.json"]
        if wf.evaluate.figures and cases:
            shown = [{**c, "pred": str(ctx.run_dir / preds[c["id"]])} for c in cases[: wf.evaluate.figures]]
            overview_png(shown, labels, ctx.stage_dir / "overview.png")
            files.append("evaluate/overview.png")
        write_json(ctx.run_dir / "summary.json", summary)
        return {"files": files, "summary": summary}

    def track(self, tracker: Tracker, ctx: StageContext, outputs: dict[str, Any]) -> None:
        summary = outputs["summary"]
        flat = {f"test_{k}": v for k, v in summary.items() if k.endswith("_mean")}
        for name, values in summary["classes"].items():
            flat.update({f"test_{m}_{name}": v for m, v in values.items()})
        tracker.log_metrics(flat)
        for f in outputs["files"]:
            tracker.log_artifact(ctx.run_dir / f, None if f == "summary.json" else "evaluate")
