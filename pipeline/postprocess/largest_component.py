"""Keep the largest connected component of each foreground class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent


def keep_largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Remove every component of ``classes`` but the largest (full connectivity: 26 neighbours in 3D, 8 in 2D),
    per class; removed voxels become background."""
    if not classes:
        return labels
    op = KeepLargestConnectedComponent(applied_labels=list(classes), independent=True, connectivity=labels.ndim)
    out = op(torch.as_tensor(labels[None].astype(np.int64)))
    return np.asarray(out[0].numpy(), dtype=labels.dtype)
