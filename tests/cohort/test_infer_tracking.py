"""Each `pipeline infer` batch is an MLflow run: model, options, counts, throughput and report."""

from __future__ import annotations

import logging

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.models import MODELS
from tests.cohort.test_cohort import Threshold, blob, threshold_bundle
from tests.utils import AFFINES, write_nifti


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


@pytest.fixture
def cohort(tmp_path: Path) -> tuple[Path, Path]:
    model = threshold_bundle(tmp_path / "model")
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        write_nifti(scans / f"case{i}.nii.gz", blob(), AFFINES["oblique"])
    return model, scans


def only_run(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_batch_is_tracked(cohort, tmp_path, capsys):
    model, scans = cohort
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    out = tmp_path / "out"
    assert main(["infer", str(model), "--input", str(scans), "--output", str(out), "--quiet",
                 "--tracking-uri", uri]) == 0
    assert "tracked in MLflow" in capsys.readouterr().out
    client, run = only_run(uri, "threshold-inference")
    digest = json.loads((out / "report.json").read_text())["model"]["digest"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["kind"] == "inference" and run.data.tags["model_digest"] == digest
    assert run.data.params["model"] == str(model) and run.data.params["inputs"] == "3"
    assert run.data.params["infer.overlap"] == "0.25"
    m = run.data.metrics
    assert (m["cases_written"], m["cases_skipped"], m["cases_failed"]) == (3, 0, 0)
    assert m["cases_per_second"] > 0 and m["seconds"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.json", "report.csv"}
    # Artifacts live beside the database, not in ./mlruns of wherever the command ran.
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "store")

    # A rerun skips everything and is its own run, in the experiment the user names.
    assert main(["infer", str(model), "--input", str(scans), "--output", str(out), "--quiet",
                 "--tracking-uri", uri, "--experiment", "rerun"]) == 0
    _, rerun = only_run(uri, "rerun")
    assert (rerun.data.metrics["cases_written"], rerun.data.metrics["cases_skipped"]) == (0, 3)


def test_failed_case_fails_the_run(cohort, tmp_path):
    model, scans = cohort
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["infer", str(model), "--input", str(scans), "--output", str(tmp_path / "out"), "--quiet",
                 "--tracking-uri", uri]) == 1
    _, run = only_run(uri, "threshold-inference")
    assert run.info.status == "FAILED"
    assert (run.data.metrics["cases_written"], run.data.metrics["cases_failed"]) == (3, 1)


def test_unreachable_store_is_reported_once_and_the_batch_goes_on(cohort, tmp_path, capsys, caplog):
    # A hook that fails never fails the work (the engine's contract): the scans are segmented untracked.
    model, scans = cohort
    out = tmp_path / "out"
    (tmp_path / "not_a_folder").write_text("")
    uri = f"sqlite:///{tmp_path / 'not_a_folder' / 'mlflow.db'}"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert main(["infer", str(model), "--input", str(scans), "--output", str(out), "--quiet",
                     "--tracking-uri", uri]) == 0
    warnings = [r.getMessage() for r in caplog.records if "MLflow tracking" in r.getMessage()]
    assert len(warnings) == 1 and "goes on" in warnings[0] and "--no-mlflow" in warnings[0]
    assert len(list(out.glob("*.nii.gz"))) == 3
    assert "tracked in MLflow" not in capsys.readouterr().out


def test_no_mlflow(cohort, tmp_path):
    model, scans = cohort
    db = tmp_path / "mlflow.db"
    assert main(["infer", str(model), "--input", str(scans), "--output", str(tmp_path / "out"), "--quiet",
                 "--tracking-uri", f"sqlite:///{db}", "--no-mlflow"]) == 0
    assert not db.exists()


def test_batch_refused_after_start_ends_the_run_failed(cohort, tmp_path):
    import fcntl

    model, scans = cohort
    out = tmp_path / "out"
    (out / ".pipeline-infer").mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open(out / ".pipeline-infer" / "lock", "w") as held:  # another `pipeline infer` writes there
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["infer", str(model), "--input", str(scans), "--output", str(out), "--quiet",
                     "--tracking-uri", uri]) == 2
    _, run = only_run(uri, "threshold-inference")
    assert run.info.status == "FAILED" and "another `pipeline infer`" in run.data.tags["error"]
