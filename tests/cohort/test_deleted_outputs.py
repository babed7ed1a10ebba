"""`pipeline infer` run again after the user deleted some outputs redoes those cases: a done record is not trusted
without its output files, and the report counts the redone cases as written, not skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.cohort.inputs import STATE_DIR
from pipeline.models import MODELS
from tests.cohort.test_cohort import Threshold, blob, threshold_bundle
from tests.utils import AFFINES, write_nifti


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


def report(out: Path) -> tuple[dict[str, str], dict[str, int]]:
    doc = json.loads((out / "report.json").read_text())
    return {Path(c["input"]).name: c["status"] for c in doc["cases"]}, doc["counts"]


def test_deleted_outputs_are_redone_and_counted_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = threshold_bundle(tmp_path / "model")
    scans = tmp_path / "in"
    for name in ("a", "b", "c"):
        write_nifti(scans / f"{name}.nii.gz", blob((20, 18, 8)), AFFINES["oblique"])
    out = tmp_path / "out"
    argv = ["infer", str(bundle), "--input", str(scans), "--output", str(out), "--save-probabilities", "--no-mlflow",
            "--quiet"]
    assert main(argv) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.nii.gz")}
    assert len(first) == 6 and len(list((out / STATE_DIR).glob("*.json"))) == 3

    (out / "a.nii.gz").unlink()  # a's labels and b's probabilities deleted; their done records remain
    (out / "b_probs.nii.gz").unlink()
    assert (out / STATE_DIR / "a.nii.gz.json").is_file() and (out / STATE_DIR / "b.nii.gz.json").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    statuses, counts = report(out)
    assert statuses == {"a.nii.gz": "written", "b.nii.gz": "written", "c.nii.gz": "skipped"}
    assert counts == {"written": 2, "skipped": 1, "failed": 0}
    assert {p.name: p.read_bytes() for p in out.glob("*.nii.gz")} == first  # every output back, the same bytes
    csv = (out / "report.csv").read_text().splitlines()
    assert sorted(line.split(",")[2] for line in csv[1:]) == ["skipped", "written", "written"]

    assert main(argv) == 0  # and now all three are done
    assert report(out)[1] == {"written": 0, "skipped": 3, "failed": 0}
