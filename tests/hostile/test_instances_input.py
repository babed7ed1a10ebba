"""Instance settings that cannot work with the data (issue 14): a three-class head on a manifest with several
object classes, an instance-aware head without instance maps to learn from, and a model trained for one instance
head asked to decode another. Each is refused by name before anything is trained or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.harness import refused
from tests.utils import blob_dataset_2d, tiny_workflow, write_manifest


def test_three_class_head_on_a_multi_class_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path / "data" / "dataset.json", {"training": ["a"], "validation": ["b"],
                                                                   "test": ["c"]})  # 3 labels
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"instances": {"method": "three_class"}})
    refused(["validate", str(wf)], capsys, ["instances.method", "three_class", "3 labels", str(manifest)],
            untouched=[tmp_path / "data"])


def test_instance_head_without_instance_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = blob_dataset_2d(tmp_path / "data")  # labels only: no 'instances' files
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "preprocess": {"orientation": "RAS", "spacing": None, "patch": {"size": [32, 32], "num_samples": 1}},
        "model": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "infer": {"roi_size": [32, 32]}, "instances": {"method": "distance"}})
    result = refused(["run", str(wf), "--run-dir", str(tmp_path / "run")], capsys,
                     ["has no 'instances' file", "instances.method distance", "watershed or components"],
                     seconds=10.0, untouched=[tmp_path / "data"])
    assert not (tmp_path / "run" / "train" / "best.pt").exists(), result
