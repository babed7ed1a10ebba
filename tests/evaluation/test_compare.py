"""`pipeline compare`: runs × metrics from run folders and from an MLflow experiment."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.utils import blob_dataset, tiny_workflow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("compare")
    manifest = blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=1)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    wf = tiny_workflow(tmp / "wf.yaml", manifest, tracking={"enabled": True, "tracking_uri": uri})
    for epochs in (1, 2):
        assert main(["run", str(wf), "--run-dir", str(tmp / f"run{epochs}"), "--set", f"train.epochs={epochs}"]) == 0
    return tmp, uri


def test_compare_run_folders_writes_markdown_and_csv(two_runs, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, _ = two_runs
    capsys.readouterr()
    assert main(["compare", str(tmp / "run1"), str(tmp / "run2"), "--csv", str(tmp / "t.csv"),
                 "--markdown", str(tmp / "t.md")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| run | workflow | model | dice_mean |")
    assert len(out.splitlines()) == 4 and out == (tmp / "t.md").read_text()
    rows = list(csv.DictReader((tmp / "t.csv").open()))
    assert [r["model"] for r in rows] == ["vnet", "vnet"] and all(0 <= float(r["dice_mean"]) <= 1 for r in rows)


def test_compare_experiment(two_runs, capsys: pytest.CaptureFixture[str]) -> None:
    _, uri = two_runs
    assert main(["compare", "--experiment", "tiny", "--tracking-uri", uri, "--metrics", "dice"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "dice_mean" in lines[0] and "hd95" not in lines[0]


def test_compare_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err
    assert main(["compare"]) == 2
