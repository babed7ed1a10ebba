"""The stage graph: the order of the stages follows from each stage's ``requires`` (a topological sort)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.engine.stage import Stage
from pipeline.errors import PipelineError


def stage_order(stages: Mapping[str, type[Stage]]) -> list[type[Stage]]:
    """The stages sorted so that each comes after every stage it requires; ties keep the names' sorted order.

    Raises:
        PipelineError: a stage requires an unknown stage, or the requirements form a cycle.
    """
    for name, cls in stages.items():
        unknown = [r for r in cls.requires if r not in stages]
        if unknown:
            raise PipelineError(f"stage '{name}' requires unknown stage(s) {unknown}; known: {', '.join(sorted(stages))}")
    done: list[str] = []
    pending = dict(sorted(stages.items()))
    while pending:
        ready = [n for n, cls in pending.items() if all(r in done for r in cls.requires)]
        if not ready:
            raise PipelineError(f"the stages {sorted(pending)} require each other in a cycle")
        done.append(ready[0])
        del pending[ready[0]]
    return [stages[n] for n in done]


def ancestors(name: str, stages: Mapping[str, type[Stage]]) -> set[str]:
    """Every stage ``name`` depends on, directly or through others."""
    out: set[str] = set()
    todo = list(stages[name].requires)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(stages[n].requires)
    return out


def descendants(name: str, stages: Mapping[str, type[Stage]]) -> set[str]:
    """Every stage that depends on ``name``, directly or through others."""
    return {n for n in stages if name in ancestors(n, stages)}


def check_stage_name(option: str, value: str | None, names: Iterable[str]) -> None:
    """``--from``/``--only`` must name a stage of the graph.

    Raises:
        PipelineError: naming the option, the unknown value and the stages there are.
    """
    names = list(names)
    if value is not None and value not in names:
        from pipeline.registry import suggest

        raise PipelineError(f"{option}: unknown stage '{value}'; stages are {', '.join(names)}.{suggest(value, names)}")
