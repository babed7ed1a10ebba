"""Tests for the public data set importers, on tiny files written here in each data set's real format."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io
import SimpleITK as sitk
import tifffile
from monai.data import load_decathlon_datalist
from PIL import Image

from pipeline.data.importers import IMPORTERS, import_dataset, split_counts
from pipeline.data.manifest import load_manifest
from pipeline.errors import DataError

SPLITS = ("training", "validation", "test")


def _data(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _check_manifest(path: Path, n_cases: int, keys=("image", "label")) -> dict:
    """Readable by MONAI and by our loader; every case in exactly one split; files exist."""
    doc = json.loads(path.read_text())
    ids = []
    for split in SPLITS:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split)
        assert len(items) == len(doc[split])
        for item in items:
            for k in keys:
                assert Path(item[k]).is_file(), (split, k, item[k])
        ids += [e["id"] for e in doc[split]]
    assert len(ids) == len(set(ids)) == n_cases
    if n_cases >= 3:
        assert all(doc[s] for s in SPLITS)
    load_manifest(path)
    return doc


def _case(doc: dict, case_id: str) -> dict:
    for split in SPLITS:
        for e in doc[split]:
            if e["id"] == case_id:
                return e
    raise KeyError(case_id)


def test_split_counts():
    assert split_counts(2) == (2, 0, 0)
    assert split_counts(3) == (1, 1, 1)
    assert split_counts(10) == (7, 1, 2)
    assert split_counts(30) == (21, 3, 6)


def test_unknown_name_and_missing_source(tmp_path):
    with pytest.raises(DataError, match="known: ctc"):
        import_dataset("dsb2019", tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        import_dataset("dsb2018", tmp_path / "nope", tmp_path / "out")


@pytest.mark.parametrize(
    "name, message",
    [
        ("dsb2018", r"no '<id>/images/<id>.png' found under .*DSB 2018 stage1_train"),
        ("ctc", r"no '<seq>_GT/SEG/man_segNNN.tif' found under .*Cell Tracking Challenge"),
        ("isbi2012", r"no 'train-volume.tif' and 'train-labels.tif' found under .*ISBI 2012"),
        ("duke-dme", r"no 'Subject_NN.mat' found under .*2015_BOE_Chiu"),
        ("duke_dme", r"no 'Subject_NN.mat' found under"),
        ("retouch", r"no '<volume>/oct.mhd' found under .*RETOUCH"),
    ],
)
def test_wrong_layout(tmp_path, name, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "readme.txt").write_text("not a data set")
    with pytest.raises(DataError, match=message):
        import_dataset(name, src, tmp_path / "out")


def test_every_name_dispatches():
    assert set(IMPORTERS) == {"dsb2018", "ctc", "isbi2012", "duke-dme", "retouch"}


# ----------------------------------------------------------------------------------------------------------------------
# DSB 2018
# ----------------------------------------------------------------------------------------------------------------------


def _write_dsb(src: Path, n: int = 4, h: int = 20, w: int = 24) -> dict:
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
    truth = _write_dsb(src)
    manifest = import_dataset("dsb2018", src, out)
    assert manifest == out / "dsb2018.json"
    doc = _check_manifest(manifest, len(truth), keys=("image", "label", "instances"))
    assert doc["spatial_dims"] == 2 and doc["labels"] == {"0": "background", "1": "nucleus"}
    assert [u["id"] for u in doc["unlabeled"]] == ["unlabelled"]
    for cid, (rgba, masks) in truth.items():
        e = _case(doc, cid)
        image, label, inst = (_data(out / e[k]) for k in ("image", "label", "instances"))
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
    _write_dsb(src, n=1)
    cid = next(p.name for p in src.iterdir() if p.name != "unlabelled")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(src / cid / "masks" / "zz.png")
    with pytest.raises(DataError, match="shape"):
        import_dataset("dsb2018", src, tmp_path / "out", spacing=[0.001, 0.001])


# ----------------------------------------------------------------------------------------------------------------------
# Cell Tracking Challenge
# ----------------------------------------------------------------------------------------------------------------------


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
    doc = _check_manifest(manifest, 4, keys=("image", "label", "instances"))
    assert doc["spatial_dims"] == 2
    for cid, gt in gts.items():
        e = _case(doc, cid)
        seq, t = cid.split("_t")
        raw = tifffile.imread(src / seq / f"t{t}.tif")
        np.testing.assert_array_equal(_data(out / e["image"]), raw.T.astype(np.float32))
        np.testing.assert_array_equal(_data(out / e["instances"]), gt.T)
        np.testing.assert_array_equal(_data(out / e["label"]), (gt > 0).T)
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
    doc = _check_manifest(import_dataset("ctc", src, out), 3)
    assert doc["spatial_dims"] == 2
    for t, z in slices:
        e = _case(doc, f"01_t{t:03d}_z{z:03d}")
        np.testing.assert_array_equal(_data(out / e["image"]), stack[t, z].T.astype(np.float32))
        assert set(np.unique(_data(out / e["instances"])).tolist()) == {0, z + 1}


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
    doc = _check_manifest(import_dataset("ctc", src, out, spacing=[0.001, 0.001, 0.002]), 3)
    assert doc["spatial_dims"] == 3 and "1 single-slice" in doc["note"]
    e = _case(doc, "01_t002")
    label = _data(out / e["label"])
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


# ----------------------------------------------------------------------------------------------------------------------
# ISBI 2012
# ----------------------------------------------------------------------------------------------------------------------


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
    doc = _check_manifest(import_dataset("isbi2012", src, out), 5, keys=("image", "label", "instances"))
    assert doc["labels"] == {"0": "cell interior", "1": "membrane"}
    assert len(doc["unlabeled"]) == 2
    e = _case(doc, "isbi2012_03")
    np.testing.assert_array_equal(_data(out / e["image"]), volume[3].T.astype(np.float32))
    label = _data(out / e["label"])
    np.testing.assert_array_equal(label, (labels[3] == 0).T.astype(np.uint8))
    inst = _data(out / e["instances"])
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


# ----------------------------------------------------------------------------------------------------------------------
# Duke DME
# ----------------------------------------------------------------------------------------------------------------------

H, W, S = 40, 12, 4
ROWS = np.array([5, 8, 11, 14, 17, 25, 28, 31], dtype=np.float64)  # 1-based MATLAB rows


def _write_duke(src: Path, subjects=(1, 2, 3)) -> None:
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
    _write_duke(src)
    manifest = import_dataset("duke-dme", src, out)
    assert manifest == out / "duke_dme.json"
    doc = _check_manifest(manifest, 6, keys=("image", "label", "boundaries"))
    assert doc["spatial_dims"] == 2 and len(doc["labels"]) == 10 and doc["labels"]["9"] == "fluid"
    # split by subject: both B-scans of a subject are in the same split
    for split in SPLITS:
        subjects = {e["subject"] for e in doc[split]}
        assert len(doc[split]) == 2 * len(subjects)
    assert {e["id"] for s in SPLITS for e in doc[s]} == {f"subject{n:02d}_b{b:02d}" for n in (1, 2, 3) for b in (1, 3)}

    e = _case(doc, "subject02_b01")
    assert e["columns"] == [6, 10]
    image, label = _data(out / e["image"]), _data(out / e["label"])
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

    e3 = _case(doc, "subject01_b03")
    b3 = np.load(out / e3["boundaries"])
    assert b3.shape == (8, W) and np.all(np.diff(b3, axis=0) >= 0)
    assert b3[4, 0] == b3[3, 0] == 13


def test_duke_dme_in_parent_folder_and_grader(tmp_path):
    _write_duke(tmp_path / "dl" / "2015_BOE_Chiu", subjects=(4,))
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


# ----------------------------------------------------------------------------------------------------------------------
# RETOUCH
# ----------------------------------------------------------------------------------------------------------------------


def _itk(arr_zyx: np.ndarray, spacing, origin, direction) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _lps_to_ras_affine(img: sitk.Image) -> np.ndarray:
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    aff[:3, :3] = flip @ d @ np.diag(img.GetSpacing())
    aff[:3, 3] = flip @ np.asarray(img.GetOrigin())
    return aff


def _write_retouch(src: Path) -> dict:
    rng = np.random.default_rng(2)
    truth = {}
    vendors = {"Cirrus": np.uint8, "Spectralis": np.uint16, "Topcon": np.uint8}
    direction = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0)  # a non-identity orientation
    for i, (vendor, dtype) in enumerate(vendors.items()):
        vol = src / f"RETOUCH-TrainingSet-{vendor}" / f"TRAIN{i + 1:03d}"
        vol.mkdir(parents=True)
        arr = rng.integers(0, 200, (5, 12, 8)).astype(dtype)  # (z, y, x)
        ref = np.zeros((5, 12, 8), dtype=np.uint8)
        ref[1, 3:5, 2:4] = 1
        ref[2, 6:8, 1:3] = 2
        ref[3, 9:10, 5:7] = 3
        spacing = (0.0117, 0.0039, 0.047 + i * 0.01)
        origin = (1.0 + i, -2.0, 3.0)
        oct_img = _itk(arr, spacing, origin, direction)
        sitk.WriteImage(oct_img, str(vol / "oct.mhd"))
        sitk.WriteImage(_itk(ref, spacing, origin, direction), str(vol / "reference.mhd"))
        truth[f"RETOUCH-TrainingSet-{vendor}_TRAIN{i + 1:03d}"] = (arr, ref, oct_img, vendor)
    test = src / "RETOUCH-TestSet-Cirrus" / "TEST001"
    test.mkdir(parents=True)
    sitk.WriteImage(_itk(np.zeros((2, 4, 4), np.uint8), (1, 1, 1), (0, 0, 0), direction), str(test / "oct.mhd"))
    return truth


def test_retouch(tmp_path):
    src, out = tmp_path / "retouch", tmp_path / "out"
    truth = _write_retouch(src)
    doc = _check_manifest(import_dataset("retouch", src, out), 3)
    assert doc["spatial_dims"] == 3 and doc["labels"]["3"] == "PED"
    assert [u["id"] for u in doc["unlabeled"]] == ["RETOUCH-TestSet-Cirrus_TEST001"]
    for cid, (arr, ref, oct_img, vendor) in truth.items():
        e = _case(doc, cid)
        assert e["vendor"] == vendor
        img_nii, lab_nii = nib.load(str(out / e["image"])), nib.load(str(out / e["label"]))
        assert img_nii.get_data_dtype() == np.float32 and lab_nii.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(img_nii.dataobj), arr.transpose(2, 1, 0).astype(np.float32))
        np.testing.assert_array_equal(np.asarray(lab_nii.dataobj), ref.transpose(2, 1, 0))
        np.testing.assert_allclose(img_nii.affine, _lps_to_ras_affine(oct_img), atol=1e-4)
        np.testing.assert_allclose(lab_nii.affine, img_nii.affine, atol=1e-6)
        np.testing.assert_allclose(e["spacing"], oct_img.GetSpacing(), rtol=1e-6)


def test_retouch_bad_reference(tmp_path):
    src = tmp_path / "r" / "TRAIN001"
    src.mkdir(parents=True)
    geometry = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(_itk(np.zeros((2, 4, 4), np.uint8), *geometry), str(src / "oct.mhd"))
    sitk.WriteImage(_itk(np.full((2, 4, 4), 7, np.uint8), *geometry), str(src / "reference.mhd"))
    with pytest.raises(DataError, match=r"values \[7\]"):
        import_dataset("retouch", tmp_path / "r", tmp_path / "out")
    (src / "reference.mhd").unlink()
    with pytest.raises(DataError, match="reference.mhd"):
        import_dataset("retouch", tmp_path / "r", tmp_path / "out")


def test_retouch_missing_raw(tmp_path):
    src = tmp_path / "r" / "TRAIN001"
    src.mkdir(parents=True)
    sitk.WriteImage(_itk(np.zeros((2, 4, 4), np.uint8), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                    str(src / "oct.mhd"))
    for raw in src.glob("*.raw"):
        raw.unlink()
    with pytest.raises(DataError, match="cannot read"):
        import_dataset("retouch", tmp_path / "r", tmp_path / "out")


def test_import_command_rejects_wrong_layout(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["data", "import", "dsb2018", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "DSB 2018" in err and "Traceback" not in err
