"""The ``train`` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config.schema import Workflow
from pipeline.data.stage import PrepareRecord, training_identity
from pipeline.engine.hooks import Report
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.training.curves import learning_curve_png
from pipeline.training.trainer import load_history, train
from pipeline.transforms.stage import PreprocessRecord


class TrainRecord(StageRecord):
    """The checkpoints and how training went.

    Attributes:
        best_checkpoint: the checkpoint of the best validation Dice (the last epoch without validation cases).
        last_checkpoint: the checkpoint after the last epoch, with optimizer state (training resumes from it).
        history: per-epoch ``train_loss``, ``lr`` and ``val_dice`` (JSON).
        best_val_dice: the best validation Dice (None without validation cases).
        best_epoch: the epoch (1-based) of ``best_checkpoint``.
        epochs: epochs trained.
        device: where it trained (``cpu``, ``cuda:0``).
        learning_curve: the PNG of loss, validation Dice and learning rate per epoch.
    """

    best_checkpoint: str
    last_checkpoint: str
    history: str
    best_val_dice: float | None
    best_epoch: int
    epochs: int
    device: str | None = None
    learning_curve: str | None = None


@STAGES.register("train")
class TrainStage(Stage):
    """Records the best and last checkpoints and the per-epoch history. The run folder is named by this stage's
    config and its inputs', so inference, postprocessing and evaluation settings share the trained model."""

    name = "train"
    requires = ("prepare", "preprocess")
    record = TrainRecord
    names_run = True

    def upstream_identity(self, name: str, record: StageRecord, execution: str) -> str:
        """Only prepare's training and validation cases matter here (a changed test file does not retrain)."""
        return training_identity(name, record, execution)

    def config(self, workflow: Workflow) -> Any:
        """Seed, model, training (with its validation windows) and the preprocessing (patches, augmentation):
        nothing of ``infer``, ``postprocess`` or ``evaluate``."""
        train = workflow.train.model_dump(mode="json")
        train.pop("progress")
        return {"seed": workflow.seed, "model": workflow.model.model_dump(mode="json"), "train": train,
                "preprocess": workflow.preprocess.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> TrainRecord:
        prep = ctx.need(PrepareRecord)
        result = train(ctx.workflow, ctx.run_dir, ctx.stage_dir, ctx.need(PreprocessRecord).cases,
                       {str(k): v for k, v in prep.labels.items()}, list(prep.channels), ctx.resume,
                       prep.spatial_dims)
        curve = "train/learning_curve.png"
        learning_curve_png(result.history, ctx.path(curve), result.best_epoch)
        files = ("train/best.pt", "train/last.pt", "train/history.json", curve)
        return TrainRecord(files=files, best_checkpoint=files[0], last_checkpoint=files[1], history=files[2],
                           best_val_dice=result.best_dice if result.best_dice >= 0 else None,
                           best_epoch=result.best_epoch, epochs=result.epochs, device=result.device,
                           learning_curve=curve)

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        assert isinstance(record, TrainRecord)
        series = tuple((int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})
                       for row in load_history(ctx.path(record.history).parent))
        metrics: dict[str, float] = {"best_epoch": record.best_epoch}
        if record.best_val_dice is not None:
            metrics["best_val_dice"] = record.best_val_dice
        artifacts: tuple[tuple[Path, str | None], ...] = ()
        images: tuple[tuple[Path, str], ...] = ()
        if ctx.workflow.tracking.log_checkpoint:
            artifacts = ((ctx.path(record.best_checkpoint), "checkpoints"),)
        if record.learning_curve:
            artifacts += ((ctx.path(record.learning_curve), "train"),)
            images = ((ctx.path(record.learning_curve), "learning_curve"),)
        tags = {"device": record.device} if record.device else {}
        return Report(metrics=metrics, series=series, artifacts=artifacts, images=images, tags=tags)
