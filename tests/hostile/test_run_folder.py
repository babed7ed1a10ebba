"""A run folder's own files edited by hand or by another tool: `pipeline export` / `pipeline compare` read its
``workflow.yaml`` within the same YAML budget as workflow files, and name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.hostile.harness import refused
from tests.utils import tiny_workflow

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


@pytest.mark.parametrize("kind", ["alias_bomb", "bad_value"])
def test_run_folder_workflow_edited(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """A run folder whose workflow.yaml is an alias bomb or holds a value out of range → `pipeline export` names
    RUN/workflow.yaml and the problem (the YAML budget, or the dotted key), fast, nothing exported."""
    run = tmp_path / "run"
    run.mkdir()
    if kind == "alias_bomb":
        (run / "workflow.yaml").write_text(BOMB)
        names = ["workflow.yaml", "YAML refused", "aliases"]
    else:
        wf = tiny_workflow(tmp_path / "wf.yaml", tmp_path / "dataset.json")
        doc = yaml.safe_load(wf.read_text())
        doc["train"]["epochs"] = 0
        (run / "workflow.yaml").write_text(yaml.safe_dump(doc))
        names = ["workflow.yaml", "train.epochs", "greater than or equal to 1"]
    out = tmp_path / "bundle"
    refused(["export", str(run), "--out", str(out), "--no-mlflow"], capsys, names)
    assert not out.exists()
