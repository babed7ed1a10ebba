"""The ``postprocess`` stage: optional clean-up of the predicted label maps."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from pipeline.config.schema import Workflow
from pipeline.data.stage import load_cases
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.io.nifti import write_like
from pipeline.postprocess.largest_component import keep_largest_component


def _classes(workflow: Workflow, num_classes: int) -> list[int]:
    klc = workflow.postprocess.keep_largest_component
    if klc is True:
        return list(range(1, num_classes))
    return list(klc) if klc else []


@STAGES.register("postprocess")
class PostprocessStage(Stage):
    """Outputs the final prediction per test case; with nothing configured, the inference outputs pass through."""

    name = "postprocess"
    requires = ("prepare", "infer")

    def config(self, workflow: Workflow) -> Any:
        return workflow.postprocess.model_dump(mode="json")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        num_classes = max(int(k) for k in ctx.upstream["prepare"]["labels"]) + 1
        classes = _classes(ctx.workflow, num_classes)
        infer = ctx.upstream["infer"]["predictions"]
        if not classes:
            return {"files": [], "predictions": dict(infer)}
        images = {c["id"]: c["image"] for c in load_cases(ctx.run_dir)["test"]}
        out = {}
        for cid, rel in infer.items():
            labels = np.asarray(nib.load(str(ctx.run_dir / rel)).dataobj, dtype=np.uint8)
            target = f"postprocess/{cid}.nii.gz"
            write_like(images[cid], keep_largest_component(labels, classes), ctx.run_dir / target)
            out[cid] = target
        return {"files": list(out.values()), "predictions": out}
