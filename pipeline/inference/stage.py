"""The ``infer`` stage: sliding-window prediction of the test cases, mapped back to each scan's own grid."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import load_cases
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.inference.predict import predict_case, select_device
from pipeline.io.nifti import write_like, write_probabilities
from pipeline.models import build_model
from pipeline.training.checkpoint import load_checkpoint
from pipeline.transforms.build import deterministic_transforms


def predict_to_original(model: Any, image_path: str, wf: Workflow, device: Any, spatial_dims: int = 3) -> np.ndarray:
    """Preprocess one scan, predict it, invert the spatial transforms and return labels on the scan's grid."""
    probs = probabilities_on_original(model, image_path, wf, device, spatial_dims)
    return np.asarray(probs.argmax(0), dtype=np.uint8)


def probabilities_on_original(model: Any, image_path: str, wf: Workflow, device: Any,
                              spatial_dims: int = 3) -> np.ndarray:
    """Class probabilities ``(K, *spatial)`` on the scan's own grid (float32)."""
    pre = Compose(deterministic_transforms(wf.preprocess, keys=("image",), spatial_dims=spatial_dims))
    d = pre({"image": image_path})
    probs = predict_case(model, d["image"], wf.infer, device)
    pred = MetaTensor(probs, meta=d["image"].meta, applied_operations=list(d["image"].applied_operations))
    with warnings.catch_warnings():
        # MONAI's inverse orientation warns for 2D images that their (3D) NIfTI axis codes are longer than the
        # image's rank; the inverse itself is right (tests/inference/test_geometry.py).
        warnings.filterwarnings("ignore", message="axcodes .* length is smaller")
        inverted = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(
            {"image": d["image"], "pred": pred}
        )["pred"]
    return np.asarray(inverted.detach().cpu().numpy(), dtype=np.float32)


@STAGES.register("infer")
class InferStage(Stage):
    """Outputs one label map per test case (``infer/<id>.nii.gz``) with the scan's shape and affine."""

    name = "infer"
    requires = ("prepare", "preprocess", "train")

    def config(self, workflow: Workflow) -> Any:
        crf = workflow.postprocess.crf
        return {"infer": workflow.infer.model_dump(mode="json"),
                "preprocess": workflow.preprocess.model_dump(mode="json"),
                "save_probabilities": crf is not None, "predict_validation": crf is not None and crf.tune is not None}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        wf = ctx.workflow
        device = select_device(wf.infer.device)
        ckpt = load_checkpoint(ctx.run_dir / "train" / "best.pt", device)
        m = ckpt["model"]
        dims = int(ctx.upstream["prepare"].get("spatial_dims", 3))
        model = build_model(m["name"], m["kwargs"], m["in_channels"], m["out_channels"], dims).to(device)
        model.load_state_dict(ckpt["model_state"])
        model.eval()
        crf = wf.postprocess.crf
        all_cases = load_cases(ctx.run_dir)
        todo = [("test", c) for c in all_cases["test"]]
        if crf is not None and crf.tune is not None:  # CRF tuning needs the validation cases' probabilities
            todo += [("validation", c) for c in all_cases.get("validation", [])]
        out: dict[str, dict[str, str]] = {"predictions": {}, "probabilities": {}, "validation_probabilities": {}}
        for split, case in tqdm(todo, desc="infer", unit="case", disable=not wf.train.progress):
            folder = "infer" if split == "test" else "infer/validation"
            rel, probs_rel = f"{folder}/{case['id']}.nii.gz", f"{folder}/{case['id']}_probs.nii.gz"
            save_probs = crf is not None
            if not (ctx.resume and (ctx.run_dir / rel).is_file()):
                probs = probabilities_on_original(model, case["image"], wf, device, dims)
                if save_probs:  # class axis last: the layout `pipeline crf` reads
                    write_probabilities(case["image"], probs, ctx.run_dir / probs_rel)
                write_like(case["image"], probs.argmax(0).astype(np.uint8), ctx.run_dir / rel)
            if split == "test":
                out["predictions"][case["id"]] = rel
            if save_probs:
                out["probabilities" if split == "test" else "validation_probabilities"][case["id"]] = probs_rel
        files = [f for group in out.values() for f in group.values()]
        return {"files": files, **out}
