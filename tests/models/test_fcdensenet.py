"""FC-DenseNet (Jégou et al. 2017): input-sized logits in 2D and 3D, the paper's parameter counts, the up path's
channel bookkeeping (a transition up sees only the previous block's new maps), He-uniform initialisation, the
divisibility check through the workflow loader, and the shipped presets and workflows.

The registry-wide contract (constructor, eval/train outputs, checkpoint rebuild, stride) is tested for every model
in test_registry.py and test_baselines.py; here the networks are tiny (growth rate 4, two poolings) or built on the
meta device, so the file runs in a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from pipeline.config.loader import load_workflow
from pipeline.errors import ConfigError, PipelineError
from pipeline.models import MODELS, build_model
from pipeline.models.fcdensenet import FCDenseNet
from pipeline.models.shapes import build_on_meta, check_divisible
from tests.utils import REPO

K = 4  # growth rate of the tiny networks
TINY: dict[str, Any] = {"growth_rate": K, "layers_per_block": [2, 3], "bottleneck_layers": 2, "first_channels": 8}
# The paper's parameter counts (CamVid: 3 input channels, 11 classes). It reports 1.5M for FC-DenseNet56, where
# re-implementations of its description count 1.4M (SimJeg/FC-DenseNet issue #31), hence the wider tolerance there.
PAPER = {56: (1.5e6, 0.10), 67: (3.5e6, 0.02), 103: (9.4e6, 0.02)}
COUNTS_2D = {56: 1_376_795, 67: 3_463_243, 103: 9_322_091}  # this implementation, 3 → 11 channels
COUNTS_3D = {56: 3_665_531, 67: 9_341_035, 103: 26_171_531}


def tiny(spatial_dims: int, **kw: Any) -> Any:
    torch.manual_seed(0)
    return FCDenseNet(in_channels=2, out_channels=3, spatial_dims=spatial_dims, **{**TINY, **kw})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_with_the_stride_of_its_poolings() -> None:
    assert MODELS.get("fcdensenet") is FCDenseNet
    assert tiny(2).total_stride() == (4, 4)
    assert tiny(3, layers_per_block=[1, 1, 1]).total_stride() == (8, 8, 8)
    default: Any = build_on_meta("fcdensenet", {}, 1, 2, spatial_dims=2)
    assert default.total_stride() == (32, 32) and default.layers_per_block == [4] * 11  # FC-DenseNet56


@pytest.mark.parametrize(("spatial_dims", "shape"), [(2, (16, 24)), (3, (8, 8, 12))])
def test_logits_have_the_input_size_and_train(spatial_dims: int, shape: tuple[int, ...]) -> None:
    model = tiny(spatial_dims)
    x = torch.randn(2, 2, *shape)
    out = model.train()(x)
    assert out.shape == (2, 3, *shape)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, *shape)


@pytest.mark.parametrize("depth", [56, 67, 103])
def test_parameter_counts_match_the_paper(depth: int) -> None:
    counts = {}
    for dims in (2, 3):
        model: Any = build_on_meta("fcdensenet", {"depth": depth}, 3, 11, spatial_dims=dims)
        counts[dims] = n_params(model)
        assert model.layers_per_block == {56: [4] * 11, 67: [5] * 11,
                                          103: [4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4]}[depth]
    paper, tolerance = PAPER[depth]
    assert abs(counts[2] - paper) / paper < tolerance
    assert counts == {2: COUNTS_2D[depth], 3: COUNTS_3D[depth]}
    # e.g. 103 convolution layers: the first, the dense layers, transitions down and up, the last
    n_convs = sum(isinstance(m, nn.Conv3d | nn.ConvTranspose3d) for m in model.modules())
    assert n_convs == depth


def test_fc_densenet103_channels_of_the_up_path() -> None:
    """The paper's Table 2 (m = feature maps): a transition up up-samples only the new maps of the block below
    (k x its layers) and concatenates them with the skip connection; the last block keeps its whole stack (m = 256)."""
    model: Any = build_on_meta("fcdensenet", {"depth": 103}, 3, 11, spatial_dims=2)
    assert [b.out_channels for b in model.down_blocks] == [112, 192, 304, 464, 656]
    assert model.bottleneck.out_channels == 240
    assert [t.up.in_channels for t in model.transitions_up] == [240, 192, 160, 112, 80]
    assert [t.up.out_channels for t in model.transitions_up] == [240, 192, 160, 112, 80]
    assert [b.layers[0][0].num_features for b in model.up_blocks] == [896, 656, 464, 304, 192]
    assert model.head.in_channels == 256 and model.head.out_channels == 11


def test_transition_up_sees_only_the_new_maps_and_the_skip_connection() -> None:
    model = tiny(2).eval()
    seen: dict[str, list[torch.Tensor]] = {"block": [], "tu_in": [], "tu_out": []}
    blocks = [model.bottleneck, *model.up_blocks[:-1]]
    skips: list[torch.Tensor] = []

    def keep(where: list[torch.Tensor], inputs: list[torch.Tensor] | None = None):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            where.append(out)
            if inputs is not None:
                inputs.append(args[0])
        return hook

    for block in blocks:
        block.register_forward_hook(keep(seen["block"]))
    for tu in model.transitions_up:
        tu.register_forward_hook(keep(seen["tu_out"], seen["tu_in"]))
    for block in model.down_blocks:
        block.register_forward_hook(keep(skips))
    with torch.no_grad():
        model(torch.randn(1, 2, 16, 16))
    k = K
    assert [t.shape[1] for t in seen["block"]] == [2 * k, 3 * k]  # bottleneck 2 layers, then the 3-layer block
    for block_out, tu_in, tu_out, skip in zip(seen["block"], seen["tu_in"], seen["tu_out"], reversed(skips),
                                              strict=True):
        assert torch.equal(tu_in, block_out)  # the block's new maps, not its input
        assert tu_out.shape[2:] == skip.shape[2:] == tuple(2 * s for s in tu_in.shape[2:])
        assert tu_out.shape[1] == tu_in.shape[1] + skip.shape[1]
        assert torch.equal(tu_out[:, tu_in.shape[1]:], skip)  # the skip connection, concatenated as it is
    assert [s.shape[1] for s in skips] == [8 + 2 * k, 8 + 5 * k]


def test_he_uniform_initialisation() -> None:
    model = tiny(2, growth_rate=16)
    conv = model.down_blocks[0].layers[1][2]
    bound = (6.0 / (conv.in_channels * 9)) ** 0.5  # kaiming_uniform_, ReLU gain, fan-in
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0


def test_bad_input_sizes_are_refused() -> None:
    model = tiny(2)
    check_divisible(model, {"preprocess.patch.size": [8, 12]})
    with pytest.raises(PipelineError, match=r"preprocess.patch.size \[8, 10\] must be divisible .* \[4, 4\]"):
        check_divisible(model, {"preprocess.patch.size": [8, 10]})
    with pytest.raises(ValueError, match=r"input size \[8, 10\] must be divisible by 4"):
        model(torch.randn(1, 2, 8, 10))


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"depth": 57}, "depth"), ({"growth_rate": 0}, "growth_rate"), ({"layers_per_block": []}, "layers_per_block"),
    ({"layers_per_block": [4, 0]}, "layers_per_block"), ({"layers_per_block": 65}, "layers_per_block"),
    ({"layers_per_block": [1] * 9}, "layers_per_block"), ({"bottleneck_layers": 0}, "bottleneck_layers"),
    ({"dropout": 1.0}, "dropout"), ({"norm": "instance"}, "norm"), ({"first_channels": 0}, "first_channels"),
    ({"first_channels": 10**30}, "first_channels"), ({"growth_rate": 4097}, "growth_rate"),
])
def test_bad_arguments_name_the_argument(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        build_on_meta("fcdensenet", kwargs, 1, 2, spatial_dims=2)


def test_overrides_of_the_depth() -> None:
    model: Any = build_model("fcdensenet", {"depth": 67, "growth_rate": 8, "layers_per_block": 2, "dropout": 0.0}, 1, 2, 2)
    assert model.growth_rate == 8 and model.layers_per_block == [2] * 11 and model.total_stride() == (32, 32)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert build_model("fcdensenet", {"layers_per_block": [3, 4]}, 1, 2, 2).layers_per_block == [3, 4, 4, 4, 3]


@pytest.mark.parametrize("name", ["densenet_cells.yaml", "densenet_oct.yaml"])
def test_shipped_workflows_load(name: str) -> None:
    wf = load_workflow(REPO / "workflows" / name).workflow
    assert wf.model.name == "fcdensenet" and wf.model.kwargs()["depth"] == 56
    with pytest.raises(ConfigError) as info:
        load_workflow(REPO / "workflows" / name, ["preprocess.patch.size=[80, 192]"])
    assert any("preprocess.patch.size [80, 192] must be divisible by the model's total stride [32, 32]" in p
               for p in info.value.problems)


@pytest.mark.parametrize("depth", [56, 67, 103])
def test_model_presets_load(depth: int, tmp_path: Path) -> None:
    """configs/models/fcdensenet{56,67,103}.yaml hold the paper's settings and load in the cells workflow (copied
    with absolute paths; it turns dropout off)."""
    preset = REPO / "configs" / "models" / f"fcdensenet{depth}.yaml"
    assert yaml.safe_load(preset.read_text(encoding="utf-8")) == {"name": "fcdensenet", "depth": depth,
                                                                  "first_channels": 48, "dropout": 0.2}
    text = (REPO / "workflows" / "densenet_cells.yaml").read_text(encoding="utf-8")
    text = text.replace("fcdensenet56.yaml", preset.name).replace("../", f"{REPO}/")
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    kwargs = load_workflow(tmp_path / "wf.yaml").workflow.model.kwargs()
    assert kwargs == {"depth": depth, "first_channels": 48, "dropout": 0.0}
