"""Every registered loss builds from its defaults and scores logits against integer labels; the registry is the
only list of losses: a loss registered at test time is accepted by the workflow loader.

Parametrised over ``LOSSES.names()``: a new loss file gets these tests without being listed anywhere.
"""

from __future__ import annotations

import inspect
import pkgutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pipeline.losses
from pipeline.config.loader import load_workflow
from pipeline.losses import LOSSES
from tests.utils import blob_dataset, tiny_workflow


def test_every_module_of_the_package_is_imported() -> None:
    modules = [info.name for info in pkgutil.iter_modules(pipeline.losses.__path__)]
    assert {"dice", "dice_ce"} <= set(modules) and all(f"pipeline.losses.{m}" in sys.modules for m in modules)
    assert {"dice", "dice_ce"} <= set(LOSSES.names())


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_builds_from_defaults_and_gives_a_differentiable_scalar(name: str, spatial_dims: int) -> None:
    factory = LOSSES.get(name)
    params = inspect.signature(factory).parameters.values()
    assert all(p.default is not p.empty and p.annotation is not p.empty for p in params), name
    torch.manual_seed(0)
    logits = torch.randn(2, 3, *(8,) * spatial_dims, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, *(8,) * spatial_dims))
    loss = factory()(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_the_loader_accepts_a_loss_registered_at_test_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def l1(weight: float = 1.0) -> nn.Module:
        return nn.L1Loss()

    monkeypatch.setitem(LOSSES._items, "l1_test", l1)
    manifest = blob_dataset(tmp_path / "data", n_train=1, n_val=0, n_test=0)
    wf_path = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.loss": {"name": "l1_test", "weight": 0.5}})
    loss = load_workflow(wf_path).workflow.train.loss
    assert loss.name == "l1_test" and loss.kwargs() == {"weight": 0.5}
