"""V-Net structure: residual stages, strided down/up-sampling, configurable width, depth and strides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.models import MODELS, build_model
from pipeline.models.vnet import ResidualStage, VNet


def test_registered_by_name() -> None:
    assert MODELS.get("vnet") is VNet
    with pytest.raises(KeyError, match="Did you mean 'vnet'"):
        MODELS.get("vnte")


@pytest.mark.parametrize(("levels", "strides", "shape"), [
    (3, None, (16, 16, 8)),
    (4, [[2, 2, 1], [2, 2, 2], [2, 2, 2]], (32, 24, 8)),
])
def test_output_has_input_size_and_class_channels(levels: int, strides, shape) -> None:
    model = build_model("vnet", {"base_channels": 4, "levels": levels, "kernel_size": 3, "strides": strides}, 2, 3)
    out = model(torch.randn(1, 2, *shape))
    assert out.shape == (1, 3, *shape)


def test_paper_layout() -> None:
    model = VNet(1, 2, base_channels=16, levels=5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert {m.kernel_size for m in convs if m.kernel_size[0] > 2} == {(5, 5, 5)}
    downs = [m[0] for m in model.downs]
    assert all(d.stride == (2, 2, 2) and d.kernel_size == (2, 2, 2) for d in downs)
    assert [d.out_channels for d in downs] == [32, 64, 128, 256]
    assert [sum(isinstance(m, nn.Conv3d) for m in s.convs.modules()) for s in model.encoders] == [1, 2, 3, 3, 3]
    assert any(isinstance(m, nn.PReLU) for m in model.modules())


def test_residual_stage_adds_its_input() -> None:
    stage = ResidualStage(4, 4, 2, 3, None)
    for p in stage.convs.parameters():
        nn.init.zeros_(p)
    nn.init.constant_(stage.act.weight, 1.0)  # PReLU slope 1: identity
    x = torch.randn(1, 4, 6, 6, 6)
    torch.testing.assert_close(stage(x), x)


def test_width_and_depth_change_capacity() -> None:
    def params(**kw) -> int:  # type: ignore[no-untyped-def]
        return sum(p.numel() for p in VNet(1, 2, **kw).parameters())

    assert params(base_channels=4, levels=3, kernel_size=3) < params(base_channels=8, levels=3, kernel_size=3)
    assert params(base_channels=4, levels=3, kernel_size=3) < params(base_channels=4, levels=4, kernel_size=3)


@pytest.mark.parametrize("kwargs", [{"levels": 1}, {"kernel_size": 4}, {"levels": 3, "strides": [2]},
                                    {"levels": 3, "convs_per_level": [1, 1]}, {"norm": "group"}])
def test_bad_arguments_are_explained(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VNet(1, 2, **kwargs)
