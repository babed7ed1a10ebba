"""Soft Dice plus cross-entropy, the nnU-Net default (``train.loss.name: dice_ce``)."""

from __future__ import annotations

from monai.losses import DiceCELoss
from torch import nn

from pipeline.losses import LOSSES


@LOSSES.register("dice_ce")
def dice_ce(include_background: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> nn.Module:
    """Soft Dice plus cross-entropy (the nnU-Net default).

    Args:
        include_background: also score the background class in the Dice term.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
    """
    return DiceCELoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        lambda_dice=lambda_dice,
        lambda_ce=lambda_ce,
    )
