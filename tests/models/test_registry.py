"""Every registered model keeps the :class:`~pipeline.models.protocol.SegmentationModel` contract, and the registry
is the only list of models: a model registered at test time is accepted by the workflow loader.

The tests are parametrised over ``MODELS.names()``: a new model file gets them without being listed anywhere.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pipeline.models
from pipeline.config.loader import load_workflow
from pipeline.errors import ConfigError, PipelineError
from pipeline.models import MODELS, build_model, supported_dims
from pipeline.models.protocol import (
    DeeplySupervisedModel,
    SegmentationModel,
    StridedModel,
    constructor_problems,
    size_multiple,
)
from pipeline.models.shapes import check_divisible
from pipeline.registry import import_submodules
from tests.utils import blob_dataset, tiny_workflow

IN_CHANNELS, CLASSES = 2, 3
MIN_SIZE = {2: 32, 3: 16}  # per axis, before rounding up to the model's stride
# Models whose defaults cost seconds per forward pass on a CPU are checked with a compact configuration of the same
# code (FC-DenseNet56 in 3D needs 64³ inputs for its 5 poolings): the contract does not depend on the width.
COMPACT: dict[str, dict[str, object]] = {
    "fcdensenet": {"growth_rate": 4, "first_channels": 8, "layers_per_block": [2, 2, 2], "bottleneck_layers": 2},
}


def build(name: str, spatial_dims: int) -> nn.Module:
    return build_model(name, COMPACT.get(name, {}), IN_CHANNELS, CLASSES, spatial_dims)
CASES = [pytest.param(name, dims, id=f"{name}-{dims}d") for name in MODELS.names() for dims in supported_dims(name)]


def small_input(model: nn.Module, spatial_dims: int, batch: int = 2) -> torch.Tensor:
    """A random batch whose sizes are multiples of the model's stride, at least twice the stride (so the coarsest
    features keep more than one voxel, as instance norm needs in training mode) and at least :data:`MIN_SIZE`."""
    stride = size_multiple(model, spatial_dims)
    shape = [math.ceil(max(MIN_SIZE[spatial_dims], 2 * s) / s) * s for s in stride]
    return torch.randn(batch, IN_CHANNELS, *shape)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_every_module_of_the_package_is_imported() -> None:
    modules = [info.name for info in pkgutil.iter_modules(pipeline.models.__path__)]
    assert modules and all(f"pipeline.models.{m}" in sys.modules for m in modules)
    assert {MODELS.get(n).__module__ for n in MODELS.names()} <= {f"pipeline.models.{m}" for m in modules}


@pytest.mark.parametrize("name", MODELS.names())
def test_constructor_follows_the_contract(name: str) -> None:
    assert constructor_problems(MODELS.get(name)) == []


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_eval_mode_returns_input_sized_logits(name: str, spatial_dims: int) -> None:
    model = build(name, spatial_dims).eval()
    assert isinstance(model, nn.Module) and isinstance(model, SegmentationModel)
    x = small_input(model, spatial_dims)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, CLASSES, *x.shape[2:])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_training_mode_returns_logits_or_a_tuple_with_aux_logits(name: str, spatial_dims: int) -> None:
    model = build(name, spatial_dims).train()
    x = small_input(model, spatial_dims)
    with torch.no_grad():
        out = model(x)
    if isinstance(out, tuple):
        assert isinstance(model, DeeplySupervisedModel) and float(model.aux_weight) > 0
        assert len(out) >= 2
    outs = out if isinstance(out, tuple) else (out,)
    assert all(isinstance(o, torch.Tensor) and o.shape == (2, CLASSES, *x.shape[2:]) for o in outs)


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_same_arguments_rebuild_the_checkpointed_weights(name: str, spatial_dims: int) -> None:
    first = build(name, spatial_dims)
    torch.manual_seed(1)
    second = build(name, spatial_dims)
    second.load_state_dict(first.state_dict(), strict=True)


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_stride_gives_one_factor_per_axis_and_is_checked(name: str, spatial_dims: int) -> None:
    model = build(name, spatial_dims)
    stride = size_multiple(model, spatial_dims)
    assert len(stride) == spatial_dims and all(s >= 1 for s in stride)
    check_divisible(model, {"preprocess.patch.size": [2 * s for s in stride]})
    if isinstance(model, StridedModel) and max(stride) > 1:
        odd = [2 * s + (1 if s > 1 else 0) for s in stride]
        with pytest.raises(PipelineError, match="divisible by the model's total stride"):
            check_divisible(model, {"preprocess.patch.size": odd})


@pytest.mark.parametrize("name", [n for n in MODELS.names() if set(supported_dims(n)) != {2, 3}])
def test_unsupported_dimensions_are_rejected(name: str) -> None:
    for dims in {2, 3} - set(supported_dims(name)):
        with pytest.raises(ValueError, match=f"handles .* images only, but the data are {dims}D"):
            build_model(name, {}, IN_CHANNELS, CLASSES, dims)


class _Pointwise(nn.Module):
    """A registered-at-test-time model: two 1×1×1 convolutions, sizes divisible by 4."""

    supported_dims = (3,)

    def __init__(self, in_channels: int = 1, out_channels: int = 2, hidden: int = 4) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, not {hidden}")
        self.net = nn.Sequential(nn.Conv3d(in_channels, hidden, 1), nn.ReLU(), nn.Conv3d(hidden, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def total_stride(self) -> tuple[int, int, int]:
        return (4, 4, 4)


@pytest.fixture
def pointwise(monkeypatch: pytest.MonkeyPatch) -> str:
    """``_Pointwise`` registered as ``pointwise_test`` for one test (unregistered afterwards)."""
    monkeypatch.setitem(MODELS._items, "pointwise_test", _Pointwise)
    return "pointwise_test"


def test_a_model_registered_at_test_time_follows_the_contract(pointwise: str) -> None:
    assert pointwise in MODELS.names() and constructor_problems(MODELS.get(pointwise)) == []
    model = build_model(pointwise, {"hidden": 3}, IN_CHANNELS, CLASSES).eval()
    assert isinstance(model, SegmentationModel) and size_multiple(model, 3) == (4, 4, 4)
    assert model(small_input(model, 3)).shape == (2, CLASSES, 16, 16, 16)


def test_the_loader_accepts_a_model_registered_at_test_time(tmp_path: Path, pointwise: str) -> None:
    manifest = blob_dataset(tmp_path / "data", n_train=1, n_val=0, n_test=0)
    wf = load_workflow(tiny_workflow(tmp_path / "wf.yaml", manifest, model={"name": pointwise, "hidden": 3})).workflow
    assert wf.model.name == pointwise and wf.model.kwargs() == {"hidden": 3}

    def problems(**overrides: object) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load_workflow(tiny_workflow(tmp_path / "bad.yaml", manifest, **overrides))
        return info.value.problems

    assert any(p.startswith("model.hidden: ") for p in problems(model={"name": pointwise, "hidden": "three"}))
    assert any("model: hidden must be >= 1" in p for p in problems(model={"name": pointwise, "hidden": 0}))
    assert any("must be divisible by the model's total stride [4, 4, 4]" in p
               for p in problems(model={"name": pointwise}, **{"preprocess.patch.size": [16, 16, 6]}))
    assert any(f"known: {', '.join(MODELS.names())}." in p and pointwise in p
               for p in problems(model={"name": "pointwise_tset"}))


def test_importing_a_new_model_module_registers_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model file placed in the package is registered by importing the package, with no other change."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "extra_model.py").write_text(
        "from torch import nn\n"
        "from pipeline.models import MODELS\n\n\n"
        "@MODELS.register('extra_test_model')\n"
        "class Extra(nn.Identity):\n"
        "    def __init__(self, in_channels: int = 1, out_channels: int = 1, spatial_dims: int = 2) -> None:\n"
        "        super().__init__()\n")
    monkeypatch.setattr(pipeline.models, "__path__", [*pipeline.models.__path__, str(package)])
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))
    monkeypatch.delitem(sys.modules, "pipeline.models.extra_model", raising=False)
    try:
        import_submodules(pipeline.models.__name__, pipeline.models.__path__)  # what the package runs on import
        assert "extra_test_model" in MODELS and constructor_problems(MODELS.get("extra_test_model")) == []
    finally:
        sys.modules.pop("pipeline.models.extra_model", None)
    importlib.invalidate_caches()
