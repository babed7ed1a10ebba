"""Imports every stage so that it registers itself in :data:`pipeline.engine.stage.STAGES`.

Each stage lives in the folder of its concern: data → transforms → training → inference → postprocess →
evaluation.
"""

from pipeline.data.stage import PrepareStage
from pipeline.evaluation.stage import EvaluateStage
from pipeline.inference.stage import InferStage
from pipeline.postprocess.stage import PostprocessStage
from pipeline.training.stage import TrainStage
from pipeline.transforms.stage import PreprocessStage

__all__ = ["EvaluateStage", "InferStage", "PostprocessStage", "PrepareStage", "PreprocessStage", "TrainStage"]
