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

from pipeline.config.schema import InstancesConfig, Workflow
from pipeline.data.stage import PrepareRecord, training_identity
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.errors import DataError
from pipeline.instances.heads import TRAINED_METHODS
from pipeline.instances.loss import EXTRA_KEYS
from pipeline.instances.targets import border_weight_map, normalised_distance, three_class_labels
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
    extras: dict[str, str] = {}  # instance-aware training targets (``weight``, ``distance``) by name


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
        inst = workflow.instances
        if inst is not None and inst.method in TRAINED_METHODS:  # targets from the instance maps
            out["instances"] = inst.target()
        return out

    def run(self, ctx: StageContext) -> PreprocessRecord:
        prep = ctx.need(PrepareRecord)
        inst = ctx.workflow.instances
        method = inst.method if inst is not None and inst.method in TRAINED_METHODS else None
        keys = ("image", "label", "instances") if method else ("image", "label")
        transform = Compose(deterministic_transforms(ctx.workflow.preprocess, keys=keys,
                                                     spatial_dims=prep.spatial_dims))
        out: dict[str, list[PreprocessedCase]] = {}
        todo = [(s, c) for s in SPLITS for c in prep.split(s)]
        for split, case in tqdm(todo, desc="preprocess", unit="case", disable=not ctx.workflow.train.progress):
            extras = {k: f"preprocess/{case.id}_{k}.nii" for k in EXTRA_KEYS.get(method or "", ())}
            done = PreprocessedCase(id=case.id, image=f"preprocess/{case.id}_image.nii",
                                    label=f"preprocess/{case.id}_label.nii", extras=extras)
            if not (ctx.resume and all(ctx.path(f).is_file() for f in (done.label, *extras.values()))):
                files = {"image": case.image, "label": case.label}
                if method:
                    files["instances"] = instance_file(case, method)
                d = transform(files)
                save_channel_first(d["image"], d["image"].affine, ctx.path(done.image), np.float32)
                labels = d["label"]
                if method and inst is not None:
                    labels, targets = instance_targets(d["instances"], inst, d["image"].affine)
                    for k, rel in extras.items():
                        save_channel_first(targets[k], d["image"].affine, ctx.path(rel), np.float32)
                save_channel_first(labels, d["label"].affine, ctx.path(done.label), np.uint8)
            out.setdefault(split, []).append(done)
        files = tuple(f for v in out.values() for e in v for f in (e.image, e.label, *e.extras.values()))
        return PreprocessRecord(files=files, cases={s: tuple(v) for s, v in out.items()})


def instance_file(case: Any, method: str) -> str:
    """The case's instance map (the manifest's ``instances`` file), which the instance-aware targets need."""
    path = getattr(case, "extras", {}).get("instances")
    if path is None:
        raise DataError(f"case '{case.id}' has no 'instances' file in the manifest; instances.method {method} "
                        "trains on instance maps (one id per object): add them to the manifest's cases, or use "
                        "instances.method watershed or components")
    return str(path)


def instance_targets(instances: Any, cfg: InstancesConfig, affine: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and extra targets ``(1, *spatial)`` of a preprocessed instance map ``(1, *spatial)``."""
    inst = np.rint(np.asarray(instances.detach().cpu() if isinstance(instances, torch.Tensor) else instances)[0])
    inst = inst.astype(np.int64)
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    spacing = np.linalg.norm(aff[:3, : inst.ndim], axis=0)
    if cfg.method == "three_class":
        labels = three_class_labels(inst, cfg.boundary_px, spacing)
        weight = border_weight_map(inst, labels, cfg.border_w0, cfg.border_sigma_px, spacing)
        return labels[None], {"weight": weight[None]}
    return (inst > 0).astype(np.uint8)[None], {"distance": normalised_distance(inst, spacing)[None]}
