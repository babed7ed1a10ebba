"""The ``infer`` stage: sliding-window prediction of the test cases, mapped back to each scan's own grid."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import load_cases
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.inference.predict import predict_case, select_device
from pipeline.io.nifti import write_like
from pipeline.models import build_model
from pipeline.training.checkpoint import load_checkpoint
from pipeline.transforms.build import deterministic_transforms


def predict_to_original(model: Any, image_path: str, wf: Workflow, device: Any) -> np.ndarray:
    """Preprocess one scan, predict it, invert the spatial transforms and return labels on the scan's grid."""
    pre = Compose(deterministic_transforms(wf.preprocess, keys=("image",)))
    d = pre({"image": image_path})
    probs = predict_case(model, d["image"], wf.infer, device)
    pred = MetaTensor(probs, meta=d["image"].meta, applied_operations=list(d["image"].applied_operations))
    inverted = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(
        {"image": d["image"], "pred": pred}
    )["pred"]
    return np.asarray(inverted.argmax(0).cpu().numpy(), dtype=np.uint8)


@STAGES.register("infer")
class InferStage(Stage):
    """Outputs one label map per test case (``infer/<id>.nii.gz``) with the scan's shape and affine."""

    name = "infer"
    requires = ("prepare", "preprocess", "train")

    def config(self, workflow: Workflow) -> Any:
        return {"infer": workflow.infer.model_dump(mode="json"),
                "preprocess": workflow.preprocess.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        wf = ctx.workflow
        device = select_device(wf.infer.device)
        ckpt = load_checkpoint(ctx.run_dir / "train" / "best.pt", device)
        m = ckpt["model"]
        model = build_model(m["name"], m["kwargs"], m["in_channels"], m["out_channels"]).to(device)
        model.load_state_dict(ckpt["model_state"])
        model.eval()
        cases = load_cases(ctx.run_dir)["test"]
        preds = {}
        for case in tqdm(cases, desc="infer", unit="case", disable=not wf.train.progress):
            rel = f"infer/{case['id']}.nii.gz"
            if not (ctx.resume and (ctx.run_dir / rel).is_file()):
                labels = predict_to_original(model, case["image"], wf, device)
                write_like(case["image"], labels, ctx.run_dir / rel)
            preds[case["id"]] = rel
        return {"files": list(preds.values()), "predictions": preds}
