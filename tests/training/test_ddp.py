"""``pipeline run --nproc 2``: two gloo processes on CPU train the tiny workflow as one run (PyTorch's torchrun as a
subprocess, nothing mocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.models import build_model
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.distributed import ShardedRandomSampler, check_devices
from tests.utils import blob_dataset, tiny_workflow

EPOCHS = 4


def pipeline_run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env)


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != "_run.lock"}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(workflow, single-process run, two-process run)`` of the same tiny workflow."""
    tmp = tmp_path_factory.mktemp("ddp")
    wf = tiny_workflow(tmp / "wf.yaml", blob_dataset(tmp / "data"), **{"train.epochs": EPOCHS})
    assert main(["run", str(wf), "--run-dir", str(tmp / "single")]) == 0
    proc = pipeline_run(str(wf), "--run-dir", str(tmp / "ddp"), "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[train] process 1 of 2 (cpu)" in proc.stderr
    return wf, tmp / "single", tmp / "ddp"


def test_two_processes_train_one_run(ddp_runs: tuple[Path, Path, Path]) -> None:
    _, single, ddp = ddp_runs
    assert files(ddp) == files(single)
    record = json.loads((ddp / "train" / "_stage.json").read_text())["record"]
    assert record["world_size"] == 2 and record["epochs"] == EPOCHS and record["resumed_from_epoch"] is None
    assert json.loads((single / "train" / "_stage.json").read_text())["record"]["world_size"] == 1
    history = json.loads((ddp / "train" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] == 0.0  # the poly schedule ran its per-process iterations


def test_best_checkpoint_loads_in_one_process(ddp_runs: tuple[Path, Path, Path]) -> None:
    state = load_checkpoint(ddp_runs[2] / "train" / "best.pt")
    m = state["model"]
    model = build_model(m["name"], m["kwargs"], m["in_channels"], m["out_channels"], m["spatial_dims"])
    model.load_state_dict(state["model_state"])  # strict: no "module." prefix of DistributedDataParallel
    assert not any(k.startswith("module.") for k in state["model_state"])
    last = load_checkpoint(ddp_runs[2] / "train" / "last.pt")
    assert last["world_size"] == 2 and len(last["rng"]) == 2  # each rank's random states, for an exact resume


def test_rerun_of_a_finished_run_reuses_training_and_exits(ddp_runs: tuple[Path, Path, Path]) -> None:
    wf, _, ddp = ddp_runs
    proc = pipeline_run(str(wf), "--run-dir", str(ddp), "--nproc", "2", timeout=90)  # a hang fails here
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0 reused the finished train stage; process 1 exits" in proc.stderr
    assert "reused: prepare, preprocess, train, infer, postprocess, evaluate" in proc.stdout


def test_sharded_sampler_deals_out_one_draw() -> None:
    one = list(ShardedRandomSampler(5, 8, torch.Generator().manual_seed(3)))
    assert one == list(torch.utils.data.RandomSampler(range(5), replacement=True, num_samples=8,
                                                      generator=torch.Generator().manual_seed(3)))
    ranks = [list(ShardedRandomSampler(5, 4, torch.Generator().manual_seed(3), rank=r, world=2)) for r in (0, 1)]
    assert ranks[0] == one[0::2] and ranks[1] == one[1::2]


@pytest.mark.parametrize(("extra", "message"), [
    (["--nproc", "0"], "--nproc 0: give the number of training processes, 1 or more"),
    (["--nproc", "2", "--only", "train"], "--nproc cannot be combined with --only"),
])
def test_launch_mistakes_are_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                         message: str) -> None:
    wf = tiny_workflow(tmp_path / "wf.yaml", tmp_path / "missing.json")
    assert main(["run", str(wf), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cpu_workflows_take_any_number_of_processes() -> None:
    check_devices("cpu", 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_more_processes_than_gpus_is_a_mistake() -> None:
    n = torch.cuda.device_count()
    check_devices("cuda", n)
    with pytest.raises(PipelineError, match=rf"--nproc {n + 1}: train.device is cuda .* has {n} GPU"):
        check_devices("cuda", n + 1)
