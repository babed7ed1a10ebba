"""Tests for the Cell Tracking Challenge importer, on tiny files written here in the data set's real format."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from pipeline.data.importers import import_dataset
from pipeline.errors import DataError
from tests.data.importers.helpers import case_entry, check_manifest, data_of

# The message for a folder that is not in this layout (tests.data.importers.test_registry checks it).
WRONG_LAYOUT = r"no '<seq>_GT/SEG/man_segNNN.tif' found under .*Cell Tracking Challenge"


def test_ctc_2d_sparse(tmp_path):
    src, out = tmp_path / "Fluo-N2DH-TEST", tmp_path / "out"
    rng = np.random.default_rng(0)
    gts = {}
    for seq in ("01", "02"):
        (src / seq).mkdir(parents=True)
        (src / f"{seq}_GT" / "SEG").mkdir(parents=True)
        (src / f"{seq}_GT" / "TRA").mkdir()
        for t in range(5):
            tifffile.imwrite(src / seq / f"t{t:03d}.tif", rng.integers(0, 4000, (16, 20), dtype=np.uint16))
        for t in (0, 3):  # sparse annotation
            gt = np.zeros((16, 20), dtype=np.uint16)
            gt[2:6, 3:9] = 7
            gt[9:14, 10:15] = 12
            tifffile.imwrite(src / f"{seq}_GT" / "SEG" / f"man_seg{t:03d}.tif", gt)
            gts[f"{seq}_t{t:03d}"] = gt
    manifest = import_dataset("ctc", src, out, spacing=[0.0002, 0.0002])
    doc = check_manifest(manifest, 4, keys=("image", "label", "instances"))
    assert doc["spatial_dims"] == 2
    for cid, gt in gts.items():
        e = case_entry(doc, cid)
        seq, t = cid.split("_t")
        raw = tifffile.imread(src / seq / f"t{t}.tif")
        np.testing.assert_array_equal(data_of(out / e["image"]), raw.T.astype(np.float32))
        np.testing.assert_array_equal(data_of(out / e["instances"]), gt.T)
        np.testing.assert_array_equal(data_of(out / e["label"]), (gt > 0).T)
        np.testing.assert_allclose(nib.load(str(out / e["image"])).header.get_zooms(), [0.0002, 0.0002])


def test_ctc_3d_single_slices(tmp_path):
    src, out = tmp_path / "Fluo-N3DH-TEST", tmp_path / "out"
    (src / "01").mkdir(parents=True)
    (src / "01_GT" / "SEG").mkdir(parents=True)
    stack = np.arange(2 * 6 * 10 * 12, dtype=np.uint16).reshape(2, 6, 10, 12)
    for t in range(2):
        tifffile.imwrite(src / "01" / f"t{t:03d}.tif", stack[t])
    slices = [(0, 2), (0, 4), (1, 1)]
    for t, z in slices:
        gt = np.zeros((10, 12), dtype=np.uint16)
        gt[1:4, 2:6] = z + 1
        tifffile.imwrite(src / "01_GT" / "SEG" / f"man_seg{t:03d}_{z:03d}.tif", gt)
    doc = check_manifest(import_dataset("ctc", src, out), 3)
    assert doc["spatial_dims"] == 2
    for t, z in slices:
        e = case_entry(doc, f"01_t{t:03d}_z{z:03d}")
        np.testing.assert_array_equal(data_of(out / e["image"]), stack[t, z].T.astype(np.float32))
        assert set(np.unique(data_of(out / e["instances"])).tolist()) == {0, z + 1}


def test_ctc_3d_full_frames(tmp_path):
    src, out = tmp_path / "Fluo-N3DH-FULL", tmp_path / "out"
    (src / "01").mkdir(parents=True)
    (src / "01_GT" / "SEG").mkdir(parents=True)
    for t in range(3):
        tifffile.imwrite(src / "01" / f"t{t:03d}.tif", np.full((4, 8, 9), t, dtype=np.uint8))
        gt = np.zeros((4, 8, 9), dtype=np.uint16)
        gt[1:3, 2:5, 3:7] = 1
        tifffile.imwrite(src / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", gt)
    # a single-slice annotation is skipped when full 3D frames exist
    tifffile.imwrite(src / "01_GT" / "SEG" / "man_seg001_002.tif", np.ones((8, 9), dtype=np.uint16))
    doc = check_manifest(import_dataset("ctc", src, out, spacing=[0.001, 0.001, 0.002]), 3)
    assert doc["spatial_dims"] == 3 and "1 single-slice" in doc["note"]
    e = case_entry(doc, "01_t002")
    label = data_of(out / e["label"])
    assert label.shape == (9, 8, 4)  # (X, Y, Z)
    assert label[4, 3, 1] == 1 and label[0, 0, 0] == 0
    assert e["spacing"] == [0.001, 0.001, 0.002]


def test_ctc_missing_frame(tmp_path):
    src = tmp_path / "ds"
    (src / "01").mkdir(parents=True)
    (src / "01_GT" / "SEG").mkdir(parents=True)
    tifffile.imwrite(src / "01_GT" / "SEG" / "man_seg005.tif", np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(DataError, match="t005.tif"):
        import_dataset("ctc", src, tmp_path / "out")
