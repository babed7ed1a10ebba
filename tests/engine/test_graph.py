"""The stage graph: order from ``requires``, unknown and cyclic requirements refused, every stage typed."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.engine.graph import ancestors, descendants, stage_order
from pipeline.engine.stage import Stage, StageContext, StageRecord
from pipeline.errors import PipelineError
from pipeline.stages import stage_classes


def _stage(name: str, requires: tuple[str, ...] = ()) -> type[Stage]:
    class S(Stage):
        def config(self, workflow: Any) -> Any:
            return None

        def run(self, ctx: StageContext) -> StageRecord:
            return StageRecord()

    S.name, S.requires = name, requires
    return S


def test_order_follows_requirements_not_registration() -> None:
    graph = {n: _stage(n, r) for n, r in [("z", ()), ("b", ("z",)), ("a", ("b", "z")), ("c", ("z",))]}
    order = [s.name for s in stage_order(graph)]
    assert order == ["z", "b", "a", "c"]
    assert ancestors("a", graph) == {"b", "z"} and descendants("b", graph) == {"a"}


def test_unknown_requirement_and_cycle_are_refused() -> None:
    with pytest.raises(PipelineError, match="requires unknown stage"):
        stage_order({"a": _stage("a", ("nope",))})
    with pytest.raises(PipelineError, match="cycle"):
        stage_order({"a": _stage("a", ("b",)), "b": _stage("b", ("a",))})


def test_every_registered_stage_requires_earlier_stages_and_declares_its_record() -> None:
    seen: set[str] = set()
    for cls in stage_classes():
        assert set(cls.requires) <= seen, f"{cls.name} requires a later stage"
        assert issubclass(cls.record, StageRecord) and cls.record is not StageRecord, cls.name
        assert cls.record.model_config.get("frozen"), f"{cls.record.__name__} must be frozen"
        seen.add(cls.name)
    names = [c.name for c in stage_classes()]
    assert names[0] == "prepare" and names[-1] == "evaluate" and len(names) == len(set(names))
