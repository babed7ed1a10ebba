"""Workflow parsing: presets, overrides, path resolution and every error reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.loader import load_workflow
from pipeline.errors import ConfigError
from pipeline.models import MODELS
from tests.utils import REPO, blob_dataset, tiny_workflow


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return blob_dataset(tmp_path / "data")


def problems_of(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_workflow(path, overrides)
    return info.value.problems


def test_shipped_workflow_resolves_presets_and_paths() -> None:
    wf = load_workflow(REPO / "workflows" / "vnet_prostate.yaml").workflow
    assert wf.model.name == "vnet" and wf.model.kwargs()["kernel_size"] == 5
    assert wf.preprocess.patch.size == [64, 64, 16]
    assert wf.infer.mode == "gaussian"
    assert wf.data.manifest == (REPO / "data_manifests" / "prostate_demo.json").resolve()


def test_overrides_are_typed_and_relative_paths_start_at_cwd(tmp_path: Path, manifest: Path, monkeypatch) -> None:
    wf_path = tiny_workflow(tmp_path / "wf.yaml", manifest)
    monkeypatch.chdir(manifest.parent)
    wf = load_workflow(wf_path, ["train.epochs=7", "infer.overlap=0.5", "data.manifest=dataset.json"]).workflow
    assert wf.train.epochs == 7 and wf.infer.overlap == 0.5
    assert wf.data.manifest == manifest.resolve()


def test_section_keys_override_their_preset(tmp_path: Path, manifest: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "m.yaml").write_text("name: vnet\nbase_channels: 4\nlevels: 2\nkernel_size: 3\n")
    wf_path = tiny_workflow(tmp_path / "wf.yaml", manifest, model={"preset": "presets/m.yaml", "base_channels": 6})
    kwargs = load_workflow(wf_path).workflow.model.kwargs()
    assert kwargs == {"base_channels": 6, "levels": 2, "kernel_size": 3}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", "malformed YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert expected in problems_of(path)[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train.epochz": 3}, "train.epochz: unknown key"),
        ({"train.epochs": "ten"}, "train.epochs: Input should be a valid integer, got 'ten'"),
        ({"infer.overlap": 1.5}, "infer.overlap:"),
        ({"model.name": "vnett"}, f"model.name: unknown model 'vnett'; known: {', '.join(MODELS.names())}. "
                                   "Did you mean 'vnet'?"),
        ({"model.widht": 3}, "model.widht: unknown argument for model 'vnet'"),
        ({"model.kernel_size": "five"}, "model.kernel_size:"),
        ({"model.out_channels": 5}, "model.out_channels: set by the pipeline"),
        ({"train.loss": {"name": "dicee"}}, "train.loss.name: unknown loss 'dicee'"),
        ({"data.manifest": "/nonexistent/manifest.json"}, "data.manifest: file not found"),
        ({"preprocess.orientation": "RAX"}, "preprocess.orientation:"),
        ({"preprocess.augment": {"scale_limits": [2.0, 0.5]}}, "scale_limits must be [min, max]"),
        ({"model.preset": "missing.yaml"}, "model.preset: preset file not found"),
        ({"model.levels": 1}, "model: levels must be at least 2"),
        ({"preprocess.patch.size": [16, 16, 7]}, "preprocess.patch.size [16, 16, 7] must be divisible"),
    ],
)
def test_each_problem_names_its_dotted_path(tmp_path: Path, manifest: Path, overrides: dict, expected: str) -> None:
    path = tiny_workflow(tmp_path / "wf.yaml", manifest, **overrides)
    problems = problems_of(path)
    assert any(expected in p for p in problems), problems


def test_unknown_key_suggests_the_closest(tmp_path: Path, manifest: Path) -> None:
    path = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochz": 3})
    assert "Did you mean 'epochs'?" in problems_of(path)[0]


def test_all_problems_reported_at_once_with_the_file(tmp_path: Path, manifest: Path) -> None:
    path = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochs": "ten", "infer.bogus": 1,
                                                          "model.name": "unet9"})
    with pytest.raises(ConfigError) as info:
        load_workflow(path)
    assert len(info.value.problems) == 3
    assert str(path) in str(info.value)


def test_bad_override_syntax(tmp_path: Path, manifest: Path) -> None:
    path = tiny_workflow(tmp_path / "wf.yaml", manifest)
    assert "expected KEY.PATH=VALUE" in problems_of(path, ["train.epochs"])[0]
    assert "unknown key" in problems_of(path, ["train.nope=1"])[0]


def test_shipped_workflows_validate_with_their_models_on_the_meta_device() -> None:
    """Every shipped workflow passes the value checks; its model is built on the meta device (no weights)."""
    for path in sorted((REPO / "workflows").glob("*.yaml")):
        assert load_workflow(path).workflow.name == path.stem


def test_meta_build_matches_a_real_build_and_leaves_initialisation_alone() -> None:
    """build_on_meta has the real model's parameter count, allocates nothing, and a later real build is initialised
    (the init functions are skipped only inside it)."""
    import torch

    from pipeline.models import build_model
    from pipeline.models.shapes import build_on_meta

    for name, kwargs, dims in [("unet", {"channels": [4, 8], "strides": [2]}, 2),
                               ("fcn8s", {"width": 8}, 2), ("deeplabv3plus", {"width": 8}, 2)]:
        meta = build_on_meta(name, kwargs, 1, 3, spatial_dims=dims)
        real = build_model(name, kwargs, 1, 3, spatial_dims=dims)
        assert {p.device.type for p in meta.parameters()} == {"meta"}
        assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
        weights = [p for p in real.parameters() if p.dim() > 1]
        assert all(torch.isfinite(p.detach()).all() for p in weights) and any(float(p.detach().std()) > 0
                                                                               for p in weights)


def test_model_size_limits_name_the_model_and_count() -> None:
    """A model above the parameter or layer limit is refused while it is built, naming the model and the count."""
    from pipeline.models.shapes import ModelTooLarge, build_on_meta

    with pytest.raises(ModelTooLarge, match=r"'unet' .* more than 1,000 parameters"):
        build_on_meta("unet", {"channels": [4, 8], "strides": [2]}, 1, 2, spatial_dims=2, max_parameters=1000)
    with pytest.raises(ModelTooLarge, match=r"'vnet' .* more than 10 layers"):
        build_on_meta("vnet", {"levels": 2, "convs_per_level": [1, 1]}, 1, 2, max_modules=10)


@pytest.mark.parametrize("text", [
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcd", "bcde", strict=True)),
    "a: &a [1, *a]\n", "x: " + "[" * 5000 + "]" * 5000 + "\n", "x:\n" + "".join(" " * i + "-\n" for i in range(1, 200)),
], ids=["aliases", "recursive", "flow-depth", "block-depth"])
def test_yaml_budget_without_libyaml(text: str) -> None:
    """The all-Python parser (PyYAML without libyaml) refuses the same documents, by their events."""
    from pipeline.config.loader import YAMLBudgetError, _PythonEvents, check_yaml_budget

    with pytest.raises(YAMLBudgetError):
        check_yaml_budget(text, _PythonEvents)
    check_yaml_budget((REPO / "workflows" / "vnet_prostate.yaml").read_text(), _PythonEvents)


def test_default_run_dir_stays_under_runs(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workflow whose name escapes runs/ (built without validation) is refused by default_run_dir too."""
    from pipeline.errors import PipelineError
    from pipeline.stages import default_run_dir

    monkeypatch.chdir(tmp_path)
    loaded = load_workflow(tiny_workflow(tmp_path / "wf.yaml", manifest))
    assert default_run_dir(loaded).parent.parent == (tmp_path / "runs").resolve()
    for name in ("..", "../../x", ".hidden", "a/b"):
        bad = type(loaded)(workflow=loaded.workflow.model_copy(update={"name": name}), source=loaded.source)
        with pytest.raises(PipelineError, match="name"):
            default_run_dir(bad)
    assert not (tmp_path / "runs").exists()


def test_section_given_where_a_path_belongs(tmp_path: Path, manifest: Path) -> None:
    """`data: {manifest: {}}` (a mapping where a path belongs) is a problem, not an IndexError (found by the
    property test)."""
    assert any(p.startswith("data.manifest: should be a file path") for p in
               problems_of(tiny_workflow(tmp_path / "wf.yaml", manifest, **{"data.manifest": {}})))
