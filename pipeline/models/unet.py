"""U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015).

A thin wrapper around :class:`monai.networks.nets.UNet` (encoder/decoder with skip concatenation; residual units
as in Kerfoot et al., 2018, when ``num_res_units > 0``) that follows the pipeline's constructor convention
(``in_channels``, ``out_channels``, ``spatial_dims``) and accepts any input size: the input is zero-padded up to a
multiple of the total stride and the logits are cropped back to the input's spatial size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet as MonaiUNet
from torch import nn

from pipeline.models import MODELS
from pipeline.models.backbones import check_choice, check_dropout, check_positive, check_spatial_dims


@MODELS.register("unet")
class UNet(nn.Module):
    """MONAI U-Net with input padding to the total stride.

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        channels: channels per level, coarsest last (the paper: 64, 128, 256, 512, 1024).
        strides: down-sampling stride between consecutive levels (``len(channels) - 1`` entries).
        num_res_units: residual units per block (0: plain conv blocks as in the paper).
        kernel_size: convolution kernel (odd).
        norm: 'instance' or 'batch'.
        dropout: dropout probability inside the blocks.

    Raises:
        ValueError: for a bad ``spatial_dims``, ``channels``/``strides`` mismatch, ``norm`` or ``dropout``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        spatial_dims: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        kernel_size: int = 3,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        channels, strides = list(channels), list(strides)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}")
        for c in channels:
            check_positive("channels", c)
        if len(strides) != len(channels) - 1:
            raise ValueError(f"strides needs {len(channels) - 1} entries (len(channels) - 1), got {len(strides)}")
        for s in strides:
            check_positive("strides", s)
        if num_res_units < 0:
            raise ValueError(f"num_res_units must be >= 0, not {num_res_units}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, not {kernel_size}")
        check_choice("norm", norm, ("instance", "batch"))
        check_dropout(dropout)
        self.spatial_dims = spatial_dims
        self.stride = math.prod(strides)
        self.net = MonaiUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels,
            strides=strides, kernel_size=kernel_size, up_kernel_size=kernel_size, num_res_units=num_res_units,
            norm=norm.upper(), dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits with the input's spatial size."""
        size = x.shape[2:]
        pad: list[int] = []
        for s in reversed(size):  # F.pad takes the last axis first
            pad += [0, (-int(s)) % self.stride]
        if any(pad):
            x = F.pad(x, pad)
        out = self.net(x)
        return out[(slice(None), slice(None), *(slice(0, int(s)) for s in size))]
