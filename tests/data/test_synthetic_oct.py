"""Tests for the deterministic synthetic OCT B-scan generator."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.manifest import load_manifest
from pipeline.data.synthetic_oct import (
    CENTRAL_THICKNESS_UM,
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    FLUID,
    case_seed,
    fill_layers,
    make_oct_case,
    register,
    write_oct_case,
)
from pipeline.errors import DataError
from pipeline.registry import Registry

REPO = Path(__file__).resolve().parents[2]
AXIAL_UM = DEFAULT_SPACING[1] * 1000.0
LATERAL_MM = DEFAULT_SPACING[0]


@functools.lru_cache(maxsize=None)
def _case(seed: int, fluid: float = 0.5):
    return make_oct_case(seed, fluid_probability=fluid)


def test_deterministic():
    a = _case(11)
    b = make_oct_case(11)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], _case(12)[0])
    assert case_seed(0, "a") != case_seed(0, "b") != case_seed(1, "a")


def test_types_and_shapes():
    image, label, bounds, affine = _case(0)
    assert image.shape == label.shape == DEFAULT_SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8 and bounds.dtype == np.float32
    assert bounds.shape == (8, DEFAULT_SHAPE[0])
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose(np.diag(affine)[:2], DEFAULT_SPACING)


@pytest.mark.parametrize("seed", range(4))
def test_boundaries_ordered_and_labels_follow_them(seed):
    image, label, bounds, _ = _case(seed)
    assert np.all(np.diff(bounds, axis=0) >= 0), "boundaries must be non-decreasing in Duke order"
    assert bounds.min() > 0 and bounds.max() < DEFAULT_SHAPE[1] - 1
    values = set(np.unique(label).tolist())
    assert values <= set(range(10))
    layers = fill_layers(bounds, DEFAULT_SHAPE[1])
    not_fluid = label != FLUID
    np.testing.assert_array_equal(label[not_fluid], layers[not_fluid])
    # every layer present somewhere (parafoveally all 7 layers have width)
    assert set(range(9)) <= set(np.unique(layers).tolist())
    # the labels increase down each A-scan (outside fluid)
    assert np.all(np.diff(layers.astype(int), axis=1) >= 0)


@pytest.mark.parametrize("seed", range(4))
def test_foveal_pit(seed):
    _, _, bounds, _ = _case(seed, 0.0)
    thickness_um = (bounds[7] - bounds[0]) * AXIAL_UM
    centre = int(np.argmin(thickness_um))
    width = DEFAULT_SHAPE[0]
    assert 0.25 * width < centre < 0.75 * width, "the pit sits near the middle of the scan"
    assert abs(thickness_um[centre] - CENTRAL_THICKNESS_UM) < 40
    # ~1 mm away on either side the retina is clearly thicker
    away = int(round(1.0 / LATERAL_MM))
    sides = [thickness_um[c] for c in (centre - away, centre + away) if 0 <= c < width]
    assert sides and min(sides) > thickness_um[centre] + 30
    # inner layers (NFL .. OPL) nearly vanish at the pit centre
    inner_um = (bounds[4, centre] - bounds[0, centre]) * AXIAL_UM
    assert inner_um < 40


def test_central_thickness_without_fluid():
    values = []
    for seed in range(6):
        _, _, bounds, _ = _case(seed, 0.0)
        values.append(float(((bounds[7] - bounds[0]) * AXIAL_UM).min()))
    assert abs(np.mean(values) - CENTRAL_THICKNESS_UM) < 20


def test_fluid():
    for seed in range(3):
        _, label, _, _ = _case(seed, 0.0)
        assert not (label == FLUID).any()
    with_fluid = 0
    for seed in range(4):
        _, label, bounds, _ = _case(seed, 1.0)
        fluid = label == FLUID
        with_fluid += bool(fluid.any())
        rows = np.arange(label.shape[1])[None, :]
        # fluid lies inside the retina: below the ILM and above Bruch's membrane
        assert not (fluid & ((rows < bounds[0][:, None]) | (rows >= bounds[7][:, None]))).any()
    assert with_fluid >= 3


def test_reflectivity_contrast():
    image, label, _, _ = _case(1, 0.0)

    def mean(k):
        return float(image[label == k].mean())

    assert mean(1) > mean(5) + 0.1  # NFL bright, ONL dark
    assert mean(7) > mean(5) + 0.1  # RPE bright
    assert mean(0) < mean(5)  # vitreous darkest


def test_write_case(tmp_path):
    entry = {"id": "oct_x", "image": "imagesTr/oct_x.nii.gz", "label": "labelsTr/oct_x.nii.gz",
             "boundaries": "boundariesTr/oct_x.npy"}
    source = {"seed": 4, "fluid_probability": 1.0}
    write_oct_case(tmp_path, entry, source)
    img = nib.load(tmp_path / entry["image"])
    lab = nib.load(tmp_path / entry["label"])
    assert img.shape == lab.shape == DEFAULT_SHAPE
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.header.get_zooms(), DEFAULT_SPACING, rtol=1e-6)
    np.testing.assert_allclose(img.affine, lab.affine)
    bounds = np.load(tmp_path / entry["boundaries"])
    expected = make_oct_case(case_seed(4, "oct_x"), fluid_probability=1.0)
    np.testing.assert_array_equal(bounds, expected[2])
    np.testing.assert_array_equal(np.asarray(lab.dataobj), expected[1])
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "source, message",
    [({}, "seed"), ({"seed": 1, "shape": [64]}, "shape"), ({"seed": 1, "fluid_probability": 2}, "fluid")],
)
def test_bad_source(tmp_path, source, message):
    entry = {"id": "o", "image": "o.nii.gz", "label": "l.nii.gz"}
    with pytest.raises(DataError, match=message):
        write_oct_case(tmp_path, entry, source)


def test_bad_boundaries_path(tmp_path):
    entry = {"id": "o", "image": "o.nii.gz", "label": "l.nii.gz", "boundaries": "b.json"}
    with pytest.raises(DataError, match=r"\.npy"):
        write_oct_case(tmp_path, entry, {"seed": 0})


def test_register_and_demo_manifest(tmp_path):
    reg = Registry("generator")
    register(reg)
    assert reg.get("synthetic_oct") is write_oct_case
    path = REPO / "data_manifests" / "oct_demo.json"
    doc = json.loads(path.read_text())
    assert doc["source"]["generator"] == "synthetic_oct" and doc["spatial_dims"] == 2
    manifest = load_manifest(path)
    assert manifest.num_classes == 10
    assert {k: len(v) for k, v in manifest.cases.items()} == {"training": 24, "validation": 4, "test": 8}
    entry = doc["validation"][0]
    assert entry["boundaries"].endswith(".npy")
    reg.get("synthetic_oct")(tmp_path, entry, doc["source"])
    assert np.load(tmp_path / entry["boundaries"]).shape == (8, doc["source"]["shape"][0])
    np.testing.assert_allclose(nib.load(tmp_path / entry["image"]).header.get_zooms(), entry["spacing"], rtol=1e-6)


def test_volume_of_bscans_shares_anatomy_with_the_pit_at_the_centre(tmp_path):
    import nibabel as nib

    from pipeline.data.synthetic_oct import make_oct_volume, write_oct_case

    image, label, bounds, affine = make_oct_volume(3, (96, 128, 7), (0.01133, 0.00387, 0.1))
    assert image.shape == label.shape == (96, 128, 7) and bounds.shape == (8, 96, 7)
    np.testing.assert_allclose(np.diag(affine), [0.01133, 0.00387, 0.1, 1.0])
    thickness = (bounds[7] - bounds[0]).min(axis=0)  # thinnest retina per B-scan: the pit
    assert thickness.argmin() == 3 and thickness[0] > thickness[3] + 5 and thickness[-1] > thickness[3] + 5
    assert not np.array_equal(image[..., 2], image[..., 4])  # speckle differs per B-scan
    again, *_ = make_oct_volume(3, (96, 128, 7), (0.01133, 0.00387, 0.1))
    np.testing.assert_array_equal(again, image)
    entry = {"id": "v0", "image": "i/v0.nii.gz", "label": "l/v0.nii.gz"}
    write_oct_case(tmp_path, entry, {"seed": 1, "shape": [64, 96, 5], "spacing": [0.01, 0.004, 0.05]})
    assert nib.load(tmp_path / "l" / "v0.nii.gz").shape == (64, 96, 5)
