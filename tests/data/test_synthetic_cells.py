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
    CAMERA_OFFSET,
    DEFAULT_SPACING_2D,
    DEFAULT_SPACING_3D,
    RECIPE,
    case_seed,
    generate_cells_case,
    make_cells_case,
    register,
    write_cells_2d_case,
    write_cells_3d_case,
)
from pipeline.data.synthetic_prostate import best_threshold_dice
from pipeline.errors import DataError
from pipeline.registry import Registry

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def _full(seed: int, ndim: int, boundary: bool = False):
    shape = (128, 128) if ndim == 2 else (64, 64, 24)
    return generate_cells_case(seed, shape, boundary_class=boundary)


def _case(seed: int, ndim: int, boundary: bool = False):
    return tuple(_full(seed, ndim, boundary))[:4]


@pytest.mark.parametrize("ndim", [2, 3])
def test_deterministic(ndim):
    """A function of the seed only: bit-identical arrays and per-nucleus record, whatever was generated before."""
    a = _full(5, ndim)
    make_cells_case(7, (32,) * ndim)  # no hidden state carried from one case to the next
    b = generate_cells_case(5, (128, 128) if ndim == 2 else (64, 64, 24))
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)
    assert a.nuclei.keys() == b.nuclei.keys()
    for key, value in a.nuclei.items():
        np.testing.assert_array_equal(value, b.nuclei[key])
    c = _case(6, ndim)
    assert not np.array_equal(a[0], c[0])
    for x, y in zip(make_cells_case(3, (32,) * ndim), generate_cells_case(3, (32,) * ndim)[:4]):
        np.testing.assert_array_equal(x, y)


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


