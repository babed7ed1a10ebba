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
from pipeline.data.stage import PrepareRecord
from pipeline.engine.hooks import Report
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.inference.stage import InferRecord
from pipeline.io.atomic import write_json
from pipeline.io.scan import write_like
from pipeline.postprocess.apply_crf import load_crf_inputs, tune_crf
from pipeline.postprocess.postprocessor import Postprocessor


class PostprocessRecord(StageRecord):
    """The final label map per test case and, with a CRF, the same clean-up without it.

    Attributes:
        predictions: test case id → final label map (the inference output itself when nothing is configured).
        no_crf_predictions: with a CRF: test case id → argmax + the same clean-up, without the CRF.
        crf: with a CRF: the settings used (tuned values included).
        crf_tuning: with ``crf.tune``: the JSON of every grid point's validation Dice and the choice.
    """

    predictions: dict[str, str]
    no_crf_predictions: dict[str, str] | None = None
    crf: dict[str, Any] | None = None
    crf_tuning: str | None = None


@STAGES.register("postprocess")
class PostprocessStage(Stage):
    """Records the final prediction per test case and, with a CRF, the same without it and the CRF settings used;
    with nothing configured, inference outputs pass through."""

    name = "postprocess"
    requires = ("prepare", "infer")
    record = PostprocessRecord

    def config(self, workflow: Workflow) -> Any:
        return workflow.postprocess.model_dump(mode="json")

    def run(self, ctx: StageContext) -> PostprocessRecord:
        wf = ctx.workflow
        prep, infer = ctx.need(PrepareRecord), ctx.need(InferRecord)
        num_classes = prep.num_classes
        post = Postprocessor(wf.postprocess, num_classes)
        crf = post.crf
        if post.is_identity:
            return PostprocessRecord(predictions=dict(infer.predictions))
        images = {c.id: c.image for c in prep.split("test")}
        files: list[str] = []
        predictions: dict[str, str] = {}
        no_crf: dict[str, str] | None = None
        used: dict[str, Any] | None = None
        tuning: str | None = None
        overrides: dict[str, float] = {}
        if crf is not None:
            no_crf = {}
            if crf.tune is not None:
                val = [(ctx.path(rel), Path(c.image), Path(c.label)) for c in prep.split("validation")
                       if (rel := infer.validation_probabilities.get(c.id))]
                tuned = tune_crf(val, crf, num_classes, wf.preprocess.nan_policy)
                tuning = "postprocess/crf_tuning.json"
                write_json(ctx.path(tuning), tuned)
                files.append(tuning)
                overrides = tuned["best"]
                ctx.log.info("[postprocess] CRF tuned on %d validation case(s): %s (Dice %.4f, without CRF %.4f)",
                             len(val), overrides, tuned["best_dice"], tuned["no_crf_dice"])
            used = {**crf.model_dump(mode="json", exclude={"tune"}), **overrides}
        for cid, rel in tqdm(infer.predictions.items(), desc="postprocess", unit="case",
                             disable=not wf.train.progress):
            if post.needs_probabilities:
                assert no_crf is not None
                probs, image, spacing, _ = load_crf_inputs(ctx.path(infer.probabilities[cid]), Path(images[cid]),
                                                           num_classes, wf.preprocess.nan_policy)
                target = f"postprocess/no_crf/{cid}.nii.gz"
                write_like(images[cid], post.labels_without_crf(probs), ctx.path(target))
                no_crf[cid] = target
                files.append(target)
                labels = post(probs=probs, image=image, spacing=spacing, overrides=overrides)
            else:
                labels = post(np.asarray(nib.load(str(ctx.path(rel))).dataobj, dtype=np.uint8))
            target = f"postprocess/{cid}.nii.gz"
            write_like(images[cid], labels, ctx.path(target))
            predictions[cid] = target
            files.append(target)
        return PostprocessRecord(files=tuple(files), predictions=predictions, no_crf_predictions=no_crf, crf=used,
                                 crf_tuning=tuning)

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        assert isinstance(record, PostprocessRecord)
        params = {f"crf_used.{k}": v for k, v in (record.crf or {}).items()}
        artifacts = ((ctx.path(record.crf_tuning), "postprocess"),) if record.crf_tuning else ()
        return Report(params=params, artifacts=artifacts)
