"""Tests for the RETOUCH OCT fluid importer, on tiny files written here in the data set's real format."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.data.importers import import_dataset
from pipeline.errors import DataError
from tests.data.importers.helpers import case_entry, check_manifest

# The message for a folder that is not in this layout (tests.data.importers.test_registry checks it).
WRONG_LAYOUT = r"no '<volume>/oct.mhd' found under .*RETOUCH"


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
    doc = check_manifest(import_dataset("retouch", src, out), 3)
    assert doc["spatial_dims"] == 3 and doc["labels"]["3"] == "PED"
    assert [u["id"] for u in doc["unlabeled"]] == ["RETOUCH-TestSet-Cirrus_TEST001"]
    for cid, (arr, ref, oct_img, vendor) in truth.items():
        e = case_entry(doc, cid)
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
