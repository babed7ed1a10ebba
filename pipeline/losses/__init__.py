"""Training losses, registered by the name a workflow file uses (``train.loss.name``)."""

from __future__ import annotations

from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from pipeline.registry import Registry

LOSSES: Registry = Registry("loss")


@LOSSES.register("dice")
def soft_dice(include_background: bool = False, squared_pred: bool = True, smooth: float = 1e-5) -> nn.Module:
    """Soft Dice loss as in V-Net: ``1 - 2Σpg / (Σp² + Σg²)`` over softmax outputs and one-hot labels.

    Args:
        include_background: also score the background class.
        squared_pred: square the denominators (V-Net's formulation).
        smooth: added to numerator and denominator.
    """
    return DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        squared_pred=squared_pred,
        smooth_nr=smooth,
        smooth_dr=smooth,
    )


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
