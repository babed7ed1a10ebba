"""The ``train`` stage, and what the other processes of a torchrun launch do (:func:`train_with_rank0`).

Rank 0 runs the stage like a single process does; when it gets here (the train stage runs or is reused) it tells
the waiting ranks (:func:`pipeline.training.distributed.announce`), which then train with it from the records
rank 0 left in the run folder, or exit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.config.schema import Workflow
from pipeline.data.stage import PrepareRecord, PrepareStage, training_identity
from pipeline.engine.hooks import Report
from pipeline.engine.records import read_finished
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.errors import PipelineError
from pipeline.instances.heads import TRAINED_METHODS
from pipeline.runtime.precision import precision_here
from pipeline.training import distributed
from pipeline.training.curves import learning_curve_png
from pipeline.training.trainer import load_history, train
from pipeline.transforms.stage import PreprocessRecord, PreprocessStage

log = logging.getLogger("pipeline")


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
        world_size: how many processes trained (``pipeline run --nproc``, torchrun).
        precision: the network's arithmetic while training (``fp32``, ``bf16``, ``fp16``: ``train.precision``
            resolved on the device).
        resumed_from_epoch: the epochs an interrupted attempt had finished when this one resumed from its last
            checkpoint (None: trained from the start).
    """

    best_checkpoint: str
    last_checkpoint: str
    history: str
    best_val_dice: float | None
    best_epoch: int
    epochs: int
    device: str | None = None
    learning_curve: str | None = None
    world_size: int = 1
    resumed_from_epoch: int | None = None
    precision: str = "fp32"


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
        nothing of ``infer``, ``postprocess`` or ``evaluate``. The precision counts as what it resolves to on this
        machine, and only when that is not fp32 (so fp32 runs keep the folders named before precision existed)."""
        train = workflow.train.model_dump(mode="json")
        train.pop("progress")
        train.pop("precision")
        resolved = precision_here(workflow.train.precision, workflow.train.device, workflow.train.amp)
        if resolved not in (None, "fp32"):
            train["precision"] = resolved
        if not train["sync_batchnorm"]:  # the default keeps the run folders named before it existed
            train.pop("sync_batchnorm")
        out = {"seed": workflow.seed, "model": workflow.model.model_dump(mode="json"), "train": train,
               "preprocess": workflow.preprocess.model_dump(mode="json")}
        inst = workflow.instances
        if inst is not None and inst.method in TRAINED_METHODS:  # the targets and the loss (decoding is infer's)
            out["instances"] = inst.target()
        return out

    def run(self, ctx: StageContext) -> TrainRecord:
        prep = ctx.need(PrepareRecord)
        distributed.announce(distributed.TRAIN, resume=ctx.resume, run_dir=str(ctx.run_dir))
        result = train(ctx.workflow, ctx.run_dir, ctx.stage_dir, ctx.need(PreprocessRecord).cases,
                       {str(k): v for k, v in prep.labels.items()}, list(prep.channels), ctx.resume,
                       prep.spatial_dims)
        curve = "train/learning_curve.png"
        learning_curve_png(result.history, ctx.path(curve), result.best_epoch)
        files = ("train/best.pt", "train/last.pt", "train/history.json", curve)
        return TrainRecord(files=files, best_checkpoint=files[0], last_checkpoint=files[1], history=files[2],
                           best_val_dice=result.best_dice if result.best_dice >= 0 else None,
                           best_epoch=result.best_epoch, epochs=result.epochs, device=result.device,
                           learning_curve=curve, world_size=result.world_size,
                           resumed_from_epoch=result.resumed_from_epoch, precision=result.precision)

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        assert isinstance(record, TrainRecord)
        distributed.announce(distributed.REUSED)  # reused (ran: announced already): the other ranks exit
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
        tags["world_size"] = str(record.world_size)
        tags["train_precision"] = record.precision
        if record.resumed_from_epoch is not None:
            tags["resumed_from_epoch"] = str(record.resumed_from_epoch)
        return Report(metrics=metrics, series=series, artifacts=artifacts, images=images, tags=tags)


def train_with_rank0(workflow: Workflow, run_dir: Path) -> int:
    """A rank > 0 of a torchrun launch: wait until rank 0 reaches the train stage, train with it when it trains
    (reading the prepare and preprocess records it wrote into ``run_dir``), and return the exit code (0 also when
    rank 0 reused a finished train stage; 1 when rank 0 stopped before training)."""
    message = distributed.wait_for_train()
    if message["what"] == distributed.ABORTED:
        log.error("[train] rank 0 stopped before training (see its error); process %d exits", distributed.rank())
        return 1
    if message["what"] == distributed.REUSED:
        log.info("[train] rank 0 reused the finished train stage; process %d exits", distributed.rank())
        return 0
    distributed.same_run_dir(run_dir, message["run_dir"])
    prep, pre = (read_finished(run_dir / s.name, s) for s in (PrepareStage, PreprocessStage))
    if prep is None or pre is None:
        raise PipelineError(f"process {distributed.rank()} cannot read rank 0's prepare and preprocess records in "
                            f"{run_dir}; every process needs the run folder (on a shared file system)")
    p, pp = prep.record, pre.record
    assert isinstance(p, PrepareRecord) and isinstance(pp, PreprocessRecord)
    train(workflow, run_dir, run_dir / TrainStage.name, pp.cases, {str(k): v for k, v in p.labels.items()},
          list(p.channels), bool(message["resume"]), p.spatial_dims)
    return 0
