"""The ``infer`` stage: sliding-window prediction of the test cases, mapped back to each scan's own grid."""

from __future__ import annotations

import logging
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.stage import PrepareRecord
from pipeline.engine.hooks import Report
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.errors import PipelineError
from pipeline.inference.predictor import Predictor
from pipeline.instances.heads import Head
from pipeline.io.scan import write_like, write_probabilities_like
from pipeline.models import build_model
from pipeline.models.shapes import check_divisible
from pipeline.runtime.device import select_device
from pipeline.runtime.precision import precision_here
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.stage import TrainRecord

log = logging.getLogger("pipeline")


def predict_file(predictor: Predictor, image_path: str, probabilities: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and optionally class probabilities ``(K, *spatial)``) of one NIfTI scan on its own grid."""
    labels, probs, _ = predict_file_all(predictor, image_path, probabilities)
    return labels, probs


def predict_file_all(predictor: Predictor, image_path: str, probabilities: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`predict_file` and the instance map (None when the predictor's head makes none)."""
    img = nib.load(str(image_path))
    return predictor.restore_all(predictor.network(predictor.prepare(np.asarray(img.dataobj), img.affine),
                                                   probabilities), probabilities)


def inference_head(checkpoint: dict[str, Any], workflow: Workflow, classes: int) -> Head:
    """What the checkpoint's network outputs, decoded as the workflow's ``instances`` says."""
    head = Head.from_json(checkpoint.get("head"), classes)
    inst = workflow.instances
    if inst is None:
        if head.trained:
            raise PipelineError(f"the model was trained for instances.method {head.method} but the workflow has no "
                              "instances section; add it back")
        return head
    return head.with_decoding(inst.method, inst.decoder())


def predict_to_original(model: Any, image_path: str, wf: Workflow, device: Any, spatial_dims: int = 3) -> np.ndarray:
    """Preprocess one scan, predict it, invert the spatial transforms and return labels on the scan's grid."""
    return predict_file(Predictor(model, wf.preprocess, wf.infer, device, spatial_dims), image_path)[0]


class InferRecord(StageRecord):
    """Label maps (and, for the CRF, class probabilities) on each scan's own grid, paths relative to the run folder.

    Attributes:
        predictions: test case id → label map.
        probabilities: test case id → class probabilities (class axis last), when the workflow has a CRF.
        validation_probabilities: validation case id → class probabilities, when the CRF is tuned.
    """

    predictions: dict[str, str]
    probabilities: dict[str, str] = {}
    validation_probabilities: dict[str, str] = {}
    instances: dict[str, str] = {}  # test case id → instance map (one id per object), with ``instances``
    precision: str = "fp32"  # the network's arithmetic: infer.precision resolved on the device
    compile_warm_up_seconds: float | None = None  # infer.compile: the compilation before the first case


@STAGES.register("infer")
class InferStage(Stage):
    """Records one label map per test case (``infer/<id>.nii.gz``) with the scan's shape and affine."""

    name = "infer"
    requires = ("prepare", "train")
    record = InferRecord

    def config(self, workflow: Workflow) -> Any:
        """The inference settings; the precision as what it resolves to here, only when not fp32, and compile
        only when on (the keys of runs from before either existed stay as they were)."""
        crf = workflow.postprocess.crf
        infer = workflow.infer.model_dump(mode="json")
        infer.pop("precision")
        if infer.pop("compile"):
            infer["compile"] = True
        resolved = precision_here(workflow.infer.precision, workflow.infer.device)
        if resolved not in (None, "fp32"):
            infer["precision"] = resolved
        out = {"infer": infer,
               "preprocess": workflow.preprocess.model_dump(mode="json"),
               "save_probabilities": crf is not None, "predict_validation": crf is not None and crf.tune is not None}
        if workflow.instances is not None:
            out["instances"] = workflow.instances.model_dump(mode="json")
        return out

    def run(self, ctx: StageContext) -> InferRecord:
        wf = ctx.workflow
        prep = ctx.need(PrepareRecord)
        device = select_device(wf.infer.device)
        ckpt = load_checkpoint(ctx.path(ctx.need(TrainRecord).best_checkpoint), device)
        m = ckpt["model"]
        model = build_model(m["name"], m["kwargs"], m["in_channels"], m["out_channels"], prep.spatial_dims)
        model.load_state_dict(ckpt["model_state"])
        check_divisible(model, {"infer.roi_size": wf.infer.roi_size})
        head = inference_head(ckpt, wf, prep.num_classes)
        predictor = Predictor(model, wf.preprocess, wf.infer, device, prep.spatial_dims, head)
        log.info("[infer] precision: %s", predictor.precision.describe())
        warm = None
        if wf.infer.compile:
            warm = predictor.warm_up()
            log.info("[infer] torch.compile warm-up: %.1f s (before the first case)", warm)
        crf = wf.postprocess.crf
        todo = [("test", c) for c in prep.split("test")]
        if crf is not None and crf.tune is not None:  # CRF tuning needs the validation cases' probabilities
            todo += [("validation", c) for c in prep.split("validation")]
        out: dict[str, dict[str, str]] = {"predictions": {}, "probabilities": {}, "validation_probabilities": {},
                                          "instances": {}}
        for split, case in tqdm(todo, desc="infer", unit="case", disable=not wf.train.progress):
            folder = "infer" if split == "test" else "infer/validation"
            rel, probs_rel = f"{folder}/{case.id}.nii.gz", f"{folder}/{case.id}_probs.nii.gz"
            inst_rel = f"{folder}/{case.id}_instances.nii.gz" if head.method and split == "test" else None
            save_probs = crf is not None
            if not (ctx.resume and all(ctx.path(f).is_file() for f in (rel, inst_rel) if f)):
                labels, probs, instances = predict_file_all(predictor, case.image, save_probs)
                if probs is not None:  # class axis last: the layout `pipeline crf` reads
                    write_probabilities_like(case.image, probs, ctx.path(probs_rel))
                if inst_rel is not None and instances is not None:
                    write_like(case.image, instances, ctx.path(inst_rel))
                write_like(case.image, labels, ctx.path(rel))
            if split == "test":
                out["predictions"][case.id] = rel
                if inst_rel is not None:
                    out["instances"][case.id] = inst_rel
            if save_probs:
                out["probabilities" if split == "test" else "validation_probabilities"][case.id] = probs_rel
        files = tuple(f for group in out.values() for f in group.values())
        return InferRecord(files=files, precision=predictor.precision.name, compile_warm_up_seconds=warm, **out)

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        assert isinstance(record, InferRecord)
        metrics = ({"infer_compile_warm_up_seconds": record.compile_warm_up_seconds}
                   if record.compile_warm_up_seconds is not None else {})
        return Report(metrics=metrics, tags={"infer_precision": record.precision})

