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
from pipeline.evaluation.domain import (
    boundary_errors,
    boundary_rows,
    instance_metrics,
    instances_by_watershed,
    instances_from_semantic,
)
from pipeline.evaluation.metrics import case_metrics, nanmean
from pipeline.io.atomic import write_json, write_text
from pipeline.io.nifti import spacing_of
from pipeline.tracking.tracker import Tracker


# Case-level domain metrics that also go into cases.csv (repeated on each class row of the case).
CASE_LEVEL = ("instance_f1", "mean_matched_iou", "boundary_mae_px", "boundary_mae_um")


def _domain_metrics(domain: str, case: dict[str, Any], truth: np.ndarray, pred: np.ndarray,
                    spacing: list[float], instances: str = "components") -> list[dict[str, Any]]:
    """Cells: object F1 at IoU 0.5 and mean matched IoU (instances = connected components or watershed of the
    prediction;
    reference instances from the manifest's ``instances`` file when present). OCT B-scans: mean absolute position
    error of each layer boundary, in pixels and µm (depth along the second axis, as the importers store it)."""
    if domain.startswith("cell"):
        extras = case.get("extras", {})
        ref = (np.asarray(nib.load(extras["instances"]).dataobj) if "instances" in extras
               else instances_from_semantic(truth, range(1, int(truth.max()) + 1)))
        split = instances_by_watershed if instances == "watershed" else instances_from_semantic
        pred_inst = split(pred, range(1, max(int(pred.max()), 1) + 1))
        m = instance_metrics(pred_inst, ref)
        return [{"case": case["id"], "instance_f1": m["f1"], "mean_matched_iou": m["mean_matched_iou"],
                 "n_pred": m["n_pred"], "n_true": m["n_true"]}]
    if domain.startswith("oct") and truth.ndim == 2:
        errs = boundary_errors(pred, boundary_rows(truth), axial_mm=spacing[1])
        px = [v for k, v in errs.items() if k.endswith("_px")]
        um = [v for k, v in errs.items() if k.endswith("_um")]
        return [{"case": case["id"], "boundary_mae_px": nanmean(px), "boundary_mae_um": nanmean(um), **errs}]
    return []


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def before_after_table(summary: dict[str, Any], metrics: list[str]) -> str:
    """A Markdown table of each class's metrics without and with the CRF (DeepLab-style before/after)."""
    head = "| class | " + " | ".join(f"{m} no CRF | {m} CRF" for m in metrics) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(metrics))]
    names = list(summary["classes"]) + ["mean"]
    for name in names:
        before = summary["no_crf"]["classes"].get(name) or {m: summary["no_crf"][f"{m}_mean"] for m in metrics}
        after = summary["classes"].get(name) or {m: summary[f"{m}_mean"] for m in metrics}
        lines.append(f"| {name} | " + " | ".join(f"{before[m]:.4f} | {after[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)


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
        post = ctx.upstream["postprocess"]
        # "" is the final prediction; with a CRF, "_no_crf" is the same pipeline without it (side by side).
        variants = {"": post["predictions"]}
        if "no_crf_predictions" in post:
            variants["_no_crf"] = post["no_crf_predictions"]
        metrics = list(wf.evaluate.metrics)
        cases = load_cases(ctx.run_dir)["test"]
        domain = str(ctx.upstream["prepare"].get("domain", ""))
        rows: list[dict[str, Any]] = []
        domain_rows: list[dict[str, Any]] = []

        for case in tqdm(cases, desc="evaluate", unit="case", disable=not wf.train.progress):
            truth_img = nib.load(case["label"])
            truth = np.asarray(truth_img.dataobj).astype(np.int64)
            case_rows = {c: {"case": case["id"], "class": c, "class_name": labels[str(c)]}
                         for c in range(1, num_classes)}
            for suffix, preds in variants.items():
                pred = np.asarray(nib.load(str(ctx.run_dir / preds[case["id"]])).dataobj).astype(np.int64)
                for c, values in case_metrics(pred, truth, num_classes, spacing_of(truth_img), metrics).items():
                    case_rows[c].update({f"{m}{suffix}": v for m, v in values.items()})
                if not suffix:  # the final prediction
                    domain_rows.extend(_domain_metrics(domain, case, truth, pred, spacing_of(truth_img),
                                                       wf.evaluate.instances))
            rows.extend(case_rows.values())
        summary: dict[str, Any] = {"workflow": wf.name, "n_cases": len(cases)}
        for suffix in variants:
            classes = {labels[str(c)]: {m: nanmean([r[f"{m}{suffix}"] for r in rows if r["class"] == c])
                                        for m in metrics} for c in range(1, num_classes)}
            part = {f"{m}_mean": nanmean([v[m] for v in classes.values()]) for m in metrics}
            part["classes"] = classes
            if suffix:
                summary["no_crf"] = part
            else:
                summary.update(part)
        if domain_rows:
            keys = [k for k in domain_rows[0] if k != "case"]
            summary["domain"] = {k: nanmean([r[k] for r in domain_rows]) for k in keys}
            write_text(ctx.stage_dir / "cases_domain.csv", _csv(domain_rows, ["case", *keys]))
        if "crf" in post:
            summary["crf"] = post["crf"]
            ctx.log.info("[evaluate] with vs without CRF:\n%s", before_after_table(summary, metrics))
        per_case = {r["case"]: {k: v for k, v in r.items() if k in CASE_LEVEL} for r in domain_rows}
        for r in rows:
            r.update(per_case.get(r["case"], {}))
        extra_cols = [k for k in CASE_LEVEL if any(k in v for v in per_case.values())]
        fields = ["case", "class", "class_name"] + [f"{m}{s}" for m in metrics for s in variants] + extra_cols
        write_text(ctx.stage_dir / "cases.csv", _csv(rows, fields))
        files = ["evaluate/cases.csv", "summary.json"] + (["evaluate/cases_domain.csv"] if domain_rows else [])
        if wf.evaluate.figures and cases:
            shown = [{**c, "pred": str(ctx.run_dir / post["predictions"][c["id"]])}
                     for c in cases[: wf.evaluate.figures]]
            overview_png(shown, labels, ctx.stage_dir / "overview.png")
            files.append("evaluate/overview.png")
        write_json(ctx.run_dir / "summary.json", summary)
        return {"files": files, "summary": summary}

    def track(self, tracker: Tracker, ctx: StageContext, outputs: dict[str, Any]) -> None:
        summary = outputs["summary"]
        flat: dict[str, float] = {}
        flat.update({f"test_{k.replace('/', '_')}": v for k, v in summary.get("domain", {}).items()})
        for part, suffix in ((summary, ""), (summary.get("no_crf"), "_no_crf")):
            if part is None:
                continue
            flat.update({f"test_{k}{suffix}": v for k, v in part.items() if k.endswith("_mean")})
            for name, values in part["classes"].items():
                flat.update({f"test_{m}_{name}{suffix}": v for m, v in values.items()})
        tracker.log_metrics(flat)
        for f in outputs["files"]:
            tracker.log_artifact(ctx.run_dir / f, None if f == "summary.json" else "evaluate")
