"""Fully convolutional networks (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015): FCN-32s, FCN-16s and FCN-8s, in 2D or 3D.

The paper's VGG-16 is replaced by the dilated-ResNet encoder of :mod:`pipeline.models.backbones` at output stride 32
(no dilation). A class-score layer (1×1 convolution) on the final stride-32 features is up-sampled by a learnable
transposed convolution; FCN-16s adds (sums) a score layer on the stride-16 features after a 2× up-sampling, FCN-8s
additionally one on the stride-8 features. As in the paper, every up-sampling is a transposed convolution
initialised to bilinear interpolation (kernel ``2f``, stride ``f``, see :func:`bilinear_kernel`) and the new skip
score layers start at zero, so a fresh FCN-16s/8s computes exactly what its coarser parent does. The paper's
``pad=100`` and crop offsets are replaced by 'same'-style padding of the transposed convolutions (padding ``f/2``,
which aligns them with ``align_corners=False`` interpolation); the final scores are cropped to the input size, or
interpolated when the input is not a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models import MODELS
from pipeline.models.backbones import (
    NORMS,
    ResNet,
    check_choice,
    check_dropout,
    check_positive,
    check_spatial_dims,
    conv,
    conv_transpose_cls,
    init_weights,
    norm_layer,
    resize,
)


def bilinear_kernel(factor: int, spatial_dims: int = 2) -> torch.Tensor:
    """The separable bilinear (2D) or trilinear (3D) up-sampling kernel for an even up-sampling ``factor``.

    Size ``2 * factor`` per axis, ``k[i] = 1 - |i - c| / factor`` with centre ``c = factor - 0.5`` (the FCN/Caffe
    ``upsample_filt`` formula), outer product over the axes. Used in a transposed convolution with stride
    ``factor`` and padding ``factor // 2``, it reproduces ``F.interpolate(..., align_corners=False)`` away from
    the borders.

    Raises:
        ValueError: when ``factor`` is not a positive even integer or ``spatial_dims`` is not 2 or 3.
    """
    check_spatial_dims(spatial_dims)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or factor % 2:
        raise ValueError(f"factor must be a positive even integer, not {factor!r}")
    centre = factor - 0.5
    og = torch.arange(2 * factor, dtype=torch.float64)
    k1 = 1.0 - (og - centre).abs() / factor
    kernel = k1
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * k1
    return kernel.float()


def bilinear_upsampling(channels: int, factor: int, spatial_dims: int = 2) -> nn.Module:
    """A learnable ``ConvTranspose2d``/``3d`` (channels → channels, no bias) initialised to per-channel bilinear
    up-sampling by ``factor``: output size is exactly ``factor`` × input size."""
    kernel = bilinear_kernel(factor, spatial_dims)
    up = conv_transpose_cls(spatial_dims)(channels, channels, 2 * factor, stride=factor, padding=factor // 2,
                                          bias=False)
    with torch.no_grad():
        up.weight.zero_()
        for c in range(channels):
            up.weight[c, c] = kernel
    return up


def fit_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop ``x`` (from the origin, which keeps the alignment of the padded transposed convolutions) along the axes
    where it is larger than ``size``; interpolate if it is still smaller along any axis."""
    size = [int(s) for s in size]
    x = x[(slice(None), slice(None), *(slice(0, min(a, s)) for a, s in zip(x.shape[2:], size, strict=True)))]
    return resize(x, size)


