"""Property-based test (issue 13, item 4): random mutations of the shipped workflow files and their presets (keys
dropped or added, types changed, huge, negative, zero, NaN and infinite numbers, odd strings, lists for scalars,
extra nesting) never crash :func:`pipeline.config.loader.load_workflow`: every outcome is a valid
:class:`LoadedWorkflow` whose numbers are finite and whose run folder stays under ``runs/``, or one
:class:`ConfigError` whose problems each start with a dotted path (or the file), short and without a library's repr.

The shipped ``workflows/``, ``configs/`` and ``data_manifests/`` are copied once into a temporary folder (so that the
relative preset and manifest paths hold); each example mutates the workflow and, sometimes, one of its presets, and
restores the preset afterwards. Models are built on the meta device, so a valid example costs milliseconds.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.config.loader import _key, load_workflow
from pipeline.config.schema import Workflow, name_problem
from pipeline.errors import ConfigError
from tests.utils import REPO

WORKFLOWS = sorted(p.name for p in (REPO / "workflows").glob("*.yaml"))
SECTIONS = set(Workflow.model_fields)
ODD_STRINGS = ["..", ".", "../..", "/", "~no-such-user/x", "a\x00b", "x" * 3000, "", " ", "vnet", "unet", "dice",
               "auto", "RAS", "LPI", "preset", "gaussian", "nan", "1e26", "-1", "true", "{a: 1}", "*a", "ä/ö",
               "\u202e", "\t\n"]
ODD_KEYS = ["x", "name", "preset", "size", "roi_size", "epochs", "channels", "a b", "ä", "1", "__class__",
            "in_channels", "spatial_dims"]

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
number = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 16, 10**6, 10**9, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.5, 0.5, 1.0, 1.5, 99.5, 100.0, 1e-300, 1e300, float("nan"), float("inf")]),
)
huge = st.sampled_from(["x" * 3000, "../" * 1000, 10**90, -(10**90), 1e308])  # must not be echoed in full
scalar = st.one_of(st.none(), st.booleans(), number, text, st.sampled_from(ODD_STRINGS), huge)
value = st.recursive(scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(ODD_KEYS), text, st.integers(-3, 3)), kids, max_size=3)),
    max_leaves=8)
OPS = ["drop", "replace", "replace", "wrap", "nest", "add", "first", "scale", "huge"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the shipped workflows with their presets and manifests (and the imports a command pays once)."""
    from pipeline.models.shapes import build_on_meta
    from tests.hostile.harness import warm_imports

    warm_imports()
    build_on_meta("fcn8s", {}, 1, 2, spatial_dims=2)  # PyTorch's meta decompositions import torch._dynamo once
    root = tmp_path_factory.mktemp("shipped")
    for folder in ("workflows", "configs", "data_manifests"):
        shutil.copytree(REPO / folder, root / folder)
    yield root


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a YAML tree (mapping keys and list indices), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def _mutate(doc: Any, draw: st.DrawFn, added: set[str]) -> Any:
    """One random mutation of ``doc`` (in place where possible); records top-level keys it adds in ``added``."""
    paths = _paths(doc)
    if not paths:
        return draw(value)
    loc = paths[draw(st.integers(0, len(paths) - 1))]
    parent = doc
    for k in loc[:-1]:
        parent = parent[k]
    key = loc[-1]
    op = draw(st.sampled_from(OPS))
    current = parent[key]
    if op == "drop":
        del parent[key]
    elif op == "replace":
        parent[key] = draw(value)
    elif op == "huge":
        parent[key] = draw(huge)
    elif op == "wrap":
        parent[key] = [current]
    elif op == "nest":
        parent[key] = {draw(st.sampled_from(ODD_KEYS)): current}
    elif op == "first":
        parent[key] = current[0] if isinstance(current, list) and current else draw(scalar)
    elif op == "scale":
        factor = draw(st.sampled_from([0, -1, 10**6, 10**30, float("nan"), float("inf"), 0.5]))
        parent[key] = (current * factor if isinstance(current, (int, float)) and not isinstance(current, bool)
                       else draw(number))
    else:  # add a key next to this one
        target = parent if isinstance(parent, dict) else doc
        new_key = draw(st.one_of(st.sampled_from(ODD_KEYS), text))
        target[new_key] = draw(value)
        if target is doc:
            added.add(_key(new_key))
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any, str | None, Any, set[str]]:
    """(workflow name, mutated workflow, preset file relative to configs/ or None, mutated preset, added keys)."""
    name = draw(st.sampled_from(WORKFLOWS))
    doc = yaml.safe_load((REPO / "workflows" / name).read_text())
    added: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate(doc, draw, added)
    preset, preset_doc = None, None
    refs = [v for p in _paths(doc) if p[-1] == "preset" for v in [_get(doc, p)] if isinstance(v, str)
            and v.startswith("../configs/")]
    if refs and draw(st.booleans()):
        preset = refs[draw(st.integers(0, len(refs) - 1))].removeprefix("../configs/")
        preset_doc = yaml.safe_load((REPO / "configs" / preset).read_text())
        preset_doc = _mutate(preset_doc, draw, set())
    return name, doc, preset, preset_doc, added


