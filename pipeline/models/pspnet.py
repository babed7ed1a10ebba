"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017), 2D and 3D.

The dilated-ResNet encoder of :mod:`pipeline.models.backbones` at output stride 8 (the paper: ResNet-101/50 with a
deep stem; here depth 18, width 16 by default for CPU) feeds the pyramid pooling module: for each bin size (1, 2, 3,
6) adaptive average pooling → 1×1 convolution to ``C / len(bins)`` channels → normalisation → ReLU → bi-/trilinear
up-sampling to the feature size; the branches are concatenated with the features and a 3×3 convolution (norm, ReLU),
dropout and a 1×1 classifier give the class scores. An auxiliary head (3×3 convolution, norm, ReLU, dropout, 1×1
classifier) on the stage-3 features adds a deep-supervision loss weighted by ``aux_weight`` (0.4 in the paper).

In training mode with ``aux_weight > 0`` the forward pass returns ``(logits, aux_logits)``, both up-sampled to the
input size; otherwise (eval mode, or ``aux_weight == 0``) only ``logits``. The trainer
(:func:`pipeline.training.trainer.compute_loss`) adds ``model.aux_weight`` times the auxiliary loss.

Normalisation and batch size 1: the pyramid branches use GroupNorm, since the 1-bin branch is 1×1 (and the 2-bin one
has 2^d values) and BatchNorm there fails or is meaningless with batch 1; the encoder and heads use the BatchNorm of
:mod:`pipeline.models.backbones`, which falls back to running statistics when it sees one value per channel.
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


class PyramidPooling(nn.Module):
    """Pyramid pooling module: features concatenated with their pooled, projected and up-sampled versions."""

    def __init__(self, spatial_dims: int, cin: int, bins: Sequence[int], branch_channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                adaptive_avg_pool(spatial_dims, b),
                conv(spatial_dims, cin, branch_channels, 1),
                norm_layer("group", branch_channels, spatial_dims),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = cin + branch_channels * len(self.stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return torch.cat([x, *(resize(stage(x), size) for stage in self.stages)], dim=1)


@MODELS.register("pspnet")
class PSPNet(nn.Module):
    """PSPNet with pyramid pooling and an auxiliary head (see the module docstring).

    Args:
        in_channels: image channels (filled from the manifest's modalities).
        out_channels: classes including background (filled from the manifest's labels).
        spatial_dims: 2 or 3.
        depth: ResNet depth (18, 34, 50, 101).
        width: ResNet base width (16 default for CPU; 64 in the paper).
        output_stride: 8 (the paper) or 16.
        bins: pooled output sizes of the pyramid (1, 2, 3, 6 in the paper).
        branch_channels: channels of each pyramid branch; ``None`` uses ``C / len(bins)`` for ``C`` encoder
            channels (512 for 2048 in the paper).
        head_channels: channels of the 3×3 head convolution (512 in the paper); ``None`` uses ``C / 4``.
        aux_weight: weight of the auxiliary loss (0.4 in the paper); 0 builds no auxiliary head.
        dropout: dropout before the classifiers (0.1 in the paper).
        norm: 'batch' or 'group' for the encoder and heads (the pyramid branches always use GroupNorm).

    Raises:
        ValueError: for a bad ``output_stride``, ``depth``, ``spatial_dims``, ``bins``, ``aux_weight``, ``norm``
            or ``dropout``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 2, depth: int = 18,
                 width: int = 16, output_stride: int = 8, bins: Sequence[int] = (1, 2, 3, 6),
                 branch_channels: int | None = None, head_channels: int | None = None, aux_weight: float = 0.4,
                 dropout: float = 0.1, norm: str = "batch") -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_positive("out_channels", out_channels)
        check_choice("output_stride", output_stride, (8, 16))
        check_choice("norm", norm, NORMS)
        check_dropout(dropout)
        bins = list(bins)
        if not bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins):
            raise ValueError(f"bins must be a non-empty list of positive integers, not {bins}")
        if not float(aux_weight) >= 0.0:
            raise ValueError(f"aux_weight must be >= 0, not {aux_weight!r}")
        self.spatial_dims, self.output_stride, self.bins = spatial_dims, output_stride, bins
        self.aux_weight: float = float(aux_weight)
        self.backbone = ResNet(in_channels, spatial_dims, depth=depth, width=width, output_stride=output_stride,
                               norm=norm)
        c = self.backbone.channels["out"]
        branch = max(1, c // len(bins)) if branch_channels is None else branch_channels
        head = max(1, c // 4) if head_channels is None else head_channels
        check_positive("branch_channels", branch)
        check_positive("head_channels", head)
        sd = spatial_dims
        self.ppm = PyramidPooling(sd, c, bins, branch)
        self.head = nn.Sequential(ConvNormAct(sd, self.ppm.out_channels, head, 3, norm=norm),
                                  channel_dropout(sd, dropout))
        self.classifier = conv(sd, head, out_channels, 1, bias=True)
        self.aux: nn.Module | None = None
        if self.aux_weight > 0:
            c3 = self.backbone.channels["c3"]
            aux_ch = max(1, c3 // 4)
            self.aux = nn.Sequential(ConvNormAct(sd, c3, aux_ch, 3, norm=norm), channel_dropout(sd, dropout),
                                     conv(sd, aux_ch, out_channels, 1, bias=True))
        init_weights(self.ppm)
        init_weights(self.head)
        init_weights(self.classifier)
        if self.aux is not None:
            init_weights(self.aux)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return input-sized logits; in training mode with an auxiliary head, ``(logits, aux_logits)``."""
        feats = self.backbone(x)
        logits = resize(self.classifier(self.head(self.ppm(feats["out"]))), x.shape[2:])
        if self.training and self.aux is not None:
            return logits, resize(self.aux(feats["c3"]), x.shape[2:])
        return logits
