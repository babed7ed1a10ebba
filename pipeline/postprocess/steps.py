"""Postprocessing steps, registered by the ``postprocess`` key of the workflow (and bundle) they read.

:class:`~pipeline.postprocess.postprocessor.Postprocessor` builds one step per key of ``PostprocessConfig`` from
:data:`POSTPROCESSORS` and applies the steps that are on in their ``order``: the dense CRF (``crf``) turns
probabilities into labels, then ``keep_largest_component`` cleans the labels up. To add a step: a key in
``PostprocessConfig`` (``pipeline/config/schema.py``), a :class:`Step` registered here under that key, and its
test; the postprocess stage and ``pipeline infer`` use it at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.config.schema import CRFConfig
from pipeline.postprocess.apply_crf import run_crf
from pipeline.postprocess.largest_component import keep_largest_component
from pipeline.registry import Registry


@dataclass(frozen=True)
class CRFInputs:
    """What a step that refines probabilities needs: ``probs`` ``(K, *spatial)`` summing to 1, the z-scored
    ``image`` ``(C, *spatial)`` on the same grid, and the voxel ``spacing`` in mm."""

    probs: np.ndarray
    image: np.ndarray
    spacing: Sequence[float]


class Step(ABC):
    """One postprocessing step: built from its config value (None when it is off), called on labels."""

    order: ClassVar[int]
    needs_probabilities: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_config(cls, value: Any, num_classes: int) -> Step | None:
        """The step for the config value of its key, or None when that value turns it off."""

    @abstractmethod
    def __call__(self, labels: np.ndarray | None, inputs: CRFInputs | None,
                 overrides: Mapping[str, float]) -> np.ndarray:
        """The labels after this step (``labels`` is None before the first step when probabilities are used)."""


POSTPROCESSORS: Registry[type[Step]] = Registry("postprocessor")


@POSTPROCESSORS.register("crf")
class DenseCRF(Step):
    """The 3D fully connected CRF on the class probabilities (``postprocess.crf``; ``overrides`` are the values
    ``crf.tune`` chose)."""

    order = 10
    needs_probabilities = True

    def __init__(self, cfg: CRFConfig) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, value: Any, num_classes: int) -> DenseCRF | None:
        return None if value is None else cls(value)

    def __call__(self, labels: np.ndarray | None, inputs: CRFInputs | None,
                 overrides: Mapping[str, float]) -> np.ndarray:
        if inputs is None:
            raise ValueError("Postprocessor: the CRF needs `probs`, `image` and `spacing`; pass all three "
                             "(`needs_probabilities` says when)")
        return run_crf(inputs.probs, inputs.image, inputs.spacing, self.cfg, **dict(overrides))


@POSTPROCESSORS.register("keep_largest_component")
class LargestComponent(Step):
    """Keep each chosen class's largest connected component (``true``: every foreground class; a list: those)."""

    order = 20

    def __init__(self, classes: list[int]) -> None:
        self.classes = classes

    @classmethod
    def from_config(cls, value: Any, num_classes: int) -> LargestComponent | None:
        classes = list(range(1, num_classes)) if value is True else list(value or [])
        return cls(classes) if classes else None

    def __call__(self, labels: np.ndarray | None, inputs: CRFInputs | None,
                 overrides: Mapping[str, float]) -> np.ndarray:
        if labels is None:
            raise ValueError("Postprocessor: without a CRF the final labels come from `labels`; pass them")
        return keep_largest_component(np.asarray(labels).astype(np.uint8, copy=False), self.classes)
