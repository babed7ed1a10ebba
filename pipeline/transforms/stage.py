"""The ``preprocess`` stage: apply the deterministic transforms to the training and validation cases once and
store the results as NIfTI, so that training never decodes or resamples the original scans again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import PrepareRecord, training_identity
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
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


class PreprocessedCase(BaseModel):
    """One preprocessed case: NIfTI image (channels last) and label, paths relative to the run folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    image: str
    label: str


class PreprocessRecord(StageRecord):
    """The preprocessed training and validation cases, by split."""

    cases: dict[str, tuple[PreprocessedCase, ...]]


@STAGES.register("preprocess")
class PreprocessStage(Stage):
    """Records the preprocessed training and validation cases (paths relative to the run folder)."""

    name = "preprocess"
    requires = ("prepare",)
    record = PreprocessRecord

    def upstream_identity(self, name: str, record: StageRecord, execution: str) -> str:
        """Only prepare's training and validation cases matter here (a changed test file does not retrain)."""
        return training_identity(name, record, execution)

    def config(self, workflow: Workflow) -> Any:
        cfg = workflow.preprocess.model_dump(mode="json")
        out = {k: cfg[k] for k in ("orientation", "spacing", "intensity", "crop_foreground", "crop_margin")}
        if cfg["nan_policy"] != "refuse":  # fill changes the images; refuse keeps the key of earlier runs
            out["nan_policy"] = cfg["nan_policy"]
        return out

    def run(self, ctx: StageContext) -> PreprocessRecord:
        prep = ctx.need(PrepareRecord)
        transform = Compose(deterministic_transforms(ctx.workflow.preprocess, spatial_dims=prep.spatial_dims))
        out: dict[str, list[PreprocessedCase]] = {}
        todo = [(s, c) for s in SPLITS for c in prep.split(s)]
        for split, case in tqdm(todo, desc="preprocess", unit="case", disable=not ctx.workflow.train.progress):
            done = PreprocessedCase(id=case.id, image=f"preprocess/{case.id}_image.nii",
                                    label=f"preprocess/{case.id}_label.nii")
            if not (ctx.resume and ctx.path(done.label).is_file()):
                d = transform({"image": case.image, "label": case.label})
                save_channel_first(d["image"], d["image"].affine, ctx.path(done.image), np.float32)
                save_channel_first(d["label"], d["label"].affine, ctx.path(done.label), np.uint8)
            out.setdefault(split, []).append(done)
        files = tuple(f for v in out.values() for e in v for f in (e.image, e.label))
        return PreprocessRecord(files=files, cases={s: tuple(v) for s, v in out.items()})
