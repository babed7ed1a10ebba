"""The ``preprocess`` stage: apply the deterministic transforms to the training and validation cases once and
store the results as NIfTI, so that training never decodes or resamples the original scans again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import load_cases
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.io.atomic import atomic_path
from pipeline.transforms.build import deterministic_transforms

SPLITS = ("training", "validation")


def save_channel_first(array: torch.Tensor | np.ndarray, affine: Any, target: Path, dtype: Any) -> None:
    """Write a channel-first (C, X, Y, Z) array as NIfTI (X, Y, Z) or (X, Y, Z, C), atomically."""
    data = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    img = nib.Nifti1Image(data.astype(dtype), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(target) as tmp:
        nib.save(img, str(tmp))


@STAGES.register("preprocess")
class PreprocessStage(Stage):
    """Outputs the preprocessed training and validation cases (paths relative to the run folder)."""

    name = "preprocess"
    requires = ("prepare",)

    def config(self, workflow: Workflow) -> Any:
        cfg = workflow.preprocess.model_dump(mode="json")
        return {k: cfg[k] for k in ("orientation", "spacing", "intensity", "crop_foreground", "crop_margin")}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cases = load_cases(ctx.run_dir)
        dims = int(ctx.upstream["prepare"].get("spatial_dims", 3))
        transform = Compose(deterministic_transforms(ctx.workflow.preprocess, spatial_dims=dims))
        out: dict[str, list[dict[str, Any]]] = {}
        todo = [(s, c) for s in SPLITS for c in cases.get(s, [])]
        for split, case in tqdm(todo, desc="preprocess", unit="case", disable=not ctx.workflow.train.progress):
            image_rel = f"preprocess/{case['id']}_image.nii"
            label_rel = f"preprocess/{case['id']}_label.nii"
            if not (ctx.resume and (ctx.run_dir / label_rel).is_file()):
                d = transform({"image": case["image"], "label": case["label"]})
                save_channel_first(d["image"], d["image"].affine, ctx.run_dir / image_rel, np.float32)
                save_channel_first(d["label"], d["label"].affine, ctx.run_dir / label_rel, np.uint8)
            out.setdefault(split, []).append({"id": case["id"], "image": image_rel, "label": label_rel})
        files = [e[k] for v in out.values() for e in v for k in ("image", "label")]
        return {"files": files, "cases": out}
