"""Manifest parsing: MSD format, data_root, and the problems it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from pipeline.data.manifest import load_manifest
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
