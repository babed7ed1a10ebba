"""Keep the largest connected component of each foreground class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Remove every component of ``classes`` but the largest (full connectivity: 26 neighbours in 3D, 8 in 2D),
    per class; removed voxels become background.

    Works on one class mask at a time (a bool mask and an int32 component map), so a 512×512×300 label map needs
    well under 1 GB; MONAI's ``KeepLargestConnectedComponent`` wants an int64 copy first.
    """
    if not classes:
        return labels
    out = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for c in classes:
        mask = labels == c
        components, n = ndimage.label(mask, structure=structure)
        if n > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[mask & (components != int(np.argmax(sizes)))] = 0
        del components, mask
    return out