def _touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of instance ids that share a face (4-/6-neighbours)."""
    pairs = set()
    for axis in range(instances.ndim):
        a = np.moveaxis(instances, axis, 0)
        lo, hi = a[:-1], a[1:]
        touch = (lo > 0) & (hi > 0) & (lo != hi)
        pairs |= {tuple(sorted(p)) for p in zip(lo[touch].tolist(), hi[touch].tolist())}
    return pairs


def _groups(instances: np.ndarray) -> list[int]:
    """Sizes of the groups of mutually touching nuclei (1: an isolated nucleus), largest first."""
    n = int(instances.max())
    parent = list(range(n + 1))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in _touching_pairs(instances):
        parent[find(a)] = find(b)
    roots = [find(i) for i in range(1, n + 1)]
    return sorted((roots.count(r) for r in set(roots)), reverse=True)


@pytest.mark.parametrize("ndim", [2, 3])
def test_some_nuclei_touch(ndim):
    assert sum(len(_touching_pairs(_case(seed, ndim)[2])) for seed in range(3)) >= 2


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
    """Most nuclei stand out: the best threshold on the lightly smoothed image still reaches Dice >= 0.85 (the dim
    nuclei are few pixels; the instance task is the hard part)."""
    images, labels = [], []
    for seed in range(3):
        image, label, _, _ = _case(seed, 2)
        images.append(ndimage.gaussian_filter(image, 1.0).ravel())
        labels.append(label.ravel())
    assert best_threshold_dice(np.concatenate(images), np.concatenate(labels)) >= 0.85


def test_clusters_of_touching_nuclei():
    """A good share of the nuclei touch another, in clusters of 3-8; the semantic mask alone merges them."""
    with_cluster, fractions = 0, []
    for seed in range(8):
        instances = _case(seed, 2)[2]
        n = int(instances.max())
        touching = {i for pair in _touching_pairs(instances) for i in pair}
        assert len(touching) >= n / 3, f"seed {seed}: only {len(touching)} of {n} nuclei touch another"
        fractions.append(len(touching) / n)
        groups = _groups(instances)
        with_cluster += groups[0] >= 3
        assert groups[0] <= 12  # clusters, not one sheet of nuclei
        _, n_components = ndimage.label(instances > 0)
        assert n_components < n  # connected components of the mask merge touching nuclei
    assert with_cluster >= 6 and np.mean(fractions) >= 0.5
    # 3D: clusters too, mostly side by side
    assert sum(_groups(_case(seed, 3)[2])[0] >= 3 for seed in range(3)) >= 2


def test_touching_interface_is_not_a_dark_gap():
    """Between touching nuclei the image is at most slightly dimmer than inside them: no gap to split on."""
    for seed in range(3):
        image, _, instances, _ = _case(seed, 2)
        smooth = ndimage.gaussian_filter(image - CAMERA_OFFSET, 1.0)
        interface = _case(seed, 2, True)[1] == 2
        touched = np.isin(instances, np.unique(instances[interface])) & (instances > 0)
        interior = touched & ~ndimage.binary_dilation(interface, iterations=3)
        assert smooth[interface].mean() >= 0.85 * smooth[interior].mean()


def _off_border(instances: np.ndarray) -> list[int]:
    border = np.unique(np.concatenate([instances[[0, -1], :].ravel(), instances[:, [0, -1]].ravel()]))
    return [i for i in range(1, int(instances.max()) + 1) if i not in border]


def test_sizes_and_shapes_vary():
    """Nuclei not cut by the border differ in area at least 4x over a few cases, and some are elongated."""
    areas, elongations = [], []
    for seed in range(4):
        instances = _case(seed, 2)[2]
        for i in _off_border(instances):
            coords = np.argwhere(instances == i).astype(float)
            areas.append(len(coords))
            eig = np.linalg.eigvalsh(np.cov(coords.T))
            elongations.append(float(np.sqrt(eig[1] / eig[0])))
    area_um2 = np.asarray(areas) * (DEFAULT_SPACING_2D[0] * 1000) ** 2
    assert area_um2.max() / area_um2.min() >= 4
    assert 15 <= area_um2.min() and area_um2.max() <= 260  # semi-axes ~3-9 um
    assert max(elongations) >= 1.5 and np.median(elongations) < 1.3


def test_brightness_varies_between_nuclei():
    """In most cases the dimmest in-focus nucleus is at most half as bright in the image as the brightest (uneven
    illumination and haze blur the recorded 0.25-0.4 a little)."""
    ratios = []
    for seed in range(4):
        case = _full(seed, 2)
        image, instances = case.image - CAMERA_OFFSET, case.instances
        ids = [i for i in range(1, int(instances.max()) + 1)
               if not case.nuclei["out_of_focus"][i] and np.count_nonzero(instances == i) >= 50]
        medians = np.array([np.median(image[instances == i]) for i in ids])
        ratios.append(medians.min() / medians.max())
        bright = case.nuclei["brightness"][1:][~case.nuclei["out_of_focus"][1:]]
        assert bright.max() == pytest.approx(1.0) and 0.25 <= bright.min() <= 0.4
    assert sum(r <= 0.5 for r in ratios) >= 3 and min(ratios) <= 0.4


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, 256)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * mids)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w0[-1] - w0, 1)
    return float(mids[np.argmax(w0 * (w0[-1] - w0) * (mu0 - mu1) ** 2)])


def test_a_global_threshold_misses_dim_nuclei():
    """Otsu's threshold on the smoothed image finds nearly every bright nucleus but loses dim ones."""
    missed_dim, found_bright = 0, []
    for seed in range(6):
        case = _full(seed, 2)
        smooth = ndimage.gaussian_filter(case.image, 1.0)
        above = smooth > _otsu(smooth)
        for i in range(1, int(case.instances.max()) + 1):
            if case.nuclei["out_of_focus"][i]:
                continue
            found = above[case.instances == i].mean() > 0.5
            if case.nuclei["brightness"][i] <= 0.4:
                missed_dim += not found
            else:
                found_bright.append(found)
    assert missed_dim >= 6 and np.mean(found_bright) >= 0.9


