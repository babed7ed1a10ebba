"""The ``train`` stage."""

from __future__ import annotations

from typing import Any

from pipeline.config.schema import Workflow
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.tracking.tracker import Tracker
from pipeline.training.trainer import load_history, train


@STAGES.register("train")
class TrainStage(Stage):
    """Outputs the best and last checkpoints and the per-epoch history."""

    name = "train"
    requires = ("prepare", "preprocess")

    def config(self, workflow: Workflow) -> Any:
        train = workflow.train.model_dump(mode="json")
        train.pop("progress")
        return {"seed": workflow.seed, "model": workflow.model.model_dump(mode="json"), "train": train,
                "preprocess": workflow.preprocess.model_dump(mode="json"), "infer": workflow.infer.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        prep = ctx.upstream["prepare"]
        result = train(ctx.workflow, ctx.run_dir, ctx.stage_dir, ctx.upstream["preprocess"]["cases"],
                       prep["labels"], prep["channels"], ctx.resume, int(prep.get("spatial_dims", 3)))
        return {"files": ["train/best.pt", "train/last.pt", "train/history.json"],
                "best_val_dice": result.best_dice, "best_epoch": result.best_epoch, "epochs": result.epochs}

    def track(self, tracker: Tracker, ctx: StageContext, outputs: dict[str, Any]) -> None:
        for row in load_history(ctx.stage_dir):
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracker.log_metrics({"best_val_dice": outputs["best_val_dice"], "best_epoch": outputs["best_epoch"]})
        if ctx.workflow.tracking.log_checkpoint:
            tracker.log_artifact(ctx.stage_dir / "best.pt", "checkpoints")
