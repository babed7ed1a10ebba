"""The ``postprocess`` stage: optional dense CRF on the probabilities, then optional largest-component clean-up.

With a CRF the stage also keeps the same clean-up without the CRF (``postprocess/no_crf/``), so the evaluate stage
can report both side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import load_cases
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.io.atomic import write_json
from pipeline.io.scan import write_like
from pipeline.postprocess.apply_crf import load_crf_inputs, run_crf, tune_crf
from pipeline.postprocess.largest_component import keep_largest_component
from pipeline.tracking.tracker import Tracker


def _classes(workflow: Workflow, num_classes: int) -> list[int]:
    klc = workflow.postprocess.keep_largest_component
    if klc is True:
        return list(range(1, num_classes))
    return list(klc) if klc else []


@STAGES.register("postprocess")
class PostprocessStage(Stage):
    """Outputs the final prediction per test case (``predictions``) and, with a CRF, the same without it
    (``no_crf_predictions``) and the CRF settings used; with nothing configured, inference outputs pass through."""

    name = "postprocess"
    requires = ("prepare", "infer")

    def config(self, workflow: Workflow) -> Any:
        return workflow.postprocess.model_dump(mode="json")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        wf = ctx.workflow
        num_classes = max(int(k) for k in ctx.upstream["prepare"]["labels"]) + 1
        classes = _classes(wf, num_classes)
        infer = ctx.upstream["infer"]
        crf = wf.postprocess.crf
        if not classes and crf is None:
            return {"files": [], "predictions": dict(infer["predictions"])}
        cases = load_cases(ctx.run_dir)
        images = {c["id"]: c["image"] for c in cases["test"]}
        out: dict[str, Any] = {"files": [], "predictions": {}}
        overrides: dict[str, float] = {}
        if crf is not None:
            out["no_crf_predictions"] = {}
            if crf.tune is not None:
                val = [(ctx.run_dir / rel, Path(c["image"]), Path(c["label"])) for c in cases.get("validation", [])
                       if (rel := infer["validation_probabilities"].get(c["id"]))]
                tuned = tune_crf(val, crf, num_classes)
                write_json(ctx.stage_dir / "crf_tuning.json", tuned)
                out["files"].append("postprocess/crf_tuning.json")
                overrides = tuned["best"]
                ctx.log.info("[postprocess] CRF tuned on %d validation case(s): %s (Dice %.4f, without CRF %.4f)",
                             len(val), overrides, tuned["best_dice"], tuned["no_crf_dice"])
            out["crf"] = {**crf.model_dump(mode="json", exclude={"tune"}), **overrides}
        for cid, rel in tqdm(infer["predictions"].items(), desc="postprocess", unit="case",
                             disable=not wf.train.progress):
            if crf is not None:
                probs, image, spacing, _ = load_crf_inputs(ctx.run_dir / infer["probabilities"][cid], Path(images[cid]),
                                                           num_classes)
                baseline = keep_largest_component(probs.argmax(0).astype(np.uint8), classes)
                target = f"postprocess/no_crf/{cid}.nii.gz"
                write_like(images[cid], baseline, ctx.run_dir / target)
                out["no_crf_predictions"][cid] = target
                out["files"].append(target)
                labels = run_crf(probs, image, spacing, crf, **overrides)
            else:
                labels = np.asarray(nib.load(str(ctx.run_dir / rel)).dataobj, dtype=np.uint8)
            target = f"postprocess/{cid}.nii.gz"
            write_like(images[cid], keep_largest_component(labels.astype(np.uint8), classes), ctx.run_dir / target)
            out["predictions"][cid] = target
            out["files"].append(target)
        return out

    def track(self, tracker: Tracker, ctx: StageContext, outputs: dict[str, Any]) -> None:
        if "crf" in outputs:
            tracker.log_params({f"crf_used.{k}": v for k, v in outputs["crf"].items()})
        if "postprocess/crf_tuning.json" in outputs["files"]:
            tracker.log_artifact(ctx.run_dir / "postprocess" / "crf_tuning.json", "postprocess")
