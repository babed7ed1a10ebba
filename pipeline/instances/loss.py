"""Losses of the instance-aware heads (:mod:`pipeline.instances.heads`), called as ``loss(logits, labels, extras)``
with the extra targets of :mod:`pipeline.instances.targets` in ``extras``:

* ``three_class``: soft Dice over the interior and boundary classes plus cross-entropy weighted pixel by pixel
  with the U-Net border weight map (``extras["weight"]``), normalised by the weights' sum; the weighted
  cross-entropy is the U-Net paper's loss, the Dice term keeps the rare boundary class from being ignored.
* ``distance``: ``train.loss`` on the class channels plus ``distance_weight`` times the binary cross-entropy of the
  distance channel's logit against the normalised distance (``extras["distance"]``) as a soft target, as StarDist
  trains its object probability: unlike a squared error through the sigmoid, its gradient does not vanish where
  the prediction is far off.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from pipeline.instances.heads import Head

EXTRA_KEYS = {"three_class": ("weight",), "distance": ("distance",)}


class WeightedDiceCE(nn.Module):
    """Soft Dice (foreground classes) + border-weighted cross-entropy, for the three-class head."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        weight = extras["weight"][:, 0].float()
        ce = F.cross_entropy(logits.float(), labels[:, 0].long(), reduction="none")
        weighted = (ce * weight).sum() / weight.sum().clamp_min(1e-6)
        return self.dice(logits, labels) + weighted


class DistanceLoss(nn.Module):
    """``train.loss`` on the class channels + ``weight`` × soft-target BCE of the distance channel."""

    def __init__(self, semantic: nn.Module, classes: int, weight: float = 1.0) -> None:
        super().__init__()
        self.semantic, self.classes, self.weight = semantic, classes, float(weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        k = self.classes
        distance = F.binary_cross_entropy_with_logits(logits[:, k:k + 1].float(), extras["distance"].float())
        return self.semantic(logits[:, :k], labels) + self.weight * distance


def instance_loss(head: Head, semantic: nn.Module, distance_weight: float = 1.0) -> nn.Module:
    """The loss of a trained head (``head.trained``)."""
    if head.method == "three_class":
        return WeightedDiceCE()
    if head.method == "distance":
        return DistanceLoss(semantic, head.classes, distance_weight)
    raise ValueError(f"no instance loss for method {head.method!r}")
