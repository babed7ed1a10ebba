"""Each stage's reuse key covers exactly what its result depends on: no inference, postprocessing, evaluation or
tracking setting reaches the training key or the run folder's name, and the package version is in every key."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import pipeline
from pipeline.config.loader import load_workflow
from pipeline.config.schema import Workflow
from pipeline.engine.graph import ancestors
from pipeline.stages import run_id, run_workflow, stage_classes
from tests.utils import blob_dataset, tiny_workflow

LATER_SECTIONS = ("infer", "postprocess", "evaluate", "tracking")


def _other_value(annotation: Any, current: Any, path: str) -> Any:
    """A valid value different from ``current`` for a field of this type (recursing into sub-models)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        model = current if current is not None else annotation()
        return _changed_model(model, path)
    if origin is typing.Literal:
        return next(a for a in args if a != current)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        non_none = [a for a in args if a is not type(None)]
        if current is None:
            return _other_value(non_none[0], None, path)
        if type(current) is bool and bool in non_none:  # keep_largest_component: bool | list[int]
            return [1]
        return None
    if annotation is bool:
        return not current
    if annotation is int:
        return (current or 0) + 1
    if annotation is float:
        return round((current or 0.0) * 0.5 + 0.05, 4)
    if annotation is str:
        return f"{current or ''}x"
    if origin is list:
        item = args[0]
        if path.endswith("roi_size"):
            return [v * 2 for v in current]
        if path.endswith("tta_flip_axes"):
            return [] if current else [0]
        if typing.get_origin(item) is typing.Literal:
            return list(typing.get_args(item)[:1])
        return [*current, current[-1] if current else 1] if item in (int, float) else current[:1]
    raise AssertionError(f"{path}: no test value for {annotation!r}; teach this test the field's type")


def _changed_model(model: BaseModel, prefix: str) -> BaseModel:
    hints = typing.get_type_hints(type(model))
    values = {name: _other_value(hints[name], getattr(model, name), f"{prefix}.{name}")
              for name in type(model).model_fields}
    return type(model).model_validate({**model.model_dump(), **{k: v.model_dump() if isinstance(v, BaseModel)
                                                               else v for k, v in values.items()}})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("keys")
    return load_workflow(tiny_workflow(tmp / "wf.yaml", blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=1)))


def test_no_later_setting_reaches_the_training_key(loaded) -> None:  # type: ignore[no-untyped-def]
    wf: Workflow = loaded.workflow
    changed = wf.model_copy(update={s: _changed_model(getattr(wf, s), s) for s in LATER_SECTIONS})
    for section in LATER_SECTIONS:  # every field of every later section differs
        before, after = getattr(wf, section).model_dump(), getattr(changed, section).model_dump()
        same = [k for k in before if before[k] == after[k]]
        assert not same, f"{section}: fields {same} were not changed by the test"
    stages = {cls.name: cls() for cls in stage_classes()}
    graph = {n: type(s) for n, s in stages.items()}
    training = {"train"} | ancestors("train", graph)
    for name in training:
        assert stages[name].config(changed) == stages[name].config(wf), f"stage '{name}' depends on a later section"
        assert stages[name].fingerprint(changed) == stages[name].fingerprint(wf)
    assert run_id(type(loaded)(changed, loaded.source)) == run_id(loaded)
    for name in ("infer", "postprocess", "evaluate"):  # ... while the later stages do see their own settings
        section = "infer" if name == "infer" else name
        alt = wf.model_copy(update={section: _changed_model(getattr(wf, section), section)})
        assert stages[name].config(alt) != stages[name].config(wf), name


def test_training_settings_change_the_training_key(loaded) -> None:  # type: ignore[no-untyped-def]
    wf: Workflow = loaded.workflow
    train = next(cls() for cls in stage_classes() if cls.name == "train")
    for update in ({"seed": 1}, {"train": wf.train.model_copy(update={"epochs": 3})},
                   {"train": wf.train.model_copy(update={"validation": wf.train.validation.model_copy(
                       update={"overlap": 0.75})})}):
        assert train.config(wf.model_copy(update=update)) != train.config(wf), update


def test_an_upgrade_reruns_stages_and_from_is_the_escape(tmp_path: Path, monkeypatch) -> None:
    wf = tiny_workflow(tmp_path / "wf.yaml", blob_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1),
                       **{"train.epochs": 1})
    first = run_workflow(load_workflow(wf), run_dir=tmp_path / "run")
    monkeypatch.setattr(pipeline, "__version__", "99.0.0")
    escaped = run_workflow(load_workflow(wf), run_dir=tmp_path / "run", from_stage="infer")
    assert escaped.reused == ["prepare", "preprocess", "train"]
    assert escaped.executed == ["infer", "postprocess", "evaluate"]
    assert escaped.summary == first.summary
    again = run_workflow(load_workflow(wf), run_dir=tmp_path / "run")  # the escape adopted the earlier stages
    assert again.executed == [] and again.summary == first.summary
    monkeypatch.setattr(pipeline, "__version__", "100.0.0")
    assert run_workflow(load_workflow(wf), run_dir=tmp_path / "run").executed[0] == "prepare"


def test_a_changed_test_file_does_not_retrain(tmp_path: Path) -> None:
    import os

    data = tmp_path / "data"
    wf = tiny_workflow(tmp_path / "wf.yaml", blob_dataset(data, n_train=2, n_val=1, n_test=1), **{"train.epochs": 1})
    run_workflow(load_workflow(wf), run_dir=tmp_path / "run")
    test_label = next(p for p in (data / "labelsTr").iterdir() if "case3" in p.name)
    st = test_label.stat()
    os.utime(test_label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = run_workflow(load_workflow(wf), run_dir=tmp_path / "run")
    assert r.reused == ["preprocess", "train"] and r.executed == ["prepare", "infer", "postprocess", "evaluate"]
    training_label = next(p for p in (data / "labelsTr").iterdir() if "case0" in p.name)
    st = training_label.stat()
    os.utime(training_label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "train" in run_workflow(load_workflow(wf), run_dir=tmp_path / "run").executed
