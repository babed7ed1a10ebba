"""Tests for the 2018 Data Science Bowl importer, on tiny files written here in the data set's real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.importers import import_dataset
from pipeline.errors import DataError
from tests.data.importers.helpers import case_entry, check_manifest, data_of

# The message for a folder that is not in this layout (tests.data.importers.test_registry checks it).
WRONG_LAYOUT = r"no '<id>/images/<id>.png' found under .*DSB 2018 stage1_train"


def write_dsb(src: Path, n: int = 4, h: int = 20, w: int = 24) -> dict:
    truth = {}
    for i in range(n):
        cid = f"{i:02x}abcdef"
        (src / cid / "images").mkdir(parents=True)
        (src / cid / "masks").mkdir()
        rgba = np.zeros((h, w, 4), dtype=np.uint8)
        rgba[..., 3] = 255
        rgba[..., :3] = 10 + i
        masks = []
        for k, (r, c) in enumerate([(3, 4), (12, 15), (5, 16)][: 2 + i % 2]):
            m = np.zeros((h, w), dtype=np.uint8)
            m[r:r + 4, c:c + 5] = 255
            rgba[m > 0, :3] = 200
            masks.append(m)
            Image.fromarray(m).save(src / cid / "masks" / f"m{k:02d}.png")
        Image.fromarray(rgba).save(src / cid / "images" / f"{cid}.png")
        truth[cid] = (rgba, masks)
    # a test-set style folder without masks
    (src / "unlabelled" / "images").mkdir(parents=True)
    Image.fromarray(np.full((h, w, 4), 99, dtype=np.uint8)).save(
        src / "unlabelled" / "images" / "unlabelled.png")
    return truth


def test_dsb2018(tmp_path):
    src, out = tmp_path / "stage1_train", tmp_path / "out"
    truth = write_dsb(src)
    manifest = import_dataset("dsb2018", src, out)
    assert manifest == out / "dsb2018.json"
    doc = check_manifest(manifest, len(truth), keys=("image", "label", "instances"))
    assert doc["spatial_dims"] == 2 and doc["labels"] == {"0": "background", "1": "nucleus"}
    assert [u["id"] for u in doc["unlabeled"]] == ["unlabelled"]
    for cid, (rgba, masks) in truth.items():
        e = case_entry(doc, cid)
        image, label, inst = (data_of(out / e[k]) for k in ("image", "label", "instances"))
        assert image.dtype == np.float32 and label.dtype == np.uint8 and inst.dtype == np.uint16
        assert image.shape == (rgba.shape[1], rgba.shape[0])  # (X, Y)
        np.testing.assert_allclose(image, rgba[..., :3].mean(-1).T)
        expected = np.zeros(rgba.shape[:2], dtype=np.uint16)
        for k, m in enumerate(masks, start=1):
            expected[m > 0] = k
        np.testing.assert_array_equal(inst, expected.T)
        np.testing.assert_array_equal(label, (expected > 0).T.astype(np.uint8))
        assert e["spacing"] == [1.0, 1.0]


def test_dsb2018_test_set_only(tmp_path):
    src = tmp_path / "stage1_test"
    (src / "abc" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8)).save(src / "abc" / "images" / "abc.png")
    with pytest.raises(DataError, match="masks"):
        import_dataset("dsb2018", src, tmp_path / "out")


def test_dsb2018_mask_shape_mismatch(tmp_path):
    src = tmp_path / "s"
    write_dsb(src, n=1)
    cid = next(p.name for p in src.iterdir() if p.name != "unlabelled")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(src / cid / "masks" / "zz.png")
    with pytest.raises(DataError, match="shape"):
        import_dataset("dsb2018", src, tmp_path / "out", spacing=[0.001, 0.001])
