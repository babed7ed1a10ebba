"""The package layering: stage packages import only from themselves, earlier stages and the foundation; the
foundation imports no stage or application package. Also: no module of ``pipeline/`` is longer than 400 lines.

Layers, bottom up:

* foundation: :data:`FOUNDATION` (configuration, engine, I/O, models, losses, instances, runtime, registry,
  errors);
* stage packages, in run order (:func:`stage_packages`, asked from the engine): each may import from itself, from
  earlier stage packages and from the foundation;
* application: :data:`APPLICATION` (command line, bundles, cohort runs, tracking, the assembled stages): anything.

Every import counts, at module level or inside a function (lazy imports, ``if TYPE_CHECKING:`` blocks):
``import pipeline.x``, ``from pipeline.x import y``, ``from pipeline import x``, relative imports, and
``importlib.import_module("pipeline.x")`` with a literal name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).resolve().parent
SRC = ROOT.parent
MAX_LINES = 400

FOUNDATION = ("config", "engine", "errors", "instances", "io", "losses", "models", "registry", "runtime")
APPLICATION = ("__main__", "bundle", "cli", "cohort", "stages", "tracking")


def stage_packages() -> list[str]:
    """The stage packages (``pipeline.<package>``) in run order: the package of each stage class, in the engine's
    order. The only place this test asks the engine."""
    from pipeline.stages import stage_classes  # imports every stage; sorted by ``requires`` (the stage graph)

    classes = stage_classes()
    order: list[str] = []
    for cls in classes:
        package = top_package(cls.__module__)
        if package not in order:
            order.append(package)
    return order


@dataclass(frozen=True)
class Arrow:
    """One import of package ``target`` by the file ``source`` (relative to the repository) at ``line``."""

    source: str
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.source} → pipeline.{self.target} (line {self.line})"


def top_package(module: str) -> str:
    """``pipeline.training.trainer`` → ``training``; ``pipeline.cli`` → ``cli``; ``pipeline`` → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pipeline" else ""


def module_name(path: Path) -> str:
    """The dotted module name of a file under ``pipeline/`` (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(text: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` for every module of ``pipeline`` that the source ``text`` of ``module`` imports, anywhere.

    Args:
        text: Python source.
        module: its dotted name (resolves relative imports).
        is_package: the source is a package's ``__init__.py``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from . import x``, ``from ..y import z``
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "pipeline":  # ``from pipeline import cli``: the names are the modules
                found += [(node.lineno, f"pipeline.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted((line, m) for line, m in found if m == "pipeline" or m.startswith("pipeline."))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every module of ``pipeline`` the file imports (see :func:`imports_in`)."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def source_files() -> list[Path]:
    """Every Python file of the ``pipeline`` package."""
    return sorted(ROOT.rglob("*.py"))


def arrows() -> list[Arrow]:
    """Every import of one top-level package of ``pipeline`` by a file of another (or of ``pipeline/*.py``)."""
    out: list[Arrow] = []
    for path in source_files():
        source = top_package(module_name(path))
        for line, module in imported_modules(path):
            target = top_package(module)
            if target and target != source:
                out.append(Arrow(path.relative_to(SRC).as_posix(), line, target))
    return out


def violations(found: list[Arrow], stages: list[str]) -> list[Arrow]:
    """The arrows of ``found`` that break the layering (see the module docstring), and every arrow from or to a
    package that belongs to no layer (classify a new package in :data:`FOUNDATION`, :data:`APPLICATION` or as a
    stage).

    Args:
        found: the imports, e.g. :func:`arrows`.
        stages: the stage packages in run order (:func:`stage_packages`).
    """
    bad: list[Arrow] = []
    for arrow in found:
        source = top_package(module_name(SRC / arrow.source))
        if not source or source in APPLICATION:  # ``pipeline/__init__.py`` and the application: anything
            if arrow.target not in (*FOUNDATION, *stages, *APPLICATION):
                bad.append(arrow)
            continue
        if source in FOUNDATION:
            allowed: tuple[str, ...] = FOUNDATION
        elif source in stages:
            allowed = (*FOUNDATION, *stages[: stages.index(source)])
        else:
            allowed = ()  # unclassified
        if arrow.target not in allowed:
            bad.append(arrow)
    return bad


def test_every_package_has_a_layer() -> None:
    stages = stage_packages()
    assert not set(stages) & set(FOUNDATION + APPLICATION), stages
    packages = {top_package(module_name(p)) for p in source_files()} - {""}
    unclassified = sorted(packages - set(FOUNDATION + APPLICATION) - set(stages))
    assert not unclassified, f"packages in no layer (add them to FOUNDATION, APPLICATION or the stages): {unclassified}"


def test_imports_follow_the_layers() -> None:
    bad = violations(arrows(), stage_packages())
    assert not bad, "imports against the layering:\n" + "\n".join(map(str, bad))


def test_modules_are_at_most_400_lines() -> None:
    long = {p.relative_to(SRC).as_posix(): n for p in source_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): " + ", ".join(
        f"{path} ({n})" for path, n in sorted(long.items()))


def test_the_checker_sees_every_kind_of_import() -> None:
    """Module-level, function-level, relative, ``from pipeline import x`` and ``importlib`` imports are found."""
    text = ("import pipeline.inference.predictor\n"
            "from pipeline.postprocess import apply_crf\n"
            "from pipeline import cli\n"
            "from ..evaluation import metrics\n"
            "from . import trainer\n"
            "def f():\n"
            "    from pipeline.tracking.tracker import Tracker\n"
            "    importlib.import_module('pipeline.bundle')\n"
            "import numpy\n")
    assert imports_in(text, "pipeline.training.probe") == [
        (1, "pipeline.inference.predictor"), (2, "pipeline.postprocess"), (3, "pipeline.cli"),
        (4, "pipeline.evaluation"), (5, "pipeline.training"), (7, "pipeline.tracking.tracker"), (8, "pipeline.bundle"),
    ]
    assert imports_in("from . import a\nfrom .. import cli\n", "pipeline.training", is_package=True) == [
        (1, "pipeline.training"), (2, "pipeline.cli")]


def test_the_rules() -> None:
    stages = ["data", "training", "inference"]
    cases = {
        Arrow("pipeline/training/trainer.py", 1, "inference"): True,  # a later stage
        Arrow("pipeline/training/trainer.py", 2, "data"): False,  # an earlier stage
        Arrow("pipeline/training/trainer.py", 3, "models"): False,  # the foundation
        Arrow("pipeline/training/trainer.py", 4, "tracking"): True,  # the application
        Arrow("pipeline/config/loader.py", 5, "training"): True,  # foundation → stage
        Arrow("pipeline/config/loader.py", 6, "cli"): True,  # foundation → application
        Arrow("pipeline/config/loader.py", 7, "models"): False,  # foundation → foundation
        Arrow("pipeline/cli.py", 8, "inference"): False,  # the application imports anything
        Arrow("pipeline/newpkg/x.py", 9, "models"): True,  # a package in no layer
        Arrow("pipeline/cli.py", 10, "newpkg"): True,
    }
    assert violations(list(cases), stages) == [a for a, bad in cases.items() if bad]
    assert str(Arrow("pipeline/training/trainer.py", 29, "inference")) == (
        "pipeline/training/trainer.py → pipeline.inference (line 29)")
