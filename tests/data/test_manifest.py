"""Manifest parsing: MSD format, data_root, confinement to the data root, and the problems it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist
from pydantic import ValidationError

from pipeline.data.manifest import case_id_problem, load_manifest
from pipeline.data.stage import PrepareRecord, generate_missing
from pipeline.errors import DataError
from tests.utils import REPO, write_manifest


def test_demo_manifest_is_msd_readable_and_roots_at_its_data_root() -> None:
    path = REPO / "data_manifests" / "prostate_demo.json"
    m = load_manifest(path)
    assert m.labels == {0: "background", 1: "PZ", 2: "TZ"} and m.channels == ["T2"]
    assert m.root == (REPO / "data" / "prostate_demo").resolve()
    assert [len(m.cases[s]) for s in ("training", "validation", "test")] == [24, 4, 8]
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key)
        assert len(items) == len(m.cases[key])
    assert m.source["generator"] == "synthetic_prostate"


def test_root_argument_overrides(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]})
    assert load_manifest(path, root=tmp_path / "elsewhere").cases["test"][0].image == (
        tmp_path / "elsewhere" / "imagesTr" / "b.nii.gz").resolve()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(labels={"0": "bg", "2": "x"}), "numbered 0..N-1"),
        (lambda d: d.update(labels={}), "'labels' is missing"),
        (lambda d: d["test"].append(dict(d["training"][0])), "duplicate case id 'a'"),
        (lambda d: d.update(test=[]), "'test' split is empty"),
        (lambda d: d.update(training="nope"), "'training' must be a list"),
    ],
)
def test_problems_name_the_manifest(tmp_path: Path, mutate, expected: str) -> None:
    path = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]})
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=expected) as info:
        load_manifest(path)
    assert str(path) in str(info.value)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a valid JSON manifest"):
        load_manifest(path)


def test_every_shipped_manifest_is_confined_and_safely_named() -> None:
    """The demos keep their data in a sibling folder (``data_root: ../data/NAME``): that is their data root."""
    for path in sorted((REPO / "data_manifests").glob("*_demo.json")):
        m = load_manifest(path)
        assert m.root == (REPO / "data" / path.stem).resolve()
        for case in m.all_cases():
            assert case_id_problem(case.id) is None
            assert all(p.is_relative_to(m.root) for p in (case.image, case.label, *case.extras.values()))


def test_absolute_paths_and_internal_symlinks_inside_the_root_are_fine(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]})
    doc = json.loads(path.read_text())
    doc["training"][0]["image"] = str(tmp_path / "imagesTr" / "a.nii.gz")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "b.nii.gz").write_bytes(b"")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "b.nii.gz").symlink_to(tmp_path / "store" / "b.nii.gz")
    path.write_text(json.dumps(doc))
    m = load_manifest(path)
    assert m.cases["training"][0].image == (tmp_path / "imagesTr" / "a.nii.gz").resolve()
    assert m.cases["test"][0].image == (tmp_path / "store" / "b.nii.gz").resolve()  # the link, followed


def test_a_data_root_that_is_a_symlink_is_followed(tmp_path: Path) -> None:
    """Shared storage linked as the whole data folder: the root is the link's target, the cases lie under it."""
    (tmp_path / "shared" / "imagesTr").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "data").symlink_to(tmp_path / "shared", target_is_directory=True)
    path = write_manifest(tmp_path / "project" / "m.json", {"training": ["a"], "test": ["b"]}, data_root="data")
    m = load_manifest(path)
    assert m.root == (tmp_path / "shared").resolve()
    assert m.cases["test"][0].image == (tmp_path / "shared" / "imagesTr" / "b.nii.gz").resolve()


def test_the_explicit_root_is_the_trusted_folder(tmp_path: Path) -> None:
    """``data.root`` replaces the manifest's ``data_root`` (even one pointing at ``/``) and confines the cases."""
    path = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]}, data_root="/")
    m = load_manifest(path, root=tmp_path / "mine")
    assert m.root == (tmp_path / "mine").resolve()
    doc = json.loads(path.read_text())
    doc["test"][0]["image"] = "../elsewhere/b.nii.gz"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"test\[0\] \(case 'b'\): 'image' '../elsewhere/b.nii.gz' resolves to .* "
                                        r"outside the data root; paths in a manifest must stay under its data root"):
        load_manifest(path, root=tmp_path / "mine")


def test_generation_writes_where_the_checked_manifest_said(tmp_path: Path) -> None:
    """The generator gets the paths load_manifest checked: editing the file afterwards cannot redirect it."""
    path = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]}, data_root="data",
                          source={"generator": "synthetic_prostate", "seed": 0, "shape": [12, 12, 6]})
    m = load_manifest(path)
    doc = json.loads(path.read_text())
    doc["test"][0]["label"] = "../../outside/b.nii.gz"
    path.write_text(json.dumps(doc))
    assert generate_missing(m, progress=False) == 2
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.nii.gz"))
    assert written == ["data/imagesTr/a.nii.gz", "data/imagesTr/b.nii.gz", "data/labelsTr/a.nii.gz",
                       "data/labelsTr/b.nii.gz"]


def test_a_prepare_record_with_an_unsafe_case_id_is_invalid() -> None:
    """A record edited on disk cannot smuggle an id into the paths later stages build (the engine prepares again)."""
    case = {"id": "../../x", "split": "test", "image": "/d/x.nii.gz", "label": "/d/y.nii.gz", "shape": [4, 4, 4],
            "spacing": [1.0, 1.0, 1.0], "channels": 1}
    record = {"manifest": "/d/m.json", "cases": {"test": [case]}, "labels": {0: "bg", 1: "x"}, "channels": ["T2"],
              "spatial_dims": 3, "domain": "", "data_files": {}}
    with pytest.raises(ValidationError, match="not a safe file name"):
        PrepareRecord.model_validate(record)
    PrepareRecord.model_validate(record | {"cases": {"test": [case | {"id": "x"}]}})
