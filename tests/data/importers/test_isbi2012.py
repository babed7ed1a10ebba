"""Tests for the ISBI 2012 EM segmentation importer, on tiny files written here in the data set's real format."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from pipeline.data.importers import import_dataset
from pipeline.errors import DataError
from tests.data.importers.helpers import case_entry, check_manifest, data_of

# The message for a folder that is not in this layout (tests.data.importers.test_registry checks it).
WRONG_LAYOUT = r"no 'train-volume.tif' and 'train-labels.tif' found under .*ISBI 2012"


def test_isbi2012(tmp_path):
    src, out = tmp_path / "isbi", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 256, (5, 16, 18), dtype=np.uint8)
    labels = np.full((5, 16, 18), 255, dtype=np.uint8)
    labels[:, 8, :] = 0  # a horizontal membrane splits each slice in two cells
    labels[:, :, 0] = 0
    tifffile.imwrite(src / "train-volume.tif", volume)
    tifffile.imwrite(src / "train-labels.tif", labels)
    tifffile.imwrite(src / "test-volume.tif", volume[:2])
    doc = check_manifest(import_dataset("isbi2012", src, out), 5, keys=("image", "label", "instances"))
    assert doc["labels"] == {"0": "cell interior", "1": "membrane"}
    assert len(doc["unlabeled"]) == 2
    e = case_entry(doc, "isbi2012_03")
    np.testing.assert_array_equal(data_of(out / e["image"]), volume[3].T.astype(np.float32))
    label = data_of(out / e["label"])
    np.testing.assert_array_equal(label, (labels[3] == 0).T.astype(np.uint8))
    inst = data_of(out / e["instances"])
    assert inst.max() == 2 and np.all((inst > 0) == (label == 0))
    np.testing.assert_allclose(nib.load(str(out / e["image"])).header.get_zooms(), [4e-6, 4e-6], rtol=1e-5)


def test_isbi2012_shape_mismatch(tmp_path):
    src = tmp_path / "isbi"
    src.mkdir()
    tifffile.imwrite(src / "train-volume.tif", np.zeros((3, 8, 8), dtype=np.uint8))
    tifffile.imwrite(src / "train-labels.tif", np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="slice for slice"):
        import_dataset("isbi2012", src, tmp_path / "out")


def test_isbi2012_one_file_missing(tmp_path):
    src = tmp_path / "isbi"
    src.mkdir()
    tifffile.imwrite(src / "train-volume.tif", np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="'train-labels.tif'"):
        import_dataset("isbi2012", src, tmp_path / "out")
