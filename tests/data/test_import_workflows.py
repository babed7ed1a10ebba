"""The shipped cell and OCT workflows run on imported manifests with one override (data.manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.data.importers.test_dsb2018 import write_dsb
from tests.data.importers.test_duke_dme import write_duke
from tests.utils import REPO

# Only data.manifest matters; the rest make the run take seconds.
FAST = ["train.epochs=1", "train.iterations_per_epoch=1", "train.batch_size=1", "tracking.enabled=false",
        "train.progress=false", "evaluate.figures=1"]


@pytest.mark.parametrize(("dataset", "writer", "workflow", "manifest_name"), [
    ("dsb2018", write_dsb, "unet_cells", "dsb2018.json"),
    ("duke-dme", write_duke, "unet_oct", "duke_dme.json"),
])
def test_import_then_run(tmp_path: Path, dataset: str, writer, workflow: str, manifest_name: str) -> None:
    writer(tmp_path / "src")
    assert main(["data", "import", dataset, str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    manifest = tmp_path / "out" / manifest_name
    args = ["run", str(REPO / "workflows" / f"{workflow}.yaml"), "--run-dir", str(tmp_path / "run"),
            "--set", f"data.manifest={manifest}"]
    for o in FAST:
        args += ["--set", o]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_cases"] == len(json.loads(manifest.read_text())["test"]) and "domain" in summary
