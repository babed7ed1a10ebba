"""What a network's output channels mean, for each ``instances.method``.

* no instances section, ``components``, ``watershed``: the manifest's ``K`` classes (softmax);
* ``three_class``: background, interior, touching boundary (softmax); the manifest must have two classes
  (background and nucleus), and interior + boundary are its nucleus;
* ``distance``: the manifest's ``K`` classes (softmax) and one more channel, the normalised distance to the
  object's border (sigmoid).

A :class:`Head` is stored with the model (in checkpoints and bundles, as :meth:`Head.to_json`), so inference
decodes what training taught, whatever the workflow says later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.errors import PipelineError

__all__ = ["TRAINED_METHODS", "Head"]

TRAINED_METHODS = ("three_class", "distance")  # methods whose targets change training


@dataclass(frozen=True)
class Head:
    """The meaning of the output channels and how instances are decoded from them.

    Attributes:
        classes: the manifest's classes (background included).
        method: ``instances.method`` (None: no instances are made).
        settings: the decoder's settings (``min_size_px``, ``seed_threshold``, ...).
    """

    classes: int
    method: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method == "three_class" and self.classes != 2:
            raise PipelineError(f"instances.method three_class needs a manifest with two labels (background and the "
                              f"objects), not {self.classes}; use distance, watershed or components")

    @property
    def trained(self) -> bool:
        """Whether the training targets differ from the manifest's labels."""
        return self.method in TRAINED_METHODS

    @property
    def out_channels(self) -> int:
        if self.method == "three_class":
            return 3
        if self.method == "distance":
            return self.classes + 1
        return self.classes

    @property
    def class_channels(self) -> int:
        """How many leading channels are softmax class probabilities."""
        return 3 if self.method == "three_class" else self.classes

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Channel-first logits ``(C, *spatial)`` to probabilities: softmax over the class channels, sigmoid for
        the distance channel."""
        k = self.class_channels
        if logits.shape[0] == k:
            return torch.softmax(logits, dim=0)
        return torch.cat([torch.softmax(logits[:k], dim=0), torch.sigmoid(logits[k:])], dim=0)

    def class_probabilities(self, probs: np.ndarray | torch.Tensor) -> Any:
        """The manifest's class probabilities ``(K, *spatial)``: three_class folds interior + boundary into the
        nucleus class; distance drops its distance channel."""
        if self.method == "three_class":
            if isinstance(probs, torch.Tensor):
                return torch.stack([probs[0], probs[1] + probs[2]])
            return np.stack([probs[0], probs[1] + probs[2]])
        return probs[: self.classes]

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """The manifest's labels (uint8) from the output probabilities: the most probable output class, with
        three_class's interior and boundary both the nucleus (the CRF and Dice see the same foreground the
        instances cover)."""
        k = self.class_channels
        winner = np.argmax(np.asarray(probs[:k], dtype=np.float32), axis=0).astype(np.uint8)
        if self.method == "three_class":
            winner[winner == 2] = 1
        return winner

    def training_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Training targets (three_class: 0/1/2) to the manifest's labels (for the validation Dice)."""
        if self.method == "three_class":
            return torch.where(labels == 2, torch.ones_like(labels), labels)
        return labels

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None, classes: int) -> Head:
        """The head a checkpoint or bundle stored (one from before instances: the plain ``classes`` head)."""
        if not doc:
            return cls(classes)
        return cls(int(doc.get("classes", classes)), doc.get("method"), dict(doc.get("settings") or {}))

    @property
    def needs_probabilities(self) -> bool:
        """Whether decoding needs the output probabilities (else the labels do)."""
        return self.trained

    def decode(self, probs: np.ndarray | None, labels: np.ndarray | None = None) -> np.ndarray | None:
        """The instance map of output probabilities ``(C, *spatial)`` (or, for the mask methods, of the labels)
        on the image's grid; None without a method."""
        if self.method is None:
            return None
        from pipeline.instances.decode import decode

        return decode(self.method, probs, self.class_channels, labels=labels, **self.settings)

    def with_decoding(self, method: str | None, settings: Mapping[str, Any]) -> Head:
        """This trained head decoded by ``method`` with ``settings`` (a workflow's ``instances``): the method
        must be the trained one for a trained head; a plain head takes ``components`` or ``watershed``."""
        if self.trained and method != self.method:
            raise PipelineError(f"the model was trained for instances.method {self.method}; it cannot decode "
                              f"{method}: retrain, or set instances.method: {self.method}")
        if not self.trained and method in TRAINED_METHODS:
            raise PipelineError(f"instances.method {method} needs a model trained for it; this one outputs classes "
                              "only: use components or watershed, or retrain")
        return Head(self.classes, method, dict(settings))
