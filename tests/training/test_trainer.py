"""Loss with auxiliary heads; divisibility checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.losses import LOSSES
from pipeline.models.vnet import VNet
from pipeline.models.shapes import check_divisible
from pipeline.training.trainer import compute_loss


class TwoHeads(nn.Module):
    aux_weight = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Conv3d(1, 3, 1)
        self.aux = nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.main(x), self.aux(x)


def test_auxiliary_head_adds_weighted_loss() -> None:
    torch.manual_seed(0)
    model, loss_fn = TwoHeads(), LOSSES.get("dice_ce")()
    x, y = torch.randn(2, 1, 8, 8, 4), torch.randint(0, 3, (2, 1, 8, 8, 4)).float()
    expected = loss_fn(model.main(x), y) + 0.5 * loss_fn(model.aux(x), y)
    torch.testing.assert_close(compute_loss(model, loss_fn, x, y), expected)


def test_patch_must_fit_the_network_stride() -> None:
    model = VNet(1, 2, base_channels=2, levels=3, kernel_size=3, strides=[[2, 2, 1], [2, 2, 2]])
    check_divisible(model, {"preprocess.patch.size": [16, 16, 8]})
    with pytest.raises(PipelineError, match=r"preprocess.patch.size \[16, 16, 5\] must be divisible by .* \[4, 4, 2\]"):
        check_divisible(model, {"preprocess.patch.size": [16, 16, 5]})
