"""Stage reuse by content hash, --only / --from / --force, resume after an interruption, repeatability."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import pipeline.training.trainer as trainer
from pipeline.config.loader import load_workflow
from pipeline.stages import run_workflow, stage_names
from pipeline.errors import PipelineError
from tests.utils import blob_dataset, tiny_workflow, write_nifti


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    manifest = blob_dataset(tmp_path / "data", n_train=3, n_val=1, n_test=2)
    return tiny_workflow(tmp_path / "wf.yaml", manifest), tmp_path / "run"


def run(wf: Path, run_dir: Path, overrides: list[str] | None = None, **kw):  # type: ignore[no-untyped-def]
    return run_workflow(load_workflow(wf, overrides), run_dir=run_dir, **kw)


def test_rerun_reuses_every_stage(setup: tuple[Path, Path]) -> None:
    wf, run_dir = setup
    first = run(wf, run_dir)
    assert first.executed == stage_names()
    second = run(wf, run_dir)
    assert second.executed == [] and second.reused == stage_names()
    assert second.summary == first.summary
    assert not list(run_dir.rglob("*.part*")), "temporary files left behind"


def test_only_what_changed_reruns(setup: tuple[Path, Path]) -> None:
    wf, run_dir = setup
    run(wf, run_dir)
    assert run(wf, run_dir, ["evaluate.figures=1"]).executed == ["evaluate"]
    inference_only = run(wf, run_dir, ["evaluate.figures=1", "infer.overlap=0.6"])  # never retrains
    assert inference_only.executed == ["infer", "postprocess", "evaluate"]
    assert inference_only.reused == ["prepare", "preprocess", "train"]
    r = run(wf, run_dir, ["evaluate.figures=1", "infer.overlap=0.6", "train.epochs=3"])
    assert r.executed == ["train", "infer", "postprocess", "evaluate"]
    assert r.reused == ["prepare", "preprocess"]


def test_only_from_and_force(setup: tuple[Path, Path]) -> None:
    wf, run_dir = setup
    with pytest.raises(PipelineError, match="has not finished"):
        run(wf, run_dir, only="evaluate")
    run(wf, run_dir)
    assert run(wf, run_dir, only="infer").executed == ["infer"]
    # infer produced the same files, so later stages stay valid
    assert run(wf, run_dir).executed == []
    assert run(wf, run_dir, from_stage="postprocess").executed == ["postprocess", "evaluate"]
    assert run(wf, run_dir, force=True).executed == stage_names()
    with pytest.raises(PipelineError, match="unknown stage"):
        run(wf, run_dir, only="training")


def test_changed_data_file_reruns_from_prepare(setup: tuple[Path, Path], tmp_path: Path) -> None:
    wf, run_dir = setup
    run(wf, run_dir)
    path = tmp_path / "data" / "imagesTr" / "case0.nii.gz"
    img = nib.load(path)
    write_nifti(path, np.asarray(img.dataobj) * 1.5, img.affine)
    assert run(wf, run_dir).executed[0] == "prepare"


def test_interrupted_training_resumes_and_matches(setup: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    wf, run_dir = setup
    overrides = ["train.epochs=3"]
    reference = run(wf, tmp_path / "reference", overrides)

    real_write_json = trainer.write_json
    calls = {"n": 0}

    def interrupt_after_first_epoch(path, obj):  # type: ignore[no-untyped-def]
        real_write_json(path, obj)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_json", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(wf, run_dir, overrides)
    assert not (run_dir / "train" / "_stage.json").exists()
    assert torch.load(run_dir / "train" / "last.pt", weights_only=True)["epoch"] == 0

    resumed = run(wf, run_dir, overrides)
    assert resumed.reused == ["prepare", "preprocess"] and resumed.executed[0] == "train"
    history = json.loads((run_dir / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    ref_history = json.loads((tmp_path / "reference" / "train" / "history.json").read_text())
    for a, b in zip(history, ref_history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert resumed.summary["dice_mean"] == pytest.approx(reference.summary["dice_mean"], abs=1e-6)


def test_seeded_cpu_runs_repeat(setup: tuple[Path, Path], tmp_path: Path) -> None:
    wf, _ = setup
    a = run(wf, tmp_path / "a")
    b = run(wf, tmp_path / "b")
    assert a.summary == b.summary


def test_default_run_dir_is_named_by_config(setup: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    wf, _ = setup
    monkeypatch.chdir(tmp_path)
    r = run_workflow(load_workflow(wf), run_dir=None)
    assert r.run_dir.parent == (tmp_path / "runs" / "tiny").resolve()
    other = load_workflow(wf, ["train.epochs=1"])
    from pipeline.stages import run_id

    assert run_id(other) != r.run_dir.name
    assert run_id(load_workflow(wf, ["train.progress=true"])) == r.run_dir.name
    # inference, postprocessing and evaluation settings share the trained model's folder
    assert run_id(load_workflow(wf, ["infer.overlap=0.5", "evaluate.figures=1"])) == r.run_dir.name


def test_unknown_stage_name_makes_no_run_folder(setup: tuple[Path, Path]) -> None:
    wf, run_dir = setup
    for option in ("from_stage", "only"):
        with pytest.raises(PipelineError, match="unknown stage 'bogus'"):
            run(wf, run_dir, **{option: "bogus"})
        assert not run_dir.exists()


def test_nan_metrics_survive_reuse(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """A class absent from every test case has a NaN Dice; the reused record must say NaN too, not None."""
    wf, run_dir = setup
    manifest = tmp_path / "data" / "dataset.json"
    doc = json.loads(manifest.read_text())
    doc["labels"]["3"] = "absent"
    manifest.write_text(json.dumps(doc))
    first = run(wf, run_dir)
    second = run(wf, run_dir)
    assert second.executed == []
    for summary in (first.summary, second.summary):
        assert np.isnan(summary["classes"]["absent"]["dice"]), summary["classes"]["absent"]


def test_run_folders_of_older_versions_are_rerun_and_reported(setup: tuple[Path, Path]) -> None:
    from pipeline.stages import load_run
    from pipeline.training.stage import TrainRecord

    wf, run_dir = setup
    run(wf, run_dir)
    record = run_dir / "train" / "_stage.json"
    old = json.loads(record.read_text())
    record.write_text(json.dumps({"key": old["key"], "execution": old["execution"],  # the 0.1 layout
                                  "outputs": {"best_dice": 0.5, "files": list(old["record"]["files"])}}))
    with pytest.raises(PipelineError, match="before 0.2.0"):
        load_run(run_dir).need(TrainRecord, "export")
    assert run(wf, run_dir).executed[0] == "train"