def _get(doc: Any, loc: tuple[Any, ...]) -> Any:
    for k in loc:
        doc = doc[k]
    return doc


def _finite(node: Any, where: str = "") -> None:
    if isinstance(node, float):
        assert math.isfinite(node), f"{where} is {node}"
    elif isinstance(node, dict):
        for k, v in node.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _finite(v, f"{where}.{i}")


def _check_problem(problem: str, root: Path, added: set[str]) -> None:
    assert problem.strip(), "an empty problem"
    assert len(problem) < 1200, f"a problem of {len(problem)} characters"
    assert "Traceback" not in problem and "object at 0x" not in problem, problem
    if problem.startswith((str(root), "--set")):
        return
    head = problem.split(": ", 1)[0]
    first = next((s for s in sorted(SECTIONS | added, key=len, reverse=True)
                  if head == s or head.startswith((f"{s}.", f"{s} "))), None)
    assert first is not None, f"the problem does not start with a dotted path or the file: {problem!r}"


def _regression(name: str, **changes: Any) -> tuple[str, Any, None, None, set[str]]:
    """A shipped workflow with ``changes`` (dotted keys), as an explicit example (crashes found by this test)."""
    doc = yaml.safe_load((REPO / "workflows" / name).read_text())
    for key, new in changes.items():
        *parents, last = key.split(".")
        node = doc
        for k in parents:
            node = node[k]
        node[last] = new
    return name, doc, None, None, set()


@settings(max_examples=40, deadline=None, derandomize=True,  # the same examples on every CI run
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(example=mutated())
@example(example=_regression("deeplab_cells.yaml", **{"data.manifest": {}}))  # a section where a path belongs
@example(example=_regression("vnet_prostate.yaml", model={"name": "vnet", "levels": 2**70}))  # range(levels)
@example(example=_regression("deeplab_cells.yaml", **{"preprocess.orientation": "x" * 3000}))  # echoed in full
def test_mutated_shipped_workflows_never_crash(shipped: Path, example: tuple[str, Any, str | None, Any, set[str]]
                                               ) -> None:
    """Random mutations of workflows/*.yaml and their presets → a valid workflow or one ConfigError naming paths."""
    name, doc, preset, preset_doc, added = example
    path = shipped / "workflows" / f"mutated_{name}"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    preset_path = shipped / "configs" / preset if preset else None
    original = preset_path.read_text(encoding="utf-8") if preset_path else None
    try:
        if preset_path is not None:
            preset_path.write_text(yaml.safe_dump(copy.deepcopy(preset_doc), allow_unicode=True), encoding="utf-8")
        try:
            loaded = load_workflow(path)
        except ConfigError as exc:
            assert exc.problems, "a ConfigError without problems"
            assert len(exc.problems) <= 21
            for problem in exc.problems:
                _check_problem(problem, shipped, added)
            return
        wf = loaded.workflow
        assert name_problem(wf.name) is None, wf.name
        _finite(loaded.resolved())
    finally:
        if preset_path is not None and original is not None:
            preset_path.write_text(original, encoding="utf-8")
