"""The DeepLab family, 2D and 3D, on the dilated-ResNet encoder of :mod:`pipeline.models.backbones`.

* ``deeplabv1`` — DeepLab-LargeFOV: Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully
  Connected CRFs", ICLR 2015. Encoder at output stride 8, then fc6 (3×3, dilation 12) → fc7 (1×1) → fc8 (1×1
  classifier), ReLU and dropout between them. (The dense CRF is a separate post-processing step in this pipeline.)
* ``deeplabv2`` — ASPP-L: Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
  Convolution, and Fully Connected CRFs", TPAMI 2018. Four parallel fc6 (3×3, rates 6/12/18/24) → fc7 → fc8
  branches whose class scores are summed.
* ``deeplabv3`` — Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587,
  2017. ASPP with a 1×1 branch, three 3×3 atrous branches (rates 6/12/18 at output stride 16, doubled at 8) and an
  image-level pooling branch, each followed by normalisation and ReLU; concatenation → 1×1 projection → 1×1
  classifier.
* ``deeplabv3plus`` — Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
  Segmentation", ECCV 2018. The v3 encoder plus a decoder: stride-4 low-level features reduced by a 1×1
  convolution (48 channels at width 64 → ``3 * width / 4``), concatenated with the 4×-up-sampled ASPP output, two
  3×3 convolutions and a 1×1 classifier; ASPP and decoder use atrous depthwise-separable convolutions
  (``separable=True``).

The papers' VGG-16 (v1, v2) / ResNet-101 / Xception encoders are replaced by the configurable ResNet (default depth
18, width 16 for CPU). All logits are bi-/trilinearly up-sampled (``align_corners=False``) to the input size.

Normalisation and batch size 1: the encoder and heads use BatchNorm that falls back to running statistics when it
would see a single value per channel (see :mod:`pipeline.models.backbones`); the image-pooling branch, whose
features are always 1×1, uses GroupNorm instead so that it normalises meaningfully at any batch size, including 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models import MODELS
from pipeline.models.backbones import (
    NORMS,
    ConvNormAct,
    ResNet,
    SeparableConv,
    adaptive_avg_pool,
    check_choice,
    check_dropout,
    check_positive,
    check_spatial_dims,
    conv,
    dropout as channel_dropout,
    init_weights,
    norm_layer,
    resize,
)


def _check_rates(rates: Sequence[int], expected: int | None = None) -> list[int]:
    out = list(rates)
    if expected is not None and len(out) != expected:
        raise ValueError(f"rates needs {expected} entries, got {len(out)}: {out}")
    if not out or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in out):
        raise ValueError(f"rates must be positive integers, not {out}")
    return out


def _classifier(spatial_dims: int, cin: int, classes: int) -> nn.Module:
    layer = conv(spatial_dims, cin, classes, 1, bias=True)
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.zeros_(layer.bias)
    return layer


class _LargeFOVBranch(nn.Sequential):
    """fc6 (3×3, dilation ``rate``) → ReLU → dropout → fc7 (1×1) → ReLU → dropout → fc8 (1×1 class scores)."""

    def __init__(self, spatial_dims: int, cin: int, hidden: int, classes: int, rate: int, dropout: float) -> None:
        super().__init__(
            conv(spatial_dims, cin, hidden, 3, dilation=rate, bias=True), nn.ReLU(inplace=True), nn.Dropout(dropout),
            conv(spatial_dims, hidden, hidden, 1, bias=True), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        init_weights(self)
        self.add_module("fc8", _classifier(spatial_dims, hidden, classes))


class _Base(nn.Module):
    """Common checks and the encoder."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, depth: int, width: int,
                 output_stride: int, allowed_strides: tuple[int, ...], norm: str) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_positive("out_channels", out_channels)
        check_choice("output_stride", output_stride, allowed_strides)
        check_choice("norm", norm, NORMS)
        self.spatial_dims = spatial_dims
        self.output_stride = output_stride
        self.backbone = ResNet(in_channels, spatial_dims, depth=depth, width=width, output_stride=output_stride,
                               norm=norm)


