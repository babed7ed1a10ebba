"""Build the MONAI transform chains from :class:`~pipeline.config.schema.PreprocessConfig`.

The deterministic chain (load → channel-first → NaN fill with ``nan_policy: fill`` → orientation → spacing →
foreground crop → intensity) is applied once per case by the preprocess stage and at inference, where MONAI's
``Invertd`` undoes its spatial steps to map predictions back to the scan's own grid. The random chain (patch
sampling and augmentation) runs per sample during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from monai import transforms as mt

from pipeline.config.schema import PreprocessConfig
from pipeline.transforms.finite import FillNonFinited

# NIfTI's world space: axis codes name the direction each voxel axis increases towards (RAS+).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def deterministic_transforms(cfg: PreprocessConfig, keys: Sequence[str] = ("image", "label"),
                             spatial_dims: int = 3, load: bool = True) -> list[mt.Transform]:
    """Load and normalise a case; ``keys`` is ``("image",)`` at inference and ``("image", "label")`` otherwise.
    2D images use the first two orientation codes. With ``load=False`` the chain starts from channel-first
    ``MetaTensor``s that carry their affine (``pipeline infer`` reads every format itself)."""
    keys = tuple(keys)
    has_label = "label" in keys
    modes = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    chain: list[mt.Transform] = []
    if load:
        chain += [mt.LoadImaged(keys=keys, image_only=True, reader="NibabelReader"), mt.EnsureChannelFirstd(keys=keys)]
    chain.append(mt.EnsureTyped(keys=keys, dtype=np.float32, track_meta=True))
    if cfg.nan_policy == "fill":  # before any resampling, which would spread a NaN to its neighbours
        chain.append(FillNonFinited(keys="image"))
    if cfg.orientation:
        chain.append(mt.Orientationd(keys=keys, axcodes=cfg.orientation[:spatial_dims], labels=RAS_LABELS))
    if cfg.spacing:
        chain.append(mt.Spacingd(keys=keys, pixdim=cfg.spacing, mode=modes))
    if cfg.crop_foreground:  # on the scan's own intensities: after a z-score, dim tissue is negative, not foreground
        chain.append(mt.CropForegroundd(keys=keys, source_key="image", margin=cfg.crop_margin, allow_smaller=True))
    if cfg.intensity.mode == "zscore":
        chain.append(mt.NormalizeIntensityd(keys="image", nonzero=cfg.intensity.nonzero, channel_wise=True))
    elif cfg.intensity.mode == "percentile":
        chain.append(
            mt.ScaleIntensityRangePercentilesd(
                keys="image", lower=cfg.intensity.lower, upper=cfg.intensity.upper, b_min=0.0, b_max=1.0,
                clip=True, channel_wise=True,
            )
        )
    if has_label:
        chain.append(mt.EnsureTyped(keys="label", dtype=np.uint8, track_meta=True))
    return chain


def random_transforms(cfg: PreprocessConfig, spatial_dims: int = 3,
                      extra_keys: Sequence[str] = ()) -> list[mt.Transform]:
    """Patch sampling (positive/negative around the label) and augmentation for training. ``extra_keys`` are
    per-voxel float targets (instance-aware training: border weights, distances) that move with the label and are
    interpolated like the image."""
    keys = ("image", "label", *extra_keys)
    smooth = ("bilinear", "nearest", *("bilinear",) * len(extra_keys))
    aug = cfg.augment
    size = cfg.patch.size
    chain: list[mt.Transform] = [
        mt.EnsureTyped(keys="label", dtype=np.float32),
        mt.SpatialPadd(keys=keys, spatial_size=size),
        mt.RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=size, pos=cfg.patch.pos, neg=cfg.patch.neg,
            num_samples=cfg.patch.num_samples, image_key="image",
        ),
    ]
    if aug.rotate_prob > 0 and spatial_dims == 2:  # in-plane rotation: about the z axis
        chain.append(
            mt.RandRotated(keys=keys, prob=aug.rotate_prob, range_x=math.radians(aug.rotate_deg[2]),
                           mode=smooth, padding_mode="border")
        )
    elif aug.rotate_prob > 0:
        chain.append(
            mt.RandRotated(
                keys=keys, prob=aug.rotate_prob, range_x=math.radians(aug.rotate_deg[0]),
                range_y=math.radians(aug.rotate_deg[1]), range_z=math.radians(aug.rotate_deg[2]),
                mode=smooth, padding_mode="border",
            )
        )
    if aug.scale_prob > 0:
        chain.append(
            mt.RandZoomd(
                keys=keys, prob=aug.scale_prob,
                min_zoom=aug.scale_limits[0] if aug.scale_limits else 1 - aug.scale_range,
                max_zoom=aug.scale_limits[1] if aug.scale_limits else 1 + aug.scale_range,
                mode=tuple("trilinear" if m == "bilinear" and spatial_dims == 3 else m for m in smooth), keep_size=True,
            )
        )
    if aug.flip_prob > 0:
        for axis in aug.flip_axes:
            chain.append(mt.RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=axis))
    if aug.intensity_prob > 0:
        chain.append(mt.RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=aug.intensity_prob))
        chain.append(mt.RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=aug.intensity_prob))
    chain.append(mt.EnsureTyped(keys=keys, track_meta=False))
    return chain
