"""The ``evaluate`` stage: per-case, per-class metrics (``evaluate/cases.csv``), their means
(``summary.json`` at the run folder's root) and an overview figure."""

from __future__ import annotations

import csv
import io
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import PrepareRecord
from pipeline.engine.hooks import Report
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.evaluation.domain_metrics import CASE_LEVEL, domain_rows
from pipeline.evaluation.figures import case_overlay_png, overview_png
from pipeline.evaluation.metrics import case_metrics, nanmean
from pipeline.inference.stage import InferRecord
from pipeline.instances.measure import measure_instances, write_instances_csv
from pipeline.instances.measure import summary as object_summary
from pipeline.io.atomic import write_json, write_text
from pipeline.io.nifti import spacing_of
from pipeline.postprocess.stage import PostprocessRecord


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


class EvaluateRecord(StageRecord):
    """The test metrics (also in ``summary.json`` at the run folder's root) and the tables and figure.

    Attributes:
        summary: ``dice_mean``/``hd95_mean``/... , ``classes`` (per-class means), ``domain`` (domain metric means),
            and with a CRF ``no_crf`` (the same without it) and ``crf`` (the settings used).
        cases_csv: per case and class metrics.
        domain_csv: per case domain metrics (None when the domain has none).
        overview: the overview figure (None when ``evaluate.figures`` is 0).
        overlays: case id → its overlay figure (image, reference, prediction on a few slices).
        objects: case id → per-object measurements of its predicted instances (``instances`` workflows):
            area or volume in µm² / µm³, centroid, mean intensity, eccentricity (:mod:`pipeline.instances.measure`).
    """

    summary: dict[str, Any]
    cases_csv: str
    domain_csv: str | None = None
    overview: str | None = None
    overlays: dict[str, str] = {}
    objects: dict[str, str] = {}


