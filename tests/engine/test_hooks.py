"""Tracking is a hook: events in order, and a failing hook never fails the run (logged once)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.config.loader import load_workflow
from pipeline.engine.hooks import Hook, HookSet, RunEnded, RunStarted, StageDone
from pipeline.stages import run_workflow, stage_names
from tests.utils import blob_dataset, tiny_workflow


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[object] = []

    def run_started(self, event: RunStarted) -> None:
        self.events.append(event)

    def stage_done(self, event: StageDone) -> None:
        self.events.append(event)

    def run_ended(self, event: RunEnded) -> None:
        self.events.append(event)


class Broken(Hook):
    calls = 0

    def run_started(self, event: RunStarted) -> None:
        Broken.calls += 1
        raise ConnectionError("store unreachable")

    def stage_done(self, event: StageDone) -> None:
        Broken.calls += 1
        raise ConnectionError("store unreachable")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hooks")
    return tiny_workflow(tmp / "wf.yaml", blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=1),
                         **{"train.epochs": 1})


def test_events_in_order_with_reports(workflow: Path, tmp_path: Path) -> None:
    rec = Recorder()
    run_workflow(load_workflow(workflow), run_dir=tmp_path / "run", hooks=[rec])
    assert isinstance(rec.events[0], RunStarted) and isinstance(rec.events[-1], RunEnded)
    assert rec.events[-1].status == "FINISHED"
    done = [e for e in rec.events if isinstance(e, StageDone)]
    assert [e.stage for e in done] == stage_names() and not any(e.reused for e in done)
    by_stage = {e.stage: e.report for e in done}
    assert [step for step, _ in by_stage["train"].series] == [1]
    assert "test_dice_mean" in by_stage["evaluate"].metrics
    assert rec.events[0].report.params["train.epochs"] == 1
    again = Recorder()
    run_workflow(load_workflow(workflow), run_dir=tmp_path / "run", hooks=[again])
    assert all(e.reused for e in again.events if isinstance(e, StageDone))


def test_a_failing_hook_is_reported_once_and_the_run_goes_on(workflow: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    rec, Broken.calls = Recorder(), 0
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = run_workflow(load_workflow(workflow), run_dir=tmp_path / "run", hooks=[Broken(), rec])
    assert result.summary is not None and result.executed == stage_names()
    assert Broken.calls == 1, "a failed hook must not be called again in the same run"
    warnings = [r for r in caplog.records if "store unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "goes on" in warnings[0].getMessage()
    assert rec.events[-1].status == "FINISHED"


def test_failed_run_ends_failed_with_the_error(workflow: Path, tmp_path: Path) -> None:
    rec = Recorder()
    with pytest.raises(Exception, match="unknown stage"):
        run_workflow(load_workflow(workflow), run_dir=tmp_path / "run", hooks=[rec], only="nope")
    assert not rec.events  # refused before the run started
    hooks = HookSet([rec])
    hooks.run_ended(RunEnded("FAILED", error="boom"))
    assert rec.events[-1].error == "boom"


def test_unreachable_mlflow_store_does_not_fail_the_run(workflow: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"  # its folder cannot be created
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = run_workflow(load_workflow(workflow, ["tracking.enabled=true", f"tracking.tracking_uri={uri}"]),
                              run_dir=tmp_path / "run")
    assert result.summary is not None and result.mlflow_run_id is None
    assert len([r for r in caplog.records if "the run goes on without it" in r.getMessage()]) == 1


def test_mlflow_failing_mid_run_ends_its_run_instead_of_leaving_it_running(workflow: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.tracker import MlflowTracker

    def broken(self, path, artifact_path=None):  # type: ignore[no-untyped-def]
        if Path(path).name == "best.pt":
            raise OSError("artifact store full")

    monkeypatch.setattr(MlflowTracker, "log_artifact", broken)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_workflow(load_workflow(workflow, ["tracking.enabled=true", f"tracking.tracking_uri={uri}"]),
                          run_dir=tmp_path / "run")
    assert result.summary is not None
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED"
