"""FC-DenseNet (Jégou et al., "The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic
Segmentation", CVPRW 2017), in 2D or 3D.

* **Dense block**: ``n`` layers, each BN → ReLU → 3×3 convolution with ``k`` (growth rate) filters → dropout; every
  layer sees the concatenation of the block's input and all earlier layers' outputs.
* **Down path**: a first 3×3 convolution (48 filters), then per resolution a dense block whose output (input plus
  its ``n·k`` new feature maps) is kept as the skip connection and goes through a *transition down*
  (BN → ReLU → 1×1 convolution keeping the channels → dropout → 2× max pooling).
* **Bottleneck** and **up path**: the bottleneck dense block and every up-path dense block pass on only their new
  ``n·k`` feature maps (not their input), which a *transition up* (3×3 transposed convolution, stride 2, same
  number of maps) up-samples and concatenates with the skip connection of that resolution. The last dense block
  keeps its whole stack, and a 1×1 convolution maps it to the class logits.

Depths (``depth``, the number of convolution layers): 56 (4 layers per block, k = 12), 67 (5 layers, k = 16),
103 (4, 5, 7, 10, 12 layers down, 15 in the bottleneck, mirrored up, k = 16); ``growth_rate``, ``layers_per_block``,
``bottleneck_layers``, ``first_channels`` and ``dropout`` override their parts. Weights are He-uniform initialised
as in the paper; biases zero. Inputs must be divisible by ``2 ** pools`` per axis (``total_stride()``; 32 for the
paper's 5 poolings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models import MODELS
from pipeline.models.backbones import (
    NORMS,
    check_choice,
    check_dropout,
    check_positive,
    check_spatial_dims,
    conv,
    conv_transpose_cls,
    max_pool,
    norm_layer,
)

# depth → (growth rate, layers of the down blocks (up blocks mirror them), bottleneck layers)
DEPTHS: dict[int, tuple[int, tuple[int, ...], int]] = {
    56: (12, (4, 4, 4, 4, 4), 4),
    67: (16, (5, 5, 5, 5, 5), 5),
    103: (16, (4, 5, 7, 10, 12), 15),
}
MAX_POOLS = 8  # 2**8 = 256 per axis: deeper is a typo on a medical image
MAX_LAYERS = 64  # per dense block (the paper's largest has 15)
MAX_WIDTH = 4096  # growth rate and first convolution's filters (the paper: 12-16 and 48)


def _drop(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class DenseLayer(nn.Sequential):
    """BN → ReLU → 3×3 convolution (``growth_rate`` filters) → dropout."""

    def __init__(self, spatial_dims: int, cin: int, growth_rate: int, dropout: float, norm: str) -> None:
        super().__init__(norm_layer(norm, cin, spatial_dims), nn.ReLU(inplace=True),
                         conv(spatial_dims, cin, growth_rate, 3, bias=True), _drop(dropout))


class DenseBlock(nn.Module):
    """``n_layers`` densely connected :class:`DenseLayer`. Returns the input concatenated with the new feature maps
    (``keep_input=True``, down path and last block) or only the ``n_layers * growth_rate`` new maps (bottleneck and
    up path, whose output a transition up up-samples)."""

    def __init__(self, spatial_dims: int, cin: int, n_layers: int, growth_rate: int, dropout: float, norm: str,
                 keep_input: bool) -> None:
        super().__init__()
        self.keep_input = keep_input
        self.layers = nn.ModuleList(
            DenseLayer(spatial_dims, cin + i * growth_rate, growth_rate, dropout, norm) for i in range(n_layers))
        self.new_channels = n_layers * growth_rate
        self.out_channels = cin + self.new_channels if keep_input else self.new_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack = x
        new: list[torch.Tensor] = []
        for layer in self.layers:
            out = layer(stack)
            new.append(out)
            stack = torch.cat([stack, out], dim=1)
        if self.keep_input:
            return stack
        return torch.cat(new, dim=1) if len(new) > 1 else new[0]


class TransitionDown(nn.Sequential):
    """BN → ReLU → 1×1 convolution (same channels) → dropout → 2× max pooling."""

    def __init__(self, spatial_dims: int, channels: int, dropout: float, norm: str) -> None:
        super().__init__(norm_layer(norm, channels, spatial_dims), nn.ReLU(inplace=True),
                         conv(spatial_dims, channels, channels, 1, bias=True), _drop(dropout),
                         max_pool(spatial_dims, 2, 2, 0))


class TransitionUp(nn.Module):
    """3×3 transposed convolution with stride 2 (exactly twice the size) of the previous block's new maps, then
    concatenation with the skip connection (up-sampled maps first, as in the reference implementation)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.up = conv_transpose_cls(spatial_dims)(channels, channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.up(x), skip], dim=1)