@STAGES.register("evaluate")
class EvaluateStage(Stage):
    """Records the summary (also written to ``summary.json``) and the paths of the tables and figure."""

    name = "evaluate"
    requires = ("prepare", "infer", "postprocess")
    record = EvaluateRecord

    def config(self, workflow: Workflow) -> Any:
        return workflow.evaluate.model_dump(mode="json")

    def run(self, ctx: StageContext) -> EvaluateRecord:
        wf = ctx.workflow
        prep, post = ctx.need(PrepareRecord), ctx.need(PostprocessRecord)
        instance_maps = ctx.need(InferRecord).instances
        labels = {str(k): v for k, v in prep.labels.items()}
        num_classes = prep.num_classes
        # "" is the final prediction; with a CRF, "_no_crf" is the same pipeline without it (side by side).
        variants = {"": post.predictions}
        if post.no_crf_predictions is not None:
            variants["_no_crf"] = post.no_crf_predictions
        metrics = list(wf.evaluate.metrics)
        cases = prep.split("test")
        rows: list[dict[str, Any]] = []
        domain_table: list[dict[str, Any]] = []
        objects: dict[str, str] = {}  # case id → its per-object measurements (instances.csv)

        for case in tqdm(cases, desc="evaluate", unit="case", disable=not wf.train.progress):
            truth_img = nib.load(case.label)
            truth = np.asarray(truth_img.dataobj).astype(np.int64)
            case_rows = {c: {"case": case.id, "class": c, "class_name": labels[str(c)]}
                         for c in range(1, num_classes)}
            for suffix, preds in variants.items():
                pred = np.asarray(nib.load(str(ctx.path(preds[case.id]))).dataobj).astype(np.int64)
                for c, values in case_metrics(pred, truth, num_classes, spacing_of(truth_img), metrics).items():
                    case_rows[c].update({f"{m}{suffix}": v for m, v in values.items()})
                if not suffix:  # the final prediction
                    inst = None
                    if case.id in instance_maps:
                        inst = np.asarray(nib.load(str(ctx.path(instance_maps[case.id]))).dataobj)
                        objects[case.id] = f"evaluate/instances/{case.id}.csv"
                        measured = object_table(inst, case, spacing_of(truth_img), ctx.path(objects[case.id]))
                    domain = domain_rows(prep.domain, case, truth, pred, spacing_of(truth_img), wf.evaluate, inst)
                    if inst is not None and domain:
                        domain[0].update(measured)
                    domain_table.extend(domain)
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
        domain_csv = None
        if domain_table:
            keys = [k for k in domain_table[0] if k != "case"]
            summary["domain"] = {k: nanmean([r[k] for r in domain_table]) for k in keys}
            domain_csv = "evaluate/cases_domain.csv"
            write_text(ctx.path(domain_csv), _csv(domain_table, ["case", *keys]))
        if post.crf is not None:
            summary["crf"] = post.crf
            ctx.log.info("[evaluate] with vs without CRF:\n%s", before_after_table(summary, metrics))
        per_case = {r["case"]: {k: v for k, v in r.items() if k in CASE_LEVEL} for r in domain_table}
        for r in rows:
            r.update(per_case.get(r["case"], {}))
        extra_cols = [k for k in CASE_LEVEL if any(k in v for v in per_case.values())]
        fields = ["case", "class", "class_name"] + [f"{m}{s}" for m in metrics for s in variants] + extra_cols
        cases_csv = "evaluate/cases.csv"
        write_text(ctx.path(cases_csv), _csv(rows, fields))
        files = [cases_csv, "summary.json"] + ([domain_csv] if domain_csv else []) + list(objects.values())
        overview = None
        if wf.evaluate.figures and cases:
            shown = [{**c.model_dump(), "pred": str(ctx.path(post.predictions[c.id]))}
                     for c in cases[: wf.evaluate.figures]]
            overview = "evaluate/overview.png"
            overview_png(shown, labels, ctx.path(overview))
            files.append(overview)
        overlays: dict[str, str] = {}
        if wf.evaluate.overlays:
            dice = {c.id: nanmean([r.get("dice", float("nan")) for r in rows if r["case"] == c.id]) for c in cases}
            for c in tqdm(cases, desc="overlays", unit="case", disable=not wf.train.progress):
                overlays[c.id] = f"evaluate/overlays/{c.id}.png"
                case_overlay_png({**c.model_dump(), "pred": str(ctx.path(post.predictions[c.id]))}, labels,
                                 ctx.path(overlays[c.id]), wf.evaluate.overlay_slices,
                                 title=f"Dice {dice[c.id]:.3f}" if dice[c.id] == dice[c.id] else "")
            files.extend(overlays.values())
        write_json(ctx.run_dir / "summary.json", summary)
        return EvaluateRecord(files=tuple(files), summary=summary, cases_csv=cases_csv, domain_csv=domain_csv,
                              overview=overview, overlays=overlays, objects=objects)

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        assert isinstance(record, EvaluateRecord)
        own_folder = set(record.overlays.values()) | set(record.objects.values())  # logged under their folders
        artifacts = tuple((ctx.path(f), None if f == "summary.json" else "evaluate") for f in record.files
                          if f not in own_folder)
        artifacts += tuple((ctx.path(f), "evaluate/overlays") for f in record.overlays.values())
        artifacts += tuple((ctx.path(f), "evaluate/instances") for f in record.objects.values())
        images = tuple((ctx.path(f), f"overlay/{case}") for case, f in record.overlays.items())
        tables = ((ctx.path(record.cases_csv), "evaluate/cases_table.json"),)
        if record.domain_csv:
            tables += ((ctx.path(record.domain_csv), "evaluate/cases_domain_table.json"),)
        return Report(metrics=flat_test_metrics(record.summary), artifacts=artifacts, images=images, tables=tables)


def object_table(instances: np.ndarray, case: Any, spacing: list[float], target: Any) -> dict[str, float]:
    """Measure a test case's predicted objects (written to ``target``, its ``instances.csv``) and return their
    summary for the domain table (object count, mean size, ...)."""
    image = np.asarray(nib.load(case.image).dataobj, dtype=np.float32)
    rows = measure_instances(instances, image, spacing)
    write_instances_csv(rows, target, ndim=instances.ndim)
    return {k: float(v) for k, v in object_summary(rows, ndim=instances.ndim).items()}


def flat_test_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary as flat ``test_*`` metric names: means, per class, domain metrics, and ``_no_crf`` twins."""
    flat: dict[str, float] = {}
    flat.update({f"test_{k.replace('/', '_')}": v for k, v in summary.get("domain", {}).items()})
    for part, suffix in ((summary, ""), (summary.get("no_crf"), "_no_crf")):
        if part is None:
            continue
        flat.update({f"test_{k}{suffix}": v for k, v in part.items() if k.endswith("_mean")})
        for name, values in part["classes"].items():
            flat.update({f"test_{m}_{name}{suffix}": v for m, v in values.items()})
    return flat
