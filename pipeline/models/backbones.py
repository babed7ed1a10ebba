"""Building blocks shared by the classic segmentation baselines: N-d layer helpers and a dilated ResNet encoder.

The encoder is the ResNet of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), with
BasicBlock (depth 18, 34) or Bottleneck (depth 50, 101) residual units, written for 2D or 3D inputs. Its
``output_stride`` (8, 16 or 32) is reached by replacing the strides of the last stages with atrous (dilated)
convolutions, as in DeepLab (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018): output stride 16 → stage 4 unstrided with dilation 2; output
stride 8 → stage 3 dilation 2 and stage 4 dilation 4.

Normalisation: ``norm="batch"`` (the papers' choice) uses :class:`SafeBatchNorm2d`/:class:`SafeBatchNorm3d`, which in
training mode fall back to their running statistics when they would see a single value per channel (batch 1 and a
1×1 feature map, e.g. the stride-32 features of a 32³ patch) instead of raising as ``nn.BatchNorm`` does.
``norm="group"`` uses GroupNorm, which does not depend on the batch size at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# output stride → (stride, dilation) of stages 1-4 (the stem already down-samples by 4)
_STAGE_LAYOUT: dict[int, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


# ----------------------------------------------------------------------------------------------------------------
# argument checks and N-d layer helpers
# ----------------------------------------------------------------------------------------------------------------
def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3.

    Raises:
        ValueError: naming ``spatial_dims`` otherwise.
    """
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
    return int(spatial_dims)


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` naming the argument when ``value`` is not one of ``allowed``."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def check_positive(name: str, value: int) -> None:
    """Raise ``ValueError`` naming the argument when ``value`` is not a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def check_dropout(value: float, name: str = "dropout") -> None:
    """Raise ``ValueError`` when ``value`` is not a probability in [0, 1)."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), not {value!r}")


def conv(spatial_dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
         groups: int = 1, bias: bool = False) -> nn.Module:
    """``nn.Conv2d``/``nn.Conv3d`` with 'same' padding for odd kernels (``dilation * (kernel // 2)``)."""
    cls = nn.Conv2d if check_spatial_dims(spatial_dims) == 2 else nn.Conv3d
    return cls(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, groups=groups,
               bias=bias)


def conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return nn.ConvTranspose2d if check_spatial_dims(spatial_dims) == 2 else nn.ConvTranspose3d


def max_pool(spatial_dims: int, kernel: int, stride: int, padding: int) -> nn.Module:
    """``nn.MaxPool2d``/``nn.MaxPool3d``."""
    cls = nn.MaxPool2d if check_spatial_dims(spatial_dims) == 2 else nn.MaxPool3d
    return cls(kernel, stride=stride, padding=padding)


def adaptive_avg_pool(spatial_dims: int, size: int) -> nn.Module:
    """``nn.AdaptiveAvgPool2d``/``nn.AdaptiveAvgPool3d``."""
    cls = nn.AdaptiveAvgPool2d if check_spatial_dims(spatial_dims) == 2 else nn.AdaptiveAvgPool3d
    return cls(size)


def dropout(spatial_dims: int, p: float) -> nn.Module:
    """Channel dropout (``nn.Dropout2d``/``nn.Dropout3d``), or identity for ``p == 0``."""
    if p <= 0:
        return nn.Identity()
    return (nn.Dropout2d if check_spatial_dims(spatial_dims) == 2 else nn.Dropout3d)(p)


def _safe_bn_forward(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if bn.training and x.numel() // max(x.shape[1], 1) <= 1 and bn.running_mean is not None:
        # one value per channel: batch statistics are undefined, use the running ones (no update)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return nn.modules.batchnorm._BatchNorm.forward(bn, x)


class SafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with its running statistics when a training batch has one value per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _safe_bn_forward(self, x)


class SafeBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that normalises with its running statistics when a training batch has one value per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _safe_bn_forward(self, x)


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 2) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups`` and leaves ``min_per_group`` per group."""
    for g in range(min(max_groups, max(channels // min_per_group, 1)), 0, -1):
        if channels % g == 0:
            return g
    return 1


def norm_layer(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    """A normalisation layer: 'batch' (:class:`SafeBatchNorm2d`/``3d``) or 'group' (GroupNorm, ≤32 groups)."""
    check_choice("norm", kind, NORMS)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return (SafeBatchNorm2d if check_spatial_dims(spatial_dims) == 2 else SafeBatchNorm3d)(channels)


def interp_mode(spatial_dims: int) -> str:
    """'bilinear' for 2D, 'trilinear' for 3D."""
    return "bilinear" if check_spatial_dims(spatial_dims) == 2 else "trilinear"


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bi-/trilinear interpolation (``align_corners=False``) of ``x`` (N, C, *spatial) to ``size``."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=interp_mode(x.dim() - 2), align_corners=False)


class ConvNormAct(nn.Sequential):
    """Convolution (no bias) → norm → ReLU."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int = 3, dilation: int = 1,
                 norm: str = "batch", stride: int = 1) -> None:
        super().__init__(
            conv(spatial_dims, cin, cout, kernel, stride=stride, dilation=dilation),
            norm_layer(norm, cout, spatial_dims),
            nn.ReLU(inplace=True),
        )


class SeparableConv(nn.Sequential):
    """Atrous depthwise-separable convolution as in DeepLabv3+: depthwise k×k (dilated) → norm → ReLU →
    pointwise 1×1 → norm → ReLU."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int = 3, dilation: int = 1,
                 norm: str = "batch") -> None:
        super().__init__(
            conv(spatial_dims, cin, cin, kernel, dilation=dilation, groups=cin),
            norm_layer(norm, cin, spatial_dims),
            nn.ReLU(inplace=True),
            conv(spatial_dims, cin, cout, 1),
            norm_layer(norm, cout, spatial_dims),
            nn.ReLU(inplace=True),
        )


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, zero biases, unit/zero norm affine parameters."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3×3 convolutions (both with the stage's dilation) and an identity/projection shortcut."""

    expansion = 1

    def __init__(self, spatial_dims: int, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv(spatial_dims, cin, planes, 3, stride=stride, dilation=dilation)
        self.bn1 = norm_layer(norm, planes, spatial_dims)
        self.conv2 = conv(spatial_dims, planes, cout, 3, dilation=dilation)
        self.bn2 = norm_layer(norm, cout, spatial_dims)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(spatial_dims, cin, cout, 1, stride=stride),
                                          norm_layer(norm, cout, spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided/dilated) → 1×1 expand (×4), with an identity/projection shortcut."""

    expansion = 4

    def __init__(self, spatial_dims: int, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv(spatial_dims, cin, planes, 1)
        self.bn1 = norm_layer(norm, planes, spatial_dims)
        self.conv2 = conv(spatial_dims, planes, planes, 3, stride=stride, dilation=dilation)
        self.bn2 = norm_layer(norm, planes, spatial_dims)
        self.conv3 = conv(spatial_dims, planes, cout, 1)
        self.bn3 = norm_layer(norm, cout, spatial_dims)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(spatial_dims, cin, cout, 1, stride=stride),
                                          norm_layer(norm, cout, spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Dilated ResNet encoder for 2D or 3D inputs.

    Stem: k×k convolution (stride 2) → norm → ReLU → 3×3 max-pool (stride 2); then four stages of residual
    blocks with ``width × (1, 2, 4, 8)`` planes (×4 output channels for Bottleneck).

    ``forward`` returns a dict of features:

    * ``"low"``: stage 1, stride 4 (DeepLabv3+ decoder input),
    * ``"c2"``: stage 2, stride 8 (FCN-8s skip),
    * ``"c3"``: stage 3, stride 16 (8 at output stride 8; FCN-16s skip, PSPNet auxiliary head),
    * ``"out"``: stage 4, stride ``output_stride``.

    :attr:`channels` and :attr:`strides` give each feature's channel count and nominal stride.

    Args:
        in_channels: image channels.
        spatial_dims: 2 or 3.
        depth: 18 or 34 (BasicBlock), 50 or 101 (Bottleneck).
        width: planes of the first stage (64 in the paper; 16 default for CPU).
        output_stride: 8, 16 or 32; strides of the last stages are replaced by dilation.
        norm: 'batch' (see module docstring) or 'group'.
        stem_kernel: kernel of the stem convolution (7 in the paper).

    Raises:
        ValueError: for an unsupported ``depth``, ``output_stride``, ``spatial_dims``, ``norm`` or ``width``.
    """

    def __init__(self, in_channels: int = 1, spatial_dims: int = 2, depth: int = 18, width: int = 16,
                 output_stride: int = 32, norm: str = "batch", stem_kernel: int = 7) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_choice("depth", depth, tuple(DEPTHS))
        check_choice("output_stride", output_stride, tuple(_STAGE_LAYOUT))
        check_choice("norm", norm, NORMS)
        check_positive("width", width)
        check_positive("in_channels", in_channels)
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be a positive odd integer, not {stem_kernel!r}")
        self.spatial_dims, self.depth, self.width, self.output_stride = spatial_dims, depth, width, output_stride
        kind, counts = DEPTHS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        strides, dilations = _STAGE_LAYOUT[output_stride]

        self.stem = nn.Sequential(
            conv(spatial_dims, in_channels, width, stem_kernel, stride=2),
            norm_layer(norm, width, spatial_dims),
            nn.ReLU(inplace=True),
            max_pool(spatial_dims, 3, 2, 1),
        )
        cin = width
        stages = []
        for i, (n, s, d) in enumerate(zip(counts, strides, dilations, strict=True)):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(spatial_dims, cin, planes, stride=s if j == 0 else 1, dilation=d, norm=norm))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        out_ch = [width * 2**i * block.expansion for i in range(4)]
        self.channels: dict[str, int] = dict(zip(("low", "c2", "c3", "out"), out_ch, strict=True))
        total = 4
        feature_strides = []
        for s in strides:
            total *= s
            feature_strides.append(total)
        self.strides: dict[str, int] = dict(zip(("low", "c2", "c3", "out"), feature_strides, strict=True))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the features ``{"low", "c2", "c3", "out"}`` (see the class docstring)."""
        low = self.layer1(self.stem(x))
        c2 = self.layer2(low)
        c3 = self.layer3(c2)
        return {"low": low, "c2": c2, "c3": c3, "out": self.layer4(c3)}
