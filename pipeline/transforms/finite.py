"""NaN and infinite voxels in the preprocessing chain: :class:`FillNonFinited` fills them in a MONAI dictionary
(``preprocess.nan_policy: fill``). Counting, filling and the policy's reasons are in :mod:`pipeline.io.finite`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from pipeline.errors import DataError
from pipeline.io.finite import count_non_finite, fill_non_finite, fill_tensor_, no_finite_message  # noqa: F401


class FillNonFinited(MapTransform):
    """MONAI dictionary transform: NaN and ±inf voxels of channel-first images (tensors, ``MetaTensor`` or arrays)
    take the smallest finite value of their channel; the geometry and metadata are kept. Runs before resampling,
    which would spread a NaN to its neighbours.

    Raises:
        DataError: a channel without one finite voxel (named by the image's ``filename_or_obj``).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fill(d[key], key)
        return d

    @staticmethod
    def fill(image: Any, key: Hashable = "image") -> Any:
        """One channel-first image, filled (a copy) or as it was when all its voxels are finite."""
        meta = getattr(image, "meta", None) or {}
        name = str(meta.get("filename_or_obj") or key)
        if not isinstance(image, torch.Tensor):
            return fill_non_finite(np.asarray(image), 0, name)[0]
        if not image.is_floating_point() or bool(torch.isfinite(image).all()):
            return image
        out = image.clone()  # a MetaTensor's clone keeps its affine, meta and applied operations
        _, empty = fill_tensor_(out.as_tensor() if hasattr(out, "as_tensor") else out)
        if empty:
            raise DataError(no_finite_message(name, empty, out.shape[0]))
        return out