def _edge_leak(image: np.ndarray, instances: np.ndarray, i: int) -> float | None:
    """Light just outside a nucleus relative to its inside, both above the local background (sharp edge: ~0)."""
    mask = instances == i
    inner = ndimage.binary_erosion(mask, iterations=2)
    ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask) & (instances == 0)
    far = ndimage.binary_dilation(mask, iterations=12) & ~ndimage.binary_dilation(mask, iterations=8) & (instances == 0)
    if inner.sum() < 5 or ring.sum() < 10 or far.sum() < 10:
        return None
    background = np.median(image[far])
    return float((image[ring].mean() - background) / (image[inner].mean() - background))


@pytest.mark.parametrize("ndim", [2, 3])
def test_out_of_focus_nuclei_are_blurred_and_labelled(ndim):
    with_oof = 0
    for seed in range(4):
        case = _full(seed, ndim)
        oof = np.nonzero(case.nuclei["out_of_focus"])[0]
        with_oof += len(oof) > 0
        assert all(case.nuclei["cluster"][i] < 0 for i in oof)  # isolated ones
        assert all(2.0 <= case.nuclei["blur_um"][i] <= 3.5 for i in oof)
        assert all((case.label[case.instances == i] == 1).all() for i in oof)  # still nuclei in the ground truth
        if ndim == 2:
            leaks = {i: _edge_leak(case.image, case.instances, i) for i in range(1, int(case.instances.max()) + 1)}
            sharp = np.median([v for i, v in leaks.items() if v is not None and i not in oof])
            assert all(leaks[i] is None or leaks[i] > 3 * sharp for i in oof), (seed, leaks, oof)
    assert with_oof >= 3


def test_generation_is_fast():
    import time

    for shape, limit in (((128, 128), 0.5), ((64, 64, 24), 2.0)):
        start = time.perf_counter()
        make_cells_case(11, shape)
        assert time.perf_counter() - start < limit


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
        ({"seed": 1, "recipe": 1}, "recipe"),
        ({"seed": 1, "recipe": "2"}, "recipe"),
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
    assert doc["source"]["recipe"] == RECIPE
    assert doc["spatial_dims"] == ndim and doc["data_root"] == f"../data/{name}"
    manifest = load_manifest(path)
    counts = {k: len(v) for k, v in manifest.cases.items()}
    assert counts == {"training": 24, "validation": 4, "test": 8}
    entries = [e for s in ("training", "validation", "test") for e in doc[s]]
    assert all("instances" in e and len(e["spacing"]) == ndim for e in entries)
    # the files of this recipe live in their own folder: cases an older recipe wrote elsewhere under the data
    # root count as missing, so the prepare stage generates them afresh instead of reusing stale data
    assert all(e[k].startswith(f"recipe{RECIPE}/") for e in entries for k in ("image", "label", "instances"))
    # the first test case can be generated under a scratch root (small shape to stay fast)
    reg = Registry("generator")
    register(reg)
    source = dict(doc["source"])
    source["shape"] = [32] * ndim
    reg.get(doc["source"]["generator"])(tmp_path, doc["test"][0], source)
    nii = nib.load(tmp_path / doc["test"][0]["image"])
    np.testing.assert_allclose(nii.header.get_zooms(), doc["test"][0]["spacing"], rtol=1e-6)


def test_files_of_the_old_recipe_are_not_reused(tmp_path):
    """A data folder written before recipe 2 (files at ``imagesTr/...``) holds none of the current paths, so the
    prepare stage's "generate what is missing" writes every case afresh, once."""
    from pipeline.data.stage import generate_missing

    doc = json.loads((REPO / "data_manifests" / "cells2d_demo.json").read_text())
    doc["data_root"] = str(tmp_path / "data")
    doc["source"]["shape"] = [24, 24]
    for split, n in (("training", 2), ("validation", 1), ("test", 1)):
        doc[split] = doc[split][:n]
        for entry in doc[split]:
            for key in ("image", "label", "instances"):
                old = tmp_path / "data" / entry[key].removeprefix(f"recipe{RECIPE}/")
                old.parent.mkdir(parents=True, exist_ok=True)
                old.write_bytes(b"recipe 1")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    assert generate_missing(load_manifest(path), progress=False) == 4
    assert generate_missing(load_manifest(path), progress=False) == 0
