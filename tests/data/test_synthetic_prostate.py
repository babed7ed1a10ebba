"""Tests for the deterministic synthetic prostate T2 generator."""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.synthetic_prostate import (
    best_threshold_dice,
    case_seed,
    make_prostate_case,
    write_prostate_case,
)
from pipeline.errors import DataError

SOURCE_SEED = 0
CASE_IDS = [f"case_{i:03d}" for i in range(10)]


@functools.lru_cache(maxsize=None)
def _case(case_id: str):
    return make_prostate_case(case_seed(SOURCE_SEED, case_id))


def _is_lps(affine: np.ndarray) -> bool:
    return nib.aff2axcodes(affine)[:2] == ("L", "P")


def _is_ras(affine: np.ndarray) -> bool:
    return nib.aff2axcodes(affine)[:2] == ("R", "A")


def _world_coords(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def test_same_seed_gives_identical_arrays():
    a = make_prostate_case(1234)
    b = make_prostate_case(1234)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_output_types_and_shapes():
    image, label, affine = _case(CASE_IDS[0])
    assert image.shape == label.shape == (128, 128, 20)
    assert image.dtype == np.float32
    assert label.dtype == np.uint8
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])
    assert np.isfinite(image).all() and (image >= 0).all()


def test_different_ids_give_different_images():
    assert case_seed(SOURCE_SEED, "case_000") != case_seed(SOURCE_SEED, "case_001")
    assert case_seed(SOURCE_SEED, "case_000") != case_seed(SOURCE_SEED + 1, "case_000")
    assert case_seed(SOURCE_SEED, "case_000") == case_seed(SOURCE_SEED, "case_000")
    assert not np.array_equal(_case("case_000")[0], _case("case_001")[0])


def test_labels_and_posterior_peripheral_zone_for_lps_and_ras():
    affines = {cid: _case(cid)[2] for cid in CASE_IDS}
    lps = next(cid for cid, a in affines.items() if _is_lps(a))
    ras = next(cid for cid, a in affines.items() if _is_ras(a))
    for cid in (lps, ras):
        _, label, affine = _case(cid)
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        pz_y = _world_coords(affine, label == 1)[:, 1].mean()
        tz_y = _world_coords(affine, label == 2)[:, 1].mean()
        assert pz_y < tz_y - 2.0, (cid, pz_y, tz_y)


def test_affines_spacing_orientation_and_obliquity():
    spacing = (0.6, 0.6, 3.6)
    affines = [_case(cid)[2] for cid in CASE_IDS]
    for affine in affines:
        np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing, rtol=1e-5)
        assert np.abs(affine[:3, 3]).max() > 1.0  # non-zero origin
    assert any(_is_lps(a) for a in affines)
    assert any(_is_ras(a) for a in affines)
    oblique = [a for a in affines if np.abs(a[:3, :3] - np.diag(np.diag(a[:3, :3]))).max() > 1e-3]
    assert oblique
    for a in affines:  # obliquity stays small (<~8 degrees)
        direction = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
        assert np.abs(np.diag(direction)).min() > np.cos(np.radians(9.0))


def test_custom_shape_and_spacing():
    image, label, affine = make_prostate_case(5, shape=(64, 64, 20), spacing=(1.2, 1.2, 3.6))
    assert image.shape == label.shape == (64, 64, 20)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), (1.2, 1.2, 3.6), rtol=1e-5)
    assert set(np.unique(label).tolist()) == {0, 1, 2}


def test_write_prostate_case(tmp_path):
    entry = {"id": "case_007", "image": "images/case_007.nii.gz", "label": "labels/case_007.nii.gz"}
    source = {"seed": 3, "shape": [64, 48, 12], "spacing": [1.0, 1.0, 3.0]}
    write_prostate_case(tmp_path, entry, source)
    expected = make_prostate_case(case_seed(3, "case_007"), shape=(64, 48, 12), spacing=(1.0, 1.0, 3.0))
    img = nib.load(tmp_path / entry["image"])
    lab = nib.load(tmp_path / entry["label"])
    for nii, array, dtype in ((img, expected[0], np.float32), (lab, expected[1], np.uint8)):
        assert nii.shape == (64, 48, 12)
        assert nii.get_data_dtype() == dtype
        np.testing.assert_array_equal(np.asanyarray(nii.dataobj), array)
        affine = expected[2]
        assert np.allclose(nii.affine, affine)
        sform, scode = nii.header.get_sform(coded=True)
        qform, qcode = nii.header.get_qform(coded=True)
        assert int(scode) == 1 and int(qcode) == 1
        assert np.allclose(sform, affine)
        assert np.allclose(qform, affine)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["images/case_007.nii.gz", "labels/case_007.nii.gz"]


@pytest.mark.parametrize(
    ("entry", "source"),
    [
        ({"id": "a", "image": "a.nii.gz"}, {"seed": 1}),
        ({"id": "a", "image": "a.nii.gz", "label": "b.nii.gz"}, {"seed": "1"}),
        ({"id": "a", "image": "a.nii.gz", "label": "b.nii.gz"}, {"seed": 1, "shape": [10, 10]}),
        ({"id": "a", "image": "a.nii.gz", "label": "b.nii.gz"}, {"seed": 1, "spacing": [1.0, -1.0, 3.0]}),
    ],
)
def test_write_rejects_bad_input(tmp_path, entry, source):
    with pytest.raises(DataError):
        write_prostate_case(tmp_path, entry, source)


def test_best_threshold_dice_helper():
    image = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert best_threshold_dice(image, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(1.0)
    assert best_threshold_dice(image, np.array([1, 1, 0, 0, 0, 0])) == pytest.approx(1.0)
    # foreground in the middle: best is a half-line holding it plus one neighbour side
    assert best_threshold_dice(image, np.array([0, 0, 1, 1, 0, 0])) == pytest.approx(2 * 2 / (2 + 4))
    with pytest.raises(ValueError):
        best_threshold_dice(image, np.zeros(6))


def test_single_threshold_cannot_segment_the_gland():
    cases = [_case(cid) for cid in CASE_IDS[:8]]
    per_case = [best_threshold_dice(image, label) for image, label, _ in cases]
    assert float(np.mean(per_case)) < 0.6
    assert max(per_case) < 0.6
    pooled = best_threshold_dice(
        np.concatenate([c[0].ravel() for c in cases]), np.concatenate([c[1].ravel() for c in cases])
    )
    assert pooled < 0.6
