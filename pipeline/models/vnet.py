"""V-Net (Milletari et al., 2016): a 3D fully convolutional network with residual stages.

Each stage applies ``n`` convolutions (5×5×5 in the paper) with PReLU and adds the stage's input to its output
(element-wise residual sum). Down-sampling is a strided 2×2×2 convolution that doubles the channels, up-sampling a
transposed 2×2×2 convolution that halves them; decoder stages concatenate the skip connection before convolving.
Width (``base_channels``) and depth (``levels``) are configurable so that a small V-Net trains on a CPU, and the
down-sampling strides can differ per axis for anisotropic scans (e.g. keep z at 3.6 mm slices).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models import MODELS


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"norm must be 'instance', 'batch' or 'none', not {kind!r}")


class _ConvUnit(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, norm: str | None) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, kernel, padding=kernel // 2), _norm(norm, cout), nn.PReLU(cout)
        )


class ResidualStage(nn.Module):
    """``n_convs`` convolutions whose output is summed with the stage input (projected if widths differ)."""

    def __init__(self, cin: int, cout: int, n_convs: int, kernel: int, norm: str | None) -> None:
        super().__init__()
        layers = [_ConvUnit(cin if i == 0 else cout, cout, kernel, norm) for i in range(n_convs)]
        self.convs = nn.Sequential(*layers[:-1], layers[-1][0], layers[-1][1])
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.skip(x))


@MODELS.register("vnet")
class VNet(nn.Module):
    """3D V-Net with residual stages.

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        base_channels: channels of the first stage (16 in the paper); doubled at each down-sampling.
        levels: number of resolution levels (5 in the paper: 4 down-samplings).
        convs_per_level: convolutions per encoder stage, one entry per level (paper: 1, 2, 3, 3, 3); decoder
            stages mirror them. ``None`` uses ``min(level + 1, 3)``.
        kernel_size: convolution kernel (5 in the paper).
        strides: down-sampling stride per level transition, each an int or three ints; ``None`` means 2.
        norm: 'instance', 'batch' or 'none' (the paper used none).
        dropout: dropout probability in the two deepest stages (0 disables).
    """

    supported_dims = (3,)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        base_channels: int = 16,
        levels: int = 5,
        convs_per_level: Sequence[int] | None = None,
        kernel_size: int = 5,
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: str | None = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be at least 2, not {levels}")
        if levels > 16:  # channels double per level: 16 levels already have 2**15 x base_channels
            raise ValueError(f"levels must be at most 16, not {levels}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, not {kernel_size}")
        convs = list(convs_per_level) if convs_per_level is not None else [min(i + 1, 3) for i in range(levels)]
        if len(convs) != levels:
            raise ValueError(f"convs_per_level needs {levels} entries (one per level), got {len(convs)}")
        stride_list = list(strides) if strides is not None else [2] * (levels - 1)
        if len(stride_list) != levels - 1:
            raise ValueError(f"strides needs {levels - 1} entries (one per down-sampling), got {len(stride_list)}")
        self.strides = [tuple(s) if isinstance(s, Sequence) else (int(s),) * 3 for s in stride_list]
        widths = [base_channels * 2**i for i in range(levels)]

        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i in range(levels):
            cin = in_channels if i == 0 else widths[i]
            self.encoders.append(ResidualStage(cin, widths[i], convs[i], kernel_size, norm))
            if i < levels - 1:
                s = self.strides[i]
                self.downs.append(
                    nn.Sequential(nn.Conv3d(widths[i], widths[i + 1], s, stride=s), nn.PReLU(widths[i + 1]))
                )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            s = self.strides[i]
            self.ups.append(
                nn.Sequential(nn.ConvTranspose3d(widths[i + 1], widths[i], s, stride=s), nn.PReLU(widths[i]))
            )
            self.decoders.append(ResidualStage(2 * widths[i], widths[i], max(convs[i], 1), kernel_size, norm))
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size (which must be divisible by the total stride)."""
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i >= len(self.encoders) - 2:
                x = self.drop(x)
            if i < len(self.downs):
                skips.append(x)
                x = self.downs[i](x)
        for up, dec in zip(self.ups, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

    def total_stride(self) -> tuple[int, int, int]:
        """The factor each spatial size must be divisible by."""
        out = [1, 1, 1]
        for s in self.strides:
            out = [a * b for a, b in zip(out, s, strict=True)]
        return (out[0], out[1], out[2])