def _check_layers(name: str, value: int) -> None:
    check_positive(name, value)  # also rejects True/False
    if value > MAX_LAYERS:
        raise ValueError(f"{name} must be at most {MAX_LAYERS} layers per dense block, not {value}")


def _check_width(name: str, value: int) -> None:
    check_positive(name, value)
    if value > MAX_WIDTH:
        raise ValueError(f"{name} must be at most {MAX_WIDTH} feature maps, not {value}")


def _layers(value: int | Sequence[int] | None, default: Sequence[int]) -> list[int]:
    if value is None:
        return list(default)
    if isinstance(value, int):
        _check_layers("layers_per_block", value)
        return [value] * len(default)
    values = list(value)
    if not values or len(values) > MAX_POOLS:
        raise ValueError(f"layers_per_block needs 1 to {MAX_POOLS} entries (one per pooling), got {len(values)}")
    for v in values:
        _check_layers("layers_per_block", v)
    return values


@MODELS.register("fcdensenet")
class FCDenseNet(nn.Module):
    """FC-DenseNet ("Tiramisu"); see the module docstring.

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        depth: 56, 67 or 103: the paper's networks (FC-DenseNet56/67/103); the arguments below override their
            parts.
        growth_rate: ``k``, feature maps each dense layer adds (the depth's: 12 or 16).
        layers_per_block: layers of each down-path dense block, one entry per pooling (the up path mirrors them),
            or one int for every block with the depth's number of poolings (5).
        bottleneck_layers: layers of the bottleneck block; ``None``: the depth's when ``layers_per_block`` is not
            set, else ``layers_per_block`` (int) or its last entry (list).
        first_channels: filters of the first 3×3 convolution (48 in the paper).
        dropout: dropout probability after every convolution but the first and the last (0.2 in the paper).
        norm: 'batch' (the paper) or 'group'.

    Raises:
        ValueError: naming the argument, for a bad ``spatial_dims``, ``depth``, layer count, ``dropout`` or ``norm``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 56,
                 growth_rate: int | None = None, layers_per_block: int | Sequence[int] | None = None,
                 bottleneck_layers: int | None = None, first_channels: int = 48, dropout: float = 0.2,
                 norm: str = "batch") -> None:
        super().__init__()
        sd = check_spatial_dims(spatial_dims)
        check_choice("depth", depth, tuple(DEPTHS))
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        _check_width("first_channels", first_channels)
        check_dropout(dropout)
        check_choice("norm", norm, NORMS)
        k, depth_down, depth_bottleneck = DEPTHS[depth]
        k = k if growth_rate is None else growth_rate
        _check_width("growth_rate", k)
        down = _layers(layers_per_block, depth_down)
        if bottleneck_layers is None:
            bottleneck_layers = depth_bottleneck if layers_per_block is None else down[-1]
        _check_layers("bottleneck_layers", bottleneck_layers)
        self.spatial_dims, self.growth_rate, self.pools = sd, k, len(down)
        self.layers_per_block = [*down, bottleneck_layers, *reversed(down)]

        self.first = conv(sd, in_channels, first_channels, 3, bias=True)
        self.down_blocks, self.transitions_down = nn.ModuleList(), nn.ModuleList()
        channels, skips = first_channels, []
        for n in down:
            block = DenseBlock(sd, channels, n, k, dropout, norm, keep_input=True)
            channels = block.out_channels
            skips.append(channels)
            self.down_blocks.append(block)
            self.transitions_down.append(TransitionDown(sd, channels, dropout, norm))
        self.bottleneck = DenseBlock(sd, channels, bottleneck_layers, k, dropout, norm, keep_input=False)
        new = self.bottleneck.new_channels
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for i, n in enumerate(reversed(down)):
            self.transitions_up.append(TransitionUp(sd, new))
            last = i == len(down) - 1
            block = DenseBlock(sd, new + skips[-1 - i], n, k, dropout, norm, keep_input=last)
            self.up_blocks.append(block)
            new = block.out_channels
        self.head = conv(sd, new, out_channels, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform (ReLU gain) weights of every (transposed) convolution, zero biases; unit/zero norm affines."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size (which must be divisible by :meth:`total_stride`)."""
        stride = 2**self.pools
        if any(int(s) % stride for s in x.shape[2:]):
            raise ValueError(f"FC-DenseNet input size {list(x.shape[2:])} must be divisible by {stride} per axis "
                             f"({self.pools} poolings)")
        x = self.first(x)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.transitions_up, self.up_blocks, strict=True):
            x = block(up(x, skips.pop()))
        return self.head(x)

    def total_stride(self) -> tuple[int, ...]:
        """The factor each spatial size must be divisible by: ``2 ** pools`` per axis."""
        return (2**self.pools,) * self.spatial_dims