@MODELS.register("deeplabv1")
class DeepLabV1(_Base):
    """DeepLab-LargeFOV (see the module docstring).

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        depth: ResNet depth (18, 34, 50, 101).
        width: ResNet base width (16 default for CPU; 64 in ResNet).
        output_stride: 8 (the paper) or 16.
        dilation: dilation of fc6 (12 in the paper, at output stride 8).
        head_channels: channels of fc6/fc7 (1024 in the paper); ``None`` uses ``8 * width``.
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
        norm: encoder normalisation, 'batch' or 'group'.

    Raises:
        ValueError: for a bad ``output_stride``, ``depth``, ``spatial_dims``, ``dilation``, ``norm`` or ``dropout``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, output_stride: int = 8, dilation: int = 12, head_channels: int | None = None,
                 dropout: float = 0.5, norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, depth, width, output_stride, (8, 16), norm)
        check_positive("dilation", dilation)
        check_dropout(dropout)
        hidden = 8 * width if head_channels is None else head_channels
        check_positive("head_channels", hidden)
        self.head = _LargeFOVBranch(spatial_dims, self.backbone.channels["out"], hidden, out_channels, dilation,
                                    dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size."""
        return resize(self.head(self.backbone(x)["out"]), x.shape[2:])


@MODELS.register("deeplabv2")
class DeepLabV2(_Base):
    """DeepLabv2 with ASPP-L: summed class scores of parallel atrous branches (see the module docstring).

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        depth: ResNet depth (18, 34, 50, 101; the paper used 101).
        width: ResNet base width (16 default for CPU; 64 in the paper).
        output_stride: 8 (the paper) or 16.
        rates: dilation of each branch's 3×3 fc6 (6, 12, 18, 24 in the paper).
        head_channels: channels of each branch's fc6/fc7 (1024 in the paper); ``None`` uses ``8 * width``.
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
        norm: encoder normalisation, 'batch' or 'group'.

    Raises:
        ValueError: for a bad ``output_stride``, ``depth``, ``spatial_dims``, ``rates``, ``norm`` or ``dropout``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, output_stride: int = 8, rates: Sequence[int] = (6, 12, 18, 24),
                 head_channels: int | None = None, dropout: float = 0.5, norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, depth, width, output_stride, (8, 16), norm)
        self.rates = _check_rates(rates)
        check_dropout(dropout)
        hidden = 8 * width if head_channels is None else head_channels
        check_positive("head_channels", hidden)
        cin = self.backbone.channels["out"]
        self.branches = nn.ModuleList(
            _LargeFOVBranch(spatial_dims, cin, hidden, out_channels, r, dropout) for r in self.rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size."""
        feats = self.backbone(x)["out"]
        scores = self.branches[0](feats)
        for branch in self.branches[1:]:
            scores = scores + branch(feats)
        return resize(scores, x.shape[2:])


class ImagePooling(nn.Module):
    """Image-level features: global average pooling → 1×1 convolution → GroupNorm → ReLU → broadcast to the input
    size. GroupNorm (not BatchNorm) because the pooled map is 1×1: BatchNorm would fail in training with batch 1."""

    def __init__(self, spatial_dims: int, cin: int, cout: int) -> None:
        super().__init__()
        self.pool = adaptive_avg_pool(spatial_dims, 1)
        self.conv = conv(spatial_dims, cin, cout, 1)
        self.norm = norm_layer("group", cout, spatial_dims)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm(self.conv(self.pool(x))))
        return y.expand(-1, -1, *x.shape[2:])  # bilinear up-sampling of a 1×1 map is a broadcast


