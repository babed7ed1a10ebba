"""Tests for the Duke DME OCT importer, on tiny files written here in the data set's real format."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from pipeline.data.importers import import_dataset
from pipeline.errors import DataError
from tests.data.importers.helpers import SPLITS, case_entry, check_manifest, data_of

# The message for a folder that is not in this layout (tests.data.importers.test_registry checks it).
WRONG_LAYOUT = r"no 'Subject_NN.mat' found under .*2015_BOE_Chiu"


H, W, S = 40, 12, 4
ROWS = np.array([5, 8, 11, 14, 17, 25, 28, 31], dtype=np.float64)  # 1-based MATLAB rows


def write_duke(src: Path, subjects=(1, 2, 3)) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for n in subjects:
        images = (np.arange(H * W * S) % 251).astype(np.uint8).reshape(H, W, S)
        layers = np.full((8, W, S), np.nan)
        # B-scan 1: columns 2..9 annotated, column 5 partly missing -> longest run 6..9 (4 columns)
        layers[:, 2:10, 1] = ROWS[:, None]
        layers[3, 5, 1] = 0
        # B-scan 3: all columns, boundaries 4/5 crossing at column 0
        layers[:, :, 3] = ROWS[:, None] + np.arange(W)[None, :] % 2
        layers[4, 0, 3] = 12  # above boundary 3 (14): clipped to 14
        fluid = np.zeros((H, W, S))
        fluid[18:21, 7, 1] = 1  # inside the ONL of B-scan 1
        scipy.io.savemat(src / f"Subject_{n:02d}.mat",
                         {"images": images, "manualLayers1": layers, "manualFluid1": fluid,
                          "manualLayers2": layers, "manualFluid2": fluid})


def test_duke_dme(tmp_path):
    src, out = tmp_path / "2015_BOE_Chiu", tmp_path / "out"
    write_duke(src)
    manifest = import_dataset("duke-dme", src, out)
    assert manifest == out / "duke_dme.json"
    doc = check_manifest(manifest, 6, keys=("image", "label", "boundaries"))
    assert doc["spatial_dims"] == 2 and len(doc["labels"]) == 10 and doc["labels"]["9"] == "fluid"
    # split by subject: both B-scans of a subject are in the same split
    for split in SPLITS:
        subjects = {e["subject"] for e in doc[split]}
        assert len(doc[split]) == 2 * len(subjects)
    assert {e["id"] for s in SPLITS for e in doc[s]} == {f"subject{n:02d}_b{b:02d}" for n in (1, 2, 3) for b in (1, 3)}

    e = case_entry(doc, "subject02_b01")
    assert e["columns"] == [6, 10]
    image, label = data_of(out / e["image"]), data_of(out / e["label"])
    images = (np.arange(H * W * S) % 251).astype(np.uint8).reshape(H, W, S)
    assert image.shape == label.shape == (4, H)
    np.testing.assert_array_equal(image, images[:, 6:10, 1].T.astype(np.float32))
    bounds = np.load(out / e["boundaries"])
    np.testing.assert_array_equal(bounds, np.repeat((ROWS - 1)[:, None], 4, axis=1).astype(np.float32))
    col = label[0]  # column 6, no fluid
    expected = np.zeros(H, dtype=np.uint8)
    for b in ROWS - 1:
        expected[int(b):] += 1
    np.testing.assert_array_equal(col, expected)
    assert col[3] == 0 and col[4] == 1 and col[29] == 7 and col[30] == 8
    assert np.all(label[1, 18:21] == 9) and label[1, 17] != 9  # fluid at original column 7
    np.testing.assert_allclose(nib.load(str(out / e["image"])).header.get_zooms(), [0.01133, 0.00387], rtol=1e-5)

    e3 = case_entry(doc, "subject01_b03")
    b3 = np.load(out / e3["boundaries"])
    assert b3.shape == (8, W) and np.all(np.diff(b3, axis=0) >= 0)
    assert b3[4, 0] == b3[3, 0] == 13


def test_duke_dme_in_parent_folder_and_grader(tmp_path):
    write_duke(tmp_path / "dl" / "2015_BOE_Chiu", subjects=(4,))
    manifest = import_dataset("duke_dme", tmp_path / "dl", tmp_path / "out", grader=2)
    doc = json.loads(manifest.read_text())
    assert doc["source"]["grader"] == 2
    assert sum(len(doc[s]) for s in SPLITS) == 2


def test_duke_dme_missing_key(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    scipy.io.savemat(src / "Subject_01.mat", {"images": np.zeros((4, 4, 1), dtype=np.uint8)})
    with pytest.raises(DataError, match="manualLayers1"):
        import_dataset("duke-dme", src, tmp_path / "out")


def test_duke_dme_name_with_underscore(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "readme.txt").write_text("not a data set")
    with pytest.raises(DataError, match=r"no 'Subject_NN.mat' found under"):
        import_dataset("duke_dme", src, tmp_path / "out")
