"""Safe YAML parsing for workflow files, presets and ``--set`` values, within a budget.

Hostile input is refused before it costs anything: a YAML file is at most :data:`MAX_YAML_BYTES`, nests at most
:data:`MAX_YAML_DEPTH` levels and, with its aliases expanded, holds at most :data:`MAX_YAML_NODES` values
(:func:`check_yaml_budget` refuses a "billion laughs" alias bomb from the parser's events, before anything is
built). :func:`parse_yaml` parses text, :func:`read_yaml` a file; :func:`_yaml_problem` words a YAML error with
its line and column.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.messages import _cut, _shown
from pipeline.errors import ConfigError

# A workflow file is a few kB of YAML with a few hundred values; these limits are far above that.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 10_000  # values (scalars, lists, mappings) after expanding aliases
MAX_YAML_DEPTH = 32


class YAMLBudgetError(yaml.YAMLError):
    """The YAML document is larger (aliases expanded) or deeper than a workflow can be."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _PythonEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's own scanner and parser (used when PyYAML was built without libyaml), with nesting refused as it
    is scanned: the scanner reads a whole flow collection ([...], {...}) ahead of the parser, in time quadratic
    in its depth."""

    def __init__(self, stream: Any) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # PyYAML names the argument so
        if self.flow_level >= MAX_YAML_DEPTH:
            raise YAMLBudgetError(f"values nest more than {MAX_YAML_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) > 4 * MAX_YAML_DEPTH:  # block nesting (a list item may add two levels)
            raise YAMLBudgetError(f"values nest more than {MAX_YAML_DEPTH} levels deep", self.get_mark())
        return bool(super().add_indent(column))


_LIBYAML = getattr(yaml, "__with_libyaml__", False)
# The parser of the budget check (events only) and the loader: libyaml's (C, as yaml.CSafeLoader) when PyYAML has it.
EVENTS: type = yaml.CSafeLoader if _LIBYAML else _PythonEvents


class _Loader(yaml.CSafeLoader if _LIBYAML else yaml.SafeLoader):  # type: ignore[misc]
    """The safe loader, refusing integers of more than 100 digits (Python refuses to convert more than 4300 with a
    ValueError from inside the loader; no workflow number has more than a few dozen), and reporting a value its tag
    cannot hold (``2001-02-30``, ``!!int x``, ``!!bool maybe``: a ValueError or KeyError from inside PyYAML) as a
    YAML error with its line and column."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
            kind = str(node.tag).rsplit(":", 1)[-1]
            value = f" {_shown(node.value, 40)}" if isinstance(node.value, str) else ""
            why = f" ({_cut(str(exc), 80)})" if type(exc) is ValueError else ""  # others: PyYAML's internals
            raise yaml.constructor.ConstructorError(
                None, None, f"the {kind} value{value} cannot be read{why}", node.start_mark) from None

    def construct_yaml_int(self, node: Any) -> int:
        if len(node.value) > 100:
            raise YAMLBudgetError(f"a number of {len(node.value)} digits; no workflow value is that large",
                                  node.start_mark)
        return int(super().construct_yaml_int(node))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def check_yaml_budget(text: str, events: type | None = None) -> None:
    """Refuse a YAML document whose values, aliases expanded, exceed :data:`MAX_YAML_NODES`, or that nests
    deeper than :data:`MAX_YAML_DEPTH` levels, from its parser events alone (before anything is composed).

    A YAML alias (``*name``) reuses an anchored node: PyYAML keeps one copy, but everything after loading (merging
    presets, validating, printing) sees it expanded, so nine nested lists of nine aliases are 387 million values
    in 1.4 kB. Each anchored node's expanded size is recorded when it ends; an alias adds the size of the node it
    names, and an alias inside the node it names (an infinite value) is refused.

    Args:
        text: the document.
        events: the class whose events are counted (default :data:`EVENTS`).

    Raises:
        YAMLBudgetError: with the line and column where the budget ran out; yaml.YAMLError: malformed YAML.
    """
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = []  # [anchor, expanded size so far] of each open collection
    total = 0
    for event in yaml.parse(text, Loader=events or EVENTS):
        if isinstance(event, yaml.AliasEvent):
            size = sizes.get(event.anchor)
            if size is None and any(frame[0] == event.anchor for frame in stack):
                raise YAMLBudgetError(f"the alias *{_cut(str(event.anchor), 40)} is inside the node it names (an "
                                      "infinitely deep value)", event.start_mark)
            size = size or 1  # an undefined alias: the loader reports it
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            stack.append([event.anchor, 1])
            if len(stack) > MAX_YAML_DEPTH:
                raise YAMLBudgetError(f"values nest more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
            if total > MAX_YAML_NODES:
                raise YAMLBudgetError(_too_many(), event.start_mark)
            continue
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
            if anchor is not None:
                sizes[anchor] = size
            if stack:
                stack[-1][1] += size
            continue
        else:
            continue
        total += size
        if stack:
            stack[-1][1] += size
        if total > MAX_YAML_NODES:
            raise YAMLBudgetError(_too_many(), event.start_mark)


def _too_many() -> str:
    return (f"the document holds more than {MAX_YAML_NODES} values once its aliases (*name) are expanded; a "
            "workflow needs far fewer: write the values out, or use fewer nested aliases")


def parse_yaml(text: str) -> Any:
    """Parse one YAML document safely, within the limits of :func:`check_yaml_budget`.

    Raises:
        yaml.YAMLError: malformed YAML; :class:`YAMLBudgetError` for a document too large or deep.
    """
    check_yaml_budget(text)
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, YAMLBudgetError):
        return f"YAML refused{where}: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        ch = exc.character
        code = ch if isinstance(ch, int) else ch[0] if isinstance(ch, bytes) and ch else ord(ch[0]) if ch else 0
        return f"malformed YAML at character {exc.position}: {exc.reason} (#x{code:04x})"
    return f"malformed YAML{where}: {_cut(problem, 200)}"


def read_yaml(path: Path, what: str = "workflow") -> Any:
    """Read a YAML file with the safe loader; a syntax error names the line and column.

    Raises:
        ConfigError: the file is missing, unreadable, larger than :data:`MAX_YAML_BYTES`, not UTF-8, not valid
            YAML, or too large or deep once its aliases are expanded (:func:`check_yaml_budget`).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a fifo would block, a device never end
            raise ConfigError(str(path), [(f"{path}: the {what} file is not a regular file (a folder, a device or "
                                           "a pipe); give a YAML file")])
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{path}: {what} file not found"]) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(str(path), [f"{path}: cannot read the {what} file ({reason})"]) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(str(path), [(f"{path}: the {what} file is larger than {MAX_YAML_BYTES >> 10} KiB; a "
                                       "workflow is a few kB of YAML (is this the right file?)")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [(f"{path}: the {what} file is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                       f"at offset {exc.start}); save it as UTF-8")]) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"{path}: {_yaml_problem(exc)}"]) from None
