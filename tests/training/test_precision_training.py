"""Training in bf16 (``train.precision``): the loss sees float32 logits, checkpoints keep their float32 format and
record the precision, seeded runs are repeatable bit for bit, and the run folder's key counts the precision as
what it resolves to (so fp32 runs keep the keys they had). On a CPU without hardware bf16 PyTorch emulates it:
the tiny workflow keeps that to seconds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.cli import main
from pipeline.config.loader import load_workflow
from pipeline.runtime.precision import resolve_precision
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.stage import TrainStage
from pipeline.training.trainer import compute_loss
from tests.utils import blob_dataset, tiny_workflow


def test_the_loss_is_computed_from_float32_logits_outside_autocast():
    seen = []

    class Spy(nn.Module):
        def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append((logits.dtype, torch.is_autocast_enabled("cpu")))
            return logits.float().mean() * 0 + (logits.softmax(1)[:, 1] - y[:, 0]).abs().mean()

    net = nn.Conv3d(1, 2, 3, padding=1)
    x, y = torch.randn(1, 1, 6, 6, 4), (torch.rand(1, 1, 6, 6, 4) > 0.5).float()
    with resolve_precision("bf16", "cpu", quiet=True).autocast():
        assert net(x).dtype == torch.bfloat16  # the network itself runs in bf16
        loss = compute_loss(net, Spy(), x, y)
    assert seen == [(torch.float32, False)] and loss.dtype == torch.float32
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.dtype == torch.float32  # float32 master weights


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("bf16")
    manifest = blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=1)
    wf = tiny_workflow(tmp / "wf.yaml", manifest, **{"train.precision": "bf16", "evaluate.figures": 0,
                                                      "evaluate.overlays": False})
    for name in ("a", "b"):
        assert main(["run", str(wf), "--run-dir", str(tmp / name)]) == 0
    return wf, tmp / "a", tmp / "b"


def test_seeded_bf16_runs_are_repeatable_and_keep_the_checkpoint_format(bf16_runs):
    _, a, b = bf16_runs
    for name in ("best.pt", "last.pt"):
        ca, cb = load_checkpoint(a / "train" / name), load_checkpoint(b / "train" / name)
        assert ca["precision"] == cb["precision"] == "bf16"
        assert ca["model_state"].keys() == cb["model_state"].keys()
        for k, v in ca["model_state"].items():
            assert torch.equal(v, cb["model_state"][k]), k
            assert not v.is_floating_point() or v.dtype == torch.float32, k  # the format of fp32 checkpoints
    assert (a / "train" / "history.json").read_text() == (b / "train" / "history.json").read_text()
    record = json.loads((a / "train" / "_stage.json").read_text())["record"]
    assert record["precision"] == "bf16"
    infer = json.loads((a / "infer" / "_stage.json").read_text())["record"]
    assert infer["precision"] == resolve_precision("auto", "cpu").name  # infer.precision stays auto


def test_the_run_key_counts_the_resolved_precision(bf16_runs, tmp_path):
    wf_path = bf16_runs[0]
    manifest = load_workflow(wf_path).workflow.data.manifest
    key = {}
    for precision in ("auto", "fp32", "bf16"):
        wf = load_workflow(tiny_workflow(tmp_path / f"{precision}.yaml", manifest,
                                         **{"train.precision": precision})).workflow
        key[precision] = TrainStage().config(wf)["train"]
    assert "precision" not in key["fp32"] and key["bf16"]["precision"] == "bf16"
    assert key["auto"] == key[resolve_precision("auto", "cpu").name]  # auto is keyed as what it resolves to


def test_the_choice_is_printed(tmp_path, caplog):
    manifest = blob_dataset(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochs": 1, "train.iterations_per_epoch": 1,
                                                          "evaluate.figures": 0, "evaluate.overlays": False})
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert main(["run", str(wf), "--run-dir", str(tmp_path / "run")]) == 0
    expected = resolve_precision("auto", "cpu")
    assert f"[train] precision: {expected.describe()}" in caplog.text
    assert f"[infer] precision: {expected.describe()}" in caplog.text