class FCN(nn.Module):
    """FCN-``variant``s on a ResNet encoder (see the module docstring). Use the registered subclasses.

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        variant: 32, 16 or 8 (finest skip stride).
        depth: ResNet depth (18, 34, 50, 101).
        width: ResNet base width (64 in ResNet papers; 16 default for CPU).
        head_channels: channels of the fc6/fc7-style head (3×3 then 1×1 convolution) before the score layer;
            ``None`` uses the encoder's output channels (the paper's VGG head has 4096).
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
        norm: 'batch' or 'group'.

    Raises:
        ValueError: for a bad ``variant``, ``depth``, ``width``, ``spatial_dims``, ``norm`` or ``dropout``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, variant: int = 8,
                 depth: int = 18, width: int = 16, head_channels: int | None = None, dropout: float = 0.5,
                 norm: str = "batch") -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_choice("variant", variant, (32, 16, 8))
        check_positive("out_channels", out_channels)
        check_choice("norm", norm, NORMS)
        check_dropout(dropout)
        self.variant = variant
        self.backbone = ResNet(in_channels, spatial_dims, depth=depth, width=width, output_stride=32, norm=norm)
        ch = self.backbone.channels
        head = ch["out"] if head_channels is None else head_channels
        check_positive("head_channels", head)
        sd, k = spatial_dims, out_channels
        self.head = nn.Sequential(
            conv(sd, ch["out"], head, 3), norm_layer(norm, head, sd), nn.ReLU(inplace=True), nn.Dropout(dropout),
            conv(sd, head, head, 1), norm_layer(norm, head, sd), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.score_fr = conv(sd, head, k, 1, bias=True)
        init_weights(self.head)
        nn.init.normal_(self.score_fr.weight, std=0.01)
        nn.init.zeros_(self.score_fr.bias)
        self.score_c3: nn.Module | None = None
        self.score_c2: nn.Module | None = None
        self.up_c3: nn.Module | None = None
        self.up_c2: nn.Module | None = None
        if variant <= 16:
            self.up_c3 = bilinear_upsampling(k, 2, sd)
            self.score_c3 = self._zero_score(sd, ch["c3"], k)
        if variant == 8:
            self.up_c2 = bilinear_upsampling(k, 2, sd)
            self.score_c2 = self._zero_score(sd, ch["c2"], k)
        self.up_final = bilinear_upsampling(k, variant, sd)

    @staticmethod
    def _zero_score(spatial_dims: int, cin: int, classes: int) -> nn.Module:
        layer = conv(spatial_dims, cin, classes, 1, bias=True)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size."""
        feats = self.backbone(x)
        score = self.score_fr(self.head(feats["out"]))
        if self.up_c3 is not None and self.score_c3 is not None:
            skip = self.score_c3(feats["c3"])
            score = fit_to(self.up_c3(score), skip.shape[2:]) + skip
        if self.up_c2 is not None and self.score_c2 is not None:
            skip = self.score_c2(feats["c2"])
            score = fit_to(self.up_c2(score), skip.shape[2:]) + skip
        return fit_to(self.up_final(score), x.shape[2:])

    def upsampling_layers(self) -> list[nn.Module]:
        """The transposed convolutions, coarsest first."""
        return [m for m in (self.up_c3, self.up_c2, self.up_final) if m is not None]


@MODELS.register("fcn32s")
class FCN32s(FCN):
    """FCN-32s: scores on the stride-32 features, one 32× learnable bilinear up-sampling. See :class:`FCN`."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, head_channels: int | None = None, dropout: float = 0.5, norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, 32, depth, width, head_channels, dropout, norm)


@MODELS.register("fcn16s")
class FCN16s(FCN):
    """FCN-16s: FCN-32s scores up-sampled 2× plus stride-16 skip scores, then 16× up-sampling. See :class:`FCN`."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, head_channels: int | None = None, dropout: float = 0.5, norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, 16, depth, width, head_channels, dropout, norm)


@MODELS.register("fcn8s")
class FCN8s(FCN):
    """FCN-8s: FCN-16s fusion plus stride-8 skip scores, then 8× up-sampling. See :class:`FCN`."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, head_channels: int | None = None, dropout: float = 0.5, norm: str = "batch") -> None:
        super().__init__(in_channels, out_channels, spatial_dims, 8, depth, width, head_channels, dropout, norm)
