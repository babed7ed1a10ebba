"""Classic segmentation baselines (U-Net, FCN, DeepLab v1-v3+, PSPNet) in 2D and 3D: registration, input-sized
logits, auxiliary outputs, gradients, dilated-encoder strides, bilinear FCN up-sampling and argument errors."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import MODELS, supported_dims
from pipeline.models.backbones import ResNet, SafeBatchNorm2d, group_count
from pipeline.models.fcn import FCN, bilinear_kernel, bilinear_upsampling

# Every registered model that handles both 2D and 3D images (the baselines; V-Net is 3D only and has its own
# file), taken from the registry so a new model is tested here without editing this file; the contract of every
# registered model is in test_registry.py.
NAMES = [n for n in MODELS.names() if {2, 3} <= set(supported_dims(n))]
SHAPES = {2: (64, 64), 3: (32, 32, 32)}


def tiny(name: str, spatial_dims: int, in_channels: int = 2, out_channels: int = 3, **kw: object) -> nn.Module:
    """A small instance of a registered model: width 8 for models with a ``width`` argument (the dilated-ResNet
    baselines), channels 8/16/32 for models with a ``channels`` list (U-Net), growth rate 4 and 8 first channels
    for FC-DenseNet."""
    params = inspect.signature(MODELS.get(name)).parameters
    base: dict[str, object] = ({"width": 8} if "width" in params else
                               {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1} if "channels" in params
                               else {"growth_rate": 4, "first_channels": 8} if "growth_rate" in params
                               else {})
    return MODELS.get(name)(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims,
                            **{**base, **kw})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", NAMES)
def test_registered(name: str) -> None:
    assert name in MODELS


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_have_input_size(name: str, spatial_dims: int) -> None:
    model = tiny(name, spatial_dims).eval()
    x = torch.randn(2, 2, *SHAPES[spatial_dims])
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, *SHAPES[spatial_dims])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_training_step_with_batch_one(name: str, spatial_dims: int) -> None:
    """Batch 1 in training mode (1×1 pooled maps, and 1³ stride-32 features in 3D) must not crash; all heads
    get gradients."""
    model = tiny(name, spatial_dims).train()
    x = torch.randn(1, 2, *SHAPES[spatial_dims])
    out = model(x)
    outs = out if isinstance(out, tuple) else (out,)
    y = torch.randint(0, 3, (1, *SHAPES[spatial_dims]))
    loss = sum(F.cross_entropy(o, y) for o in outs)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pspnet_aux_output_in_training_only(spatial_dims: int) -> None:
    model = tiny("pspnet", spatial_dims)
    assert model.aux_weight == pytest.approx(0.4)
    x = torch.randn(2, 2, *SHAPES[spatial_dims])
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert all(o.shape == (2, 3, *SHAPES[spatial_dims]) for o in out)
    assert not torch.equal(out[0], out[1])
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)
    no_aux = tiny("pspnet", spatial_dims, aux_weight=0.0).train()
    assert no_aux.aux is None and isinstance(no_aux(x), torch.Tensor)


@pytest.mark.parametrize(("output_stride", "spatial_dims"), [(8, 2), (16, 2), (32, 2), (8, 3), (16, 3)])
def test_output_stride_sets_feature_size(output_stride: int, spatial_dims: int) -> None:
    size = SHAPES[spatial_dims][0]
    net = ResNet(1, spatial_dims, depth=18, width=4, output_stride=output_stride).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 1, *SHAPES[spatial_dims]))
    assert feats["low"].shape[2:] == (size // 4,) * spatial_dims
    assert feats["c2"].shape[2:] == (size // 8,) * spatial_dims
    assert feats["c3"].shape[2:] == (size // min(16, output_stride),) * spatial_dims
    assert feats["out"].shape[2:] == (size // output_stride,) * spatial_dims
    assert net.strides == {"low": 4, "c2": 8, "c3": min(16, output_stride), "out": output_stride}
    assert {k: v.shape[1] for k, v in feats.items()} == net.channels == {"low": 4, "c2": 8, "c3": 16, "out": 32}
    # the strides removed from the last stages become dilation
    dilations = {m.dilation[0] for m in net.layer4.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)
                 and m.kernel_size[0] == 3}
    assert dilations == {32 // output_stride}


def test_deeplab_output_stride_changes_encoder_features_and_rates() -> None:
    x = torch.randn(1, 1, 64, 64)
    sizes = {}
    for os_ in (8, 16):
        model = MODELS.get("deeplabv3")(in_channels=1, out_channels=2, width=4, output_stride=os_).eval()
        with torch.no_grad():
            sizes[os_] = model.backbone(x)["out"].shape[-1]
            assert model(x).shape == (1, 2, 64, 64)
        assert model.rates == ([12, 24, 36] if os_ == 8 else [6, 12, 18])
    assert sizes == {8: 8, 16: 4}


@pytest.mark.parametrize(("depth", "block", "counts", "out_channels"), [
    (18, "BasicBlock", [2, 2, 2, 2], 32), (34, "BasicBlock", [3, 4, 6, 3], 32),
    (50, "Bottleneck", [3, 4, 6, 3], 128), (101, "Bottleneck", [3, 4, 23, 3], 128),
])
def test_resnet_depths(depth: int, block: str, counts: list[int], out_channels: int) -> None:
    net = ResNet(1, 2, depth=depth, width=4)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    assert [len(s) for s in stages] == counts
    assert type(stages[0][0]).__name__ == block
    assert net.channels["out"] == out_channels


def test_resnet_width_scales_channels() -> None:
    assert ResNet(1, 2, width=16).channels == {"low": 16, "c2": 32, "c3": 64, "out": 128}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("factor", [2, 8])
def test_fcn_upsampling_starts_bilinear(spatial_dims: int, factor: int) -> None:
    """A fresh transposed-conv up-sampler reproduces bi-/trilinear interpolation (align_corners=False) on a ramp
    away from the borders, and a constant stays constant there."""
    up = bilinear_upsampling(2, factor, spatial_dims)
    n = 6
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * spatial_dims, indexing="ij")
    ramp = sum((i + 1) * g for i, g in enumerate(grid))
    x = torch.stack([ramp, torch.full_like(ramp, 3.0)])[None]
    with torch.no_grad():
        y = up(x)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    ref = F.interpolate(x, scale_factor=factor, mode=mode, align_corners=False)
    assert y.shape == ref.shape == (1, 2, *(n * factor,) * spatial_dims)
    interior = (slice(None), slice(None), *(slice(factor, -factor),) * spatial_dims)
    torch.testing.assert_close(y[interior], ref[interior], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y[0, 1][interior[2:]], torch.full_like(y[0, 1][interior[2:]], 3.0))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fcn_models_initialise_their_upsamplers_bilinear(spatial_dims: int) -> None:
    model: FCN = tiny("fcn8s", spatial_dims, out_channels=3)
    layers = model.upsampling_layers()
    assert [m.stride[0] for m in layers] == [2, 2, 8]
    for m in layers:
        factor = m.stride[0]
        assert m.kernel_size == (2 * factor,) * spatial_dims and m.weight.requires_grad
        for i in range(3):
            for j in range(3):
                expected = bilinear_kernel(factor, spatial_dims) if i == j else torch.zeros_like(m.weight[i, j])
                torch.testing.assert_close(m.weight[i, j].detach(), expected)
    # the skip score layers start at zero (as in the paper), so training starts from the coarser net's output
    assert all(p.abs().sum() == 0 for s in (model.score_c3, model.score_c2) for p in s.parameters())
    assert [m.stride[0] for m in tiny("fcn32s", spatial_dims).upsampling_layers()] == [32]
    assert [m.stride[0] for m in tiny("fcn16s", spatial_dims).upsampling_layers()] == [2, 16]


def test_bilinear_kernel_values() -> None:
    torch.testing.assert_close(bilinear_kernel(2, 2)[:, 0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert bilinear_kernel(4, 3).shape == (8, 8, 8)
    with pytest.raises(ValueError, match="factor"):
        bilinear_kernel(3, 2)


def test_deeplabv3plus_decoder_and_separable_convs() -> None:
    model = tiny("deeplabv3plus", 2)
    assert model.reduce[0].out_channels == 8  # max(8, 3 * width // 4)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert {m.dilation[0] for m in depthwise} == {1, 6, 12, 18}
    plain = tiny("deeplabv3plus", 2, separable=False)
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in plain.modules())
    image_pool = model.aspp.branches[-1]
    assert isinstance(image_pool.norm, nn.GroupNorm)


def test_deeplab_v1_v2_heads() -> None:
    v1 = tiny("deeplabv1", 2)
    assert v1.output_stride == 8 and v1.head[0].dilation == (12, 12)
    v2 = tiny("deeplabv2", 2)
    assert [b[0].dilation[0] for b in v2.branches] == [6, 12, 18, 24]
    assert all(b.fc8.out_channels == 3 for b in v2.branches)


def test_pspnet_pyramid_bins() -> None:
    model = tiny("pspnet", 2)
    assert model.backbone.output_stride == 8
    assert [s[0].output_size for s in model.ppm.stages] == [1, 2, 3, 6]
    assert all(isinstance(s[2], nn.GroupNorm) for s in model.ppm.stages)


def test_unet_wraps_monai_and_pads_odd_sizes() -> None:
    from monai.networks.nets import UNet as MonaiUNet

    model = tiny("unet", 2).eval()
    assert isinstance(model.net, MonaiUNet)
    with torch.no_grad():
        assert model(torch.randn(1, 2, 30, 27)).shape == (1, 3, 30, 27)


def test_odd_input_sizes_keep_their_shape() -> None:
    x = torch.randn(1, 2, 45, 38)
    for name in ("fcn8s", "deeplabv3plus", "pspnet"):
        with torch.no_grad():
            assert tiny(name, 2).eval()(x).shape == (1, 3, 45, 38)


def test_safe_batchnorm_with_single_value_uses_running_stats() -> None:
    bn = SafeBatchNorm2d(4).train()
    out = bn(torch.full((1, 4, 1, 1), 2.0))
    torch.testing.assert_close(out, torch.full_like(out, 2.0 / (1 + bn.eps) ** 0.5))
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert group_count(16) == 8 and group_count(64) == 32 and group_count(7) == 1


@pytest.mark.parametrize(("name", "kwargs", "arg"), [
    ("deeplabv3", {"output_stride": 12}, "output_stride"),
    ("deeplabv3plus", {"output_stride": 32}, "output_stride"),
    ("pspnet", {"output_stride": 12}, "output_stride"),
    ("deeplabv1", {"spatial_dims": 4}, "spatial_dims"),
    ("unet", {"spatial_dims": 4}, "spatial_dims"),
    ("fcn8s", {"spatial_dims": 1}, "spatial_dims"),
    ("fcn32s", {"depth": 20}, "depth"),
    ("deeplabv2", {"depth": 152}, "depth"),
    ("pspnet", {"norm": "instance"}, "norm"),
    ("pspnet", {"aux_weight": -1.0}, "aux_weight"),
    ("pspnet", {"bins": []}, "bins"),
    ("deeplabv2", {"rates": [6, 0]}, "rates"),
    ("deeplabv1", {"dropout": 1.5}, "dropout"),
    ("fcn16s", {"width": 0}, "width"),
    ("unet", {"channels": (8, 16), "strides": (2, 2)}, "strides"),
])
def test_bad_arguments_name_the_argument(name: str, kwargs: dict, arg: str) -> None:
    base = {} if name == "unet" else {"width": 4}
    with pytest.raises(ValueError, match=arg):
        MODELS.get(name)(in_channels=1, out_channels=2, **{**base, **kwargs})


def test_resnet_bad_arguments() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        ResNet(1, 2, output_stride=12)
    with pytest.raises(ValueError, match="depth"):
        ResNet(1, 2, depth=20)
    with pytest.raises(ValueError, match="spatial_dims"):
        ResNet(1, 4)
