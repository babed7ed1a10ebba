"""The soft Dice loss of V-Net (``train.loss.name: dice``)."""

from __future__ import annotations

from monai.losses import DiceLoss
from torch import nn

from pipeline.losses import LOSSES


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