class ASPP(nn.Module):
    """DeepLabv3 atrous spatial pyramid pooling: 1×1 branch, one 3×3 atrous branch per rate (plain or
    depthwise-separable), image pooling; concatenation → 1×1 projection (norm, ReLU) → dropout."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, rates: Sequence[int], norm: str = "batch",
                 separable: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(spatial_dims, cin, cout, 1, norm=norm)]
        for r in rates:
            if separable:
                branches.append(SeparableConv(spatial_dims, cin, cout, 3, dilation=r, norm=norm))
            else:
                branches.append(ConvNormAct(spatial_dims, cin, cout, 3, dilation=r, norm=norm))
        branches.append(ImagePooling(spatial_dims, cin, cout))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvNormAct(spatial_dims, cout * len(branches), cout, 1, norm=norm),
                                     channel_dropout(spatial_dims, dropout))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


def _v3_rates(rates: Sequence[int] | None, output_stride: int) -> list[int]:
    if rates is None:
        return [r * (16 // output_stride) for r in (6, 12, 18)]
    return _check_rates(rates)


@MODELS.register("deeplabv3")
class DeepLabV3(_Base):
    """DeepLabv3: encoder → ASPP → 1×1 classifier (see the module docstring).

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        depth: ResNet depth (18, 34, 50, 101; the paper used 50/101).
        width: ResNet base width (16 default for CPU; 64 in the paper).
        output_stride: 16 (default) or 8.
        rates: dilations of the 3×3 ASPP branches; ``None`` uses 6, 12, 18 at output stride 16 and 12, 24, 36 at 8.
        aspp_channels: channels of every ASPP branch and of the projection (256 in the paper); ``None`` uses
            ``4 * width``.
        separable: use atrous depthwise-separable 3×3 ASPP branches (the v3+ choice; off in v3).
        dropout: dropout after the ASPP projection.
        norm: 'batch' or 'group' (the image-pooling branch always uses GroupNorm).

    Raises:
        ValueError: for a bad ``output_stride``, ``depth``, ``spatial_dims``, ``rates``, ``norm`` or ``dropout``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, output_stride: int = 16, rates: Sequence[int] | None = None,
                 aspp_channels: int | None = None, separable: bool = False, dropout: float = 0.1,
                 norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, depth, width, output_stride, (8, 16), norm)
        self.rates = _v3_rates(rates, output_stride)
        check_dropout(dropout)
        ch = 4 * width if aspp_channels is None else aspp_channels
        check_positive("aspp_channels", ch)
        self.aspp = ASPP(spatial_dims, self.backbone.channels["out"], ch, self.rates, norm, separable, dropout)
        self.classifier = _classifier(spatial_dims, ch, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size."""
        return resize(self.classifier(self.aspp(self.backbone(x)["out"])), x.shape[2:])


@MODELS.register("deeplabv3plus")
class DeepLabV3Plus(_Base):
    """DeepLabv3+: the v3 encoder with a low-level-feature decoder (see the module docstring).

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        depth: ResNet depth (18, 34, 50, 101; the paper used 101 and Xception).
        width: ResNet base width (16 default for CPU; 64 in the paper).
        output_stride: 16 (default) or 8.
        rates: dilations of the 3×3 ASPP branches; ``None`` uses 6, 12, 18 at output stride 16 and 12, 24, 36 at 8.
        aspp_channels: channels of the ASPP branches, projection and decoder convolutions (256 in the paper);
            ``None`` uses ``4 * width``.
        low_channels: channels of the reduced stride-4 features (48 in the paper); ``None`` uses
            ``max(8, 3 * width // 4)``.
        separable: atrous depthwise-separable 3×3 convolutions in ASPP and decoder (the paper's choice).
        dropout: dropout after the ASPP projection.
        norm: 'batch' or 'group' (the image-pooling branch always uses GroupNorm).

    Raises:
        ValueError: for a bad ``output_stride``, ``depth``, ``spatial_dims``, ``rates``, ``norm`` or ``dropout``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, output_stride: int = 16, rates: Sequence[int] | None = None,
                 aspp_channels: int | None = None, low_channels: int | None = None, separable: bool = True,
                 dropout: float = 0.1, norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, depth, width, output_stride, (8, 16), norm)
        self.rates = _v3_rates(rates, output_stride)
        check_dropout(dropout)
        ch = 4 * width if aspp_channels is None else aspp_channels
        low = max(8, 3 * width // 4) if low_channels is None else low_channels
        check_positive("aspp_channels", ch)
        check_positive("low_channels", low)
        sd = spatial_dims
        self.aspp = ASPP(sd, self.backbone.channels["out"], ch, self.rates, norm, separable, dropout)
        self.reduce = ConvNormAct(sd, self.backbone.channels["low"], low, 1, norm=norm)

        def block(cin: int) -> nn.Module:
            return SeparableConv(sd, cin, ch, 3, norm=norm) if separable else ConvNormAct(sd, cin, ch, 3, norm=norm)

        self.decoder = nn.Sequential(block(ch + low), block(ch))
        init_weights(self.reduce)
        init_weights(self.decoder)
        self.classifier = _classifier(sd, ch, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size."""
        feats = self.backbone(x)
        low = self.reduce(feats["low"])
        high = resize(self.aspp(feats["out"]), low.shape[2:])
        return resize(self.classifier(self.decoder(torch.cat([high, low], dim=1))), x.shape[2:])
