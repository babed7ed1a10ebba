"""keep_largest_component matches MONAI's KeepLargestConnectedComponent (full connectivity, per class)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import KeepLargestConnectedComponent
from scipy.ndimage import gaussian_filter

from pipeline.postprocess.largest_component import keep_largest_component


@pytest.mark.parametrize("shape", [(30, 26, 12), (64, 48)])
@pytest.mark.parametrize("classes", [[1, 2], [2]])
def test_matches_monai(shape, classes):
    rng = np.random.default_rng(len(shape) + len(classes))
    field = gaussian_filter(rng.normal(size=shape), 1.5)
    labels = np.digitize(field, np.quantile(field, [0.6, 0.85])).astype(np.uint8)  # many blobs of 1 and 2
    ours = keep_largest_component(labels, classes)
    monai = KeepLargestConnectedComponent(applied_labels=classes, independent=True, connectivity=len(shape))(
        torch.as_tensor(labels[None].astype(np.int64)))[0].numpy()
    assert ours.dtype == np.uint8 and np.array_equal(ours, monai)
    assert (ours != labels).any()  # something was removed
