"""The README's "Hostile input" table and the corpus agree: every hostile test is listed, every listed test exists,
and there are at least 40 classes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.utils import REPO

HERE = Path(__file__).resolve().parent
ROW = re.compile(r"^\|(?P<cells>.+)\|\s*$")
TEST_REF = re.compile(r"tests/hostile/(test_\w+\.py)::(test_\w+)")


def corpus_tests() -> set[str]:
    """``file::function`` of every test function in tests/hostile (this file excepted)."""
    out = set()
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                out.add(f"{path.name}::{node.name}")
    return out


def readme_rows() -> list[tuple[str, set[str]]]:
    """(class name, the tests it names) for each row of the README's hostile-input table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Hostile input", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = ROW.match(line)
        if not m:
            continue
        cells = [c.strip() for c in m.group("cells").split("|")]
        refs = {f"{f}::{t}" for f, t in TEST_REF.findall(line)}
        if refs:
            rows.append((cells[0], refs))
    return rows


def test_readme_table_lists_every_hostile_test_and_only_existing_ones() -> None:
    rows = readme_rows()
    listed = set().union(*(refs for _, refs in rows)) if rows else set()
    tests = corpus_tests()
    assert sorted(tests - listed) == [], "hostile tests missing from the README table"
    assert sorted(listed - tests) == [], "the README table names tests that do not exist"


def test_at_least_40_distinct_classes() -> None:
    names = [name for name, _ in readme_rows()]
    assert len(names) == len(set(names)), "a class is listed twice"
    assert len(names) >= 40, f"only {len(names)} hostile classes"
