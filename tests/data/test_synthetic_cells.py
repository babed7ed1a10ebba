"""Tests for the deterministic synthetic nuclei generator (2D and 3D)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.data.manifest import load_manifest
from pipeline.data.synthetic_cells import (
    DEFAULT_SPACING_2D,
    DEFAULT_SPACING_3D,
    case_seed,
    make_cells_case,
    register,
    write_cells_2d_case,
    write_cells_3d_case,
)
from pipeline.data.synthetic_prostate import best_threshold_dice
from pipeline.errors import DataError
from pipeline.registry import Registry

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _case(seed: int, ndim: int, boundary: bool = False):
    shape = (128, 128) if ndim == 2 else (64, 64, 24)
    return make_cells_case(seed, shape, boundary_class=boundary)


@pytest.mark.parametrize("ndim", [2, 3])
def test_deterministic(ndim):
    a = _case(5, ndim)
    b = make_cells_case(5, (128, 128) if ndim == 2 else (64, 64, 24))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _case(6, ndim)
    assert not np.array_equal(a[0], c[0])


def test_case_seed_depends_on_everything():
    assert case_seed(0, "a", 2) == case_seed(0, "a", 2)
    assert len({case_seed(0, "a", 2), case_seed(1, "a", 2), case_seed(0, "b", 2), case_seed(0, "a", 3)}) == 4


@pytest.mark.parametrize("ndim", [2, 3])
def test_types_shapes_spacing(ndim):
    image, label, instances, affine = _case(1, ndim)
    shape = (128, 128) if ndim == 2 else (64, 64, 24)
    assert image.shape == label.shape == instances.shape == shape
    assert image.dtype == np.float32 and label.dtype == np.uint8 and instances.dtype == np.uint16
    assert np.isfinite(image).all()
    spacing = DEFAULT_SPACING_2D if ndim == 2 else DEFAULT_SPACING_3D
    np.testing.assert_allclose(np.diag(affine)[:ndim], spacing)
    if ndim == 3:
        assert spacing[2] == pytest.approx(2 * spacing[0])  # z twice as coarse


@pytest.mark.parametrize("ndim", [2, 3])
def test_instances_consistent_with_semantic(ndim):
    for seed in range(3):
        _, label, instances, _ = _case(seed, ndim)
        assert set(np.unique(label).tolist()) <= {0, 1}
        np.testing.assert_array_equal(label > 0, instances > 0)
        ids = np.unique(instances)
        ids = ids[ids > 0]
        assert len(ids) >= 3
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # consecutive
        for k in ids:
            _, n = ndimage.label(instances == k)
            assert n == 1, f"instance {k} is not one connected component"


def _touching_pairs(instances: np.ndarray) -> int:
    pairs = set()
    for axis in range(instances.ndim):
        a = np.moveaxis(instances, axis, 0)
        lo, hi = a[:-1], a[1:]
        touch = (lo > 0) & (hi > 0) & (lo != hi)
        pairs |= {tuple(sorted(p)) for p in zip(lo[touch].tolist(), hi[touch].tolist())}
    return len(pairs)


@pytest.mark.parametrize("ndim", [2, 3])
def test_some_nuclei_touch(ndim):
    assert sum(_touching_pairs(_case(seed, ndim)[2]) for seed in range(3)) >= 2


def test_boundary_class_marks_interfaces():
    image, label, instances, _ = _case(2, 2, True)
    assert set(np.unique(label).tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(label > 0, instances > 0)
    if _touching_pairs(instances):
        assert (label == 2).any()
    # every class-2 pixel has a different nucleus among its 8 neighbours
    for x, y in zip(*np.nonzero(label == 2)):
        win = instances[max(x - 1, 0):x + 2, max(y - 1, 0):y + 2]
        assert np.any((win > 0) & (win != instances[x, y]))
    # same geometry and image as without the boundary class
    plain = _case(2, 2, False)
    np.testing.assert_array_equal(plain[2], instances)
    np.testing.assert_array_equal(plain[0], image)


def test_semantic_task_is_learnable():
    """Nuclei stand out: a threshold on the lightly smoothed image already reaches Dice >= 0.85."""
    images, labels = [], []
    for seed in range(3):
        image, label, _, _ = _case(seed, 2)
        images.append(ndimage.gaussian_filter(image, 1.0).ravel())
        labels.append(label.ravel())
    assert best_threshold_dice(np.concatenate(images), np.concatenate(labels)) >= 0.85


def _entry(cid: str) -> dict:
    return {"id": cid, "image": f"imagesTr/{cid}.nii.gz", "label": f"labelsTr/{cid}.nii.gz",
            "instances": f"instancesTr/{cid}.nii.gz"}


@pytest.mark.parametrize("ndim", [2, 3])
def test_write_case_files(tmp_path, ndim):
    writer = write_cells_2d_case if ndim == 2 else write_cells_3d_case
    source = {"seed": 3}
    if ndim == 3:
        source["shape"] = [32, 32, 12]
    entry = _entry("c0")
    writer(tmp_path, entry, source)
    img = nib.load(tmp_path / entry["image"])
    lab = nib.load(tmp_path / entry["label"])
    ins = nib.load(tmp_path / entry["instances"])
    assert img.get_data_dtype() == np.float32
    assert lab.get_data_dtype() == np.uint8
    assert ins.get_data_dtype() == np.uint16
    spacing = DEFAULT_SPACING_2D if ndim == 2 else DEFAULT_SPACING_3D
    for nii in (img, lab, ins):
        assert nii.ndim == ndim
        np.testing.assert_allclose(nii.header.get_zooms(), spacing, rtol=1e-6)
        np.testing.assert_allclose(nii.affine, img.affine)
    np.testing.assert_array_equal(np.asarray(lab.dataobj) > 0, np.asarray(ins.dataobj) > 0)
    # no temporary files left behind
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []
    # rewriting gives the same data
    first = np.asarray(img.dataobj).copy()
    writer(tmp_path, entry, source)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / entry["image"]).dataobj), first)


def test_write_is_atomic(tmp_path, monkeypatch):
    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    entry = _entry("c1")
    with pytest.raises(OSError):
        write_cells_2d_case(tmp_path, entry, {"seed": 0})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_without_instances_key(tmp_path):
    entry = {"id": "c2", "image": "i/c2.nii.gz", "label": "l/c2.nii.gz"}
    write_cells_2d_case(tmp_path, entry, {"seed": 0, "shape": [48, 40], "spacing": [0.001, 0.001]})
    assert nib.load(tmp_path / "i/c2.nii.gz").shape == (48, 40)
    assert not (tmp_path / "instancesTr").exists()


@pytest.mark.parametrize(
    "source, message",
    [
        ({}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"seed": 1, "shape": [64, 64, 8]}, "shape"),
        ({"seed": 1, "spacing": [0.0, 0.001]}, "spacing"),
        ({"seed": 1, "boundary_class": "yes"}, "boundary_class"),
    ],
)
def test_bad_source(tmp_path, source, message):
    with pytest.raises(DataError, match=message):
        write_cells_2d_case(tmp_path, _entry("c"), source)


def test_bad_entry(tmp_path):
    with pytest.raises(DataError, match="image"):
        write_cells_2d_case(tmp_path, {"id": "x", "label": "l.nii.gz"}, {"seed": 0})
    with pytest.raises(DataError, match=r"\.nii\.gz"):
        write_cells_2d_case(tmp_path, {"id": "x", "image": "i.png", "label": "l.nii.gz"}, {"seed": 0})


def test_register():
    reg = Registry("generator")
    register(reg)
    assert reg.get("synthetic_cells_2d") is write_cells_2d_case
    assert reg.get("synthetic_cells_3d") is write_cells_3d_case


@pytest.mark.parametrize("name, ndim", [("cells2d_demo", 2), ("cells3d_demo", 3)])
def test_demo_manifest(tmp_path, name, ndim):
    path = REPO / "data_manifests" / f"{name}.json"
    doc = json.loads(path.read_text())
    assert doc["source"]["generator"] == f"synthetic_cells_{ndim}d"
    assert doc["spatial_dims"] == ndim and doc["data_root"] == f"../data/{name}"
    manifest = load_manifest(path)
    counts = {k: len(v) for k, v in manifest.cases.items()}
    assert counts == {"training": 24, "validation": 4, "test": 8}
    entries = [e for s in ("training", "validation", "test") for e in doc[s]]
    assert all("instances" in e and len(e["spacing"]) == ndim for e in entries)
    # the first test case can be generated under a scratch root (small shape to stay fast)
    reg = Registry("generator")
    register(reg)
    source = dict(doc["source"])
    source["shape"] = [32] * ndim
    reg.get(doc["source"]["generator"])(tmp_path, doc["test"][0], source)
    nii = nib.load(tmp_path / doc["test"][0]["image"])
    np.testing.assert_allclose(nii.header.get_zooms(), doc["test"][0]["spacing"], rtol=1e-6)
