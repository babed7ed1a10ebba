"""Read a workflow file into a validated :class:`~pipeline.config.schema.Workflow`.

Steps: safe YAML load → expand ``preset:`` references (a section may name a YAML file whose keys it extends) →
resolve relative paths → apply ``--set`` overrides → validate types, ranges, unknown keys, component names and
their arguments, and referenced files → check the values that depend on the data against the manifest (spatial
dimensions, class numbers) → build the model on PyTorch's meta device (shapes only, no memory) to check its
arguments, its size and its stride. Every problem is collected and reported at once with its dotted path.

Hostile input is refused before it costs anything: YAML files (workflows, presets, ``--set`` values) are at most
:data:`MAX_YAML_BYTES`, nest at most :data:`MAX_YAML_DEPTH` levels and, with their aliases expanded, hold at most
:data:`MAX_YAML_NODES` values (:func:`check_yaml_budget` refuses a "billion laughs" alias bomb from the parser's
events, before anything is built); values shown in messages are cut to a few dozen characters.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import re
import reprlib
import stat
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, create_model

from pipeline.config.schema import Workflow
from pipeline.errors import ConfigError
from pipeline.registry import Registry, suggest

PRESET_KEY = "preset"
# Constructor arguments the pipeline fills from the manifest; a workflow must not set them.
DERIVED_MODEL_ARGS = ("in_channels", "out_channels", "spatial_dims")

# A workflow file is a few kB of YAML with a few hundred values; these limits are far above that.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 10_000  # values (scalars, lists, mappings) after expanding aliases
MAX_YAML_DEPTH = 32
MAX_PROBLEMS = 20  # problems listed in one error; the rest are counted
MAX_SHOWN = 80  # characters of a value shown in a message
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` for a message: a short repr (long strings, lists and deep nesting abbreviated)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxset, r.maxlevel = limit, limit, 8, 8, 4, 4, 3
    r.maxlong = 40
    text = r.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _cut(text: str, limit: int = 300) -> str:
    """A message or path for a message, cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _key(part: Any) -> str:
    """One part of a dotted path for a message: plain keys and list indices as they are, others quoted; cut."""
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)
    if isinstance(part, str) and _KEY.fullmatch(part):
        return _cut(part, 60)
    return _shown(part, 40)


def _dotted(*parts: Any) -> str:
    return ".".join(_key(p) for p in parts)


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


@dataclass(frozen=True)
class LoadedWorkflow:
    """A validated workflow and where it came from."""

    workflow: Workflow
    source: Path

    def resolved(self) -> dict[str, Any]:
        """The fully resolved config as plain JSON-able data (presets merged, paths absolute)."""
        return self.workflow.model_dump(mode="json")


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


def _path_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Dotted locations of every ``Path``-typed field in ``model`` (recursing into sub-models)."""
    out: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        for t in _flatten(field.annotation):
            if t is Path:
                out.add((*prefix, name))
            elif isinstance(t, type) and issubclass(t, BaseModel):
                out |= _path_fields(t, (*prefix, name))
    return out


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return [t for a in typing.get_args(annotation) for t in _flatten(a)]
    return [annotation]


PATH_FIELDS = _path_fields(Workflow)


def _resolve_paths(tree: dict[str, Any], base: Path, prefix: tuple[str, ...] = ()) -> None:
    """Make relative path values in ``tree`` (a section found at ``prefix``) absolute against ``base``."""
    for loc in PATH_FIELDS:
        if len(loc) <= len(prefix) or loc[: len(prefix)] != prefix:  # not inside this section (or the path itself)
            continue
        node: Any = tree
        rest = loc[len(prefix) :]
        for key in rest[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(rest[-1]), str):
            node[rest[-1]] = _absolute(node[rest[-1]], base)


def _absolute(value: str, base: Path) -> str:
    """``value`` as an absolute path from ``base``; unchanged when it cannot be one (the schema then refuses
    it: a NUL byte, an unknown ``~user``, a name too long)."""
    try:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    except (OSError, RuntimeError, ValueError):
        return value


def _exists(path: Any) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def _is_file(path: Any) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _expand_presets(
    node: Any, file: Path, loc: tuple[str, ...], problems: list[str], chain: tuple[Path, ...]
) -> Any:
    """Replace ``preset: FILE`` in every mapping by FILE's keys, overridden by the mapping's own keys."""
    if not isinstance(node, dict):
        return node
    node = {k: _expand_presets(v, file, (*loc, str(k)), problems, chain) for k, v in node.items()}
    _resolve_paths(node, file.parent, loc)
    if PRESET_KEY not in node:
        return node
    ref = node.pop(PRESET_KEY)
    where = _dotted(*loc, PRESET_KEY)
    if not isinstance(ref, str):
        problems.append(f"{where}: expected a path to a YAML file, got {_shown(ref)}")
        return node
    try:
        preset_path = (file.parent / Path(ref).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError):
        problems.append(f"{where}: not a usable file path: {_shown(ref)}")
        return node
    if preset_path in chain:
        problems.append(f"{where}: preset {preset_path} includes itself")
        return node
    if len(chain) > MAX_YAML_DEPTH:
        problems.append(f"{where}: presets include presets more than {MAX_YAML_DEPTH} levels deep")
        return node
    if not _is_file(preset_path):
        exists = _exists(preset_path)
        problems.append(f"{where}: preset {_cut(str(preset_path))} is not a regular file (a folder or a device)"
                        if exists else f"{where}: preset file not found: {_cut(str(preset_path))}")
        return node
    try:
        content = read_yaml(preset_path, "preset")
    except ConfigError as exc:
        problems.extend(f"{where}: {p}" for p in exc.problems)
        return node
    if not isinstance(content, dict):
        problems.append(f"{where}: preset {preset_path} must hold a mapping of keys, got {type(content).__name__}")
        return node
    content = _expand_presets(content, preset_path, loc, problems, (*chain, preset_path))
    return _deep_merge(content, node)


def apply_override(tree: dict[str, Any], assignment: str, cwd: Path) -> None:
    """Apply one ``--set a.b.c=VALUE`` (VALUE parsed as YAML; a relative path is taken from ``cwd``).

    Raises:
        ConfigError: the assignment is malformed.
    """
    key, sep, raw = assignment.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or not all(parts):
        raise ConfigError("--set", [(f"--set: expected KEY.PATH=VALUE such as train.epochs=2, got "
                                     f"{_shown(assignment)}")])
    bad = [p for p in parts if _KEY.fullmatch(p) is None]
    if bad or len(parts) > MAX_YAML_DEPTH:
        raise ConfigError("--set", [(f"--set {_shown(key.strip())}: keys are names of letters, digits and '_' "
                                     f"joined by '.', such as train.epochs; {_shown(bad[0]) if bad else 'this'} is "
                                     "not")])
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError("--set", [f"{_dotted(*parts)}: the --set value is longer than {MAX_YAML_BYTES >> 10} KiB"])
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except YAMLBudgetError as exc:
        raise ConfigError("--set", [f"{_dotted(*parts)}: the --set value: {_yaml_problem(exc)}"]) from None
    except yaml.YAMLError:
        value = raw
    if parts in PATH_FIELDS and isinstance(value, str):
        value = _absolute(value, cwd)
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError("--set", [(f"{'.'.join(parts[: i + 1])}: not a section, so --set {key.strip()} cannot "
                                         "set a key inside it")])
        node = child
    node[parts[-1]] = value


def _format_pydantic(exc: ValidationError, prefix: tuple[str, ...] = (), limit: int | None = None) -> list[str]:
    """Pydantic's errors as problems (only the first ``limit``: the caller counts the rest)."""
    problems = []
    for err in exc.errors()[:limit]:
        loc = _dotted(*prefix, *err["loc"]) or "(the workflow)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key{_suggest_key(prefix, err['loc'])}")
        elif err["type"] == "missing":
            problems.append(f"{loc}: required key is missing")
        else:
            got = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
                msg = "should be a section (a mapping of keys)"
            elif err["type"] == "path_type":
                msg = "should be a file path"
            if isinstance(got, dict) and err["type"] == "value_error":  # a check of the section: names its values
                problems.append(f"{loc}: {msg}")
            else:
                shown = _shown(got) if not isinstance(got, dict) else "a mapping"
                problems.append(f"{loc}: {msg}" if err["type"] == "value_error" and shown in msg
                                else f"{loc}: {msg}, got {shown}")
    return problems


def _suggest_key(prefix: tuple[str, ...], loc: tuple[Any, ...]) -> str:
    model: Any = Workflow
    for part in (*prefix, *loc[:-1]):
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        sub = [t for t in _flatten(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)] if field else []
        if not sub:
            return ""
        model = sub[0]
    known = sorted(model.model_fields)
    hint = suggest(str(loc[-1]), known) if len(str(loc[-1])) <= 100 else ""
    return f" (known keys: {', '.join(known)}).{hint}" if known else ""


def check_component(
    registry: Registry[Any], spec: Any, loc: str, derived: tuple[str, ...] = ()
) -> list[str]:
    """Check that ``spec`` (a mapping with ``name`` and keyword arguments) names a registered component whose
    constructor accepts the given arguments with the right types."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return []  # the schema reports the missing or mistyped name
    name = spec["name"]
    if name not in registry:
        if len(name) > MAX_SHOWN:
            return [f"{loc}.name: unknown {registry.kind} {_shown(name)}; known: {', '.join(registry.names())}"]
        return [f"{loc}.name: {registry.unknown_message(name)}"]
    odd = [k for k in spec if not isinstance(k, str) or _KEY.fullmatch(k) is None]
    if odd:
        return [f"{loc}.{_key(k)}: not an argument name (arguments are names of letters, digits and '_')"
                for k in odd]
    factory = registry.get(name)
    params = inspect.signature(factory).parameters
    fields: dict[str, Any] = {}
    for pname, p in params.items():
        if pname in derived or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        if isinstance(ann, str):
            ann = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory).get(pname, Any)
        fields[pname] = (ann, ... if p.default is inspect.Parameter.empty else p.default)
    args_model = create_model(f"{name}_args", __config__={"extra": "forbid", "strict": True,  # type: ignore[call-overload]
                                                            "allow_inf_nan": False}, **fields)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    problems = [f"{loc}.{k}: set by the pipeline from the manifest; remove it" for k in kwargs if k in derived]
    kwargs = {k: v for k, v in kwargs.items() if k not in derived}
    try:
        args_model(**kwargs)
    except ValidationError as exc:
        for err in exc.errors():
            key = _dotted(*err["loc"])
            if err["type"] == "extra_forbidden":
                known = sorted(fields)
                problems.append(
                    f"{loc}.{key}: unknown argument for {registry.kind} '{name}' "
                    f"(known: {', '.join(known)}).{suggest(key, known)}"
                )
            else:
                problems.append(f"{loc}.{key}: {err['msg']}, got {_shown(err.get('input'))}")
    return problems


def load_workflow(path: str | Path, overrides: list[str] | None = None, cwd: Path | None = None,
                  on_sections: Callable[[Workflow], None] | None = None) -> LoadedWorkflow:
    """Read, expand, override and validate a workflow file.

    Args:
        path: the workflow YAML.
        overrides: ``KEY.PATH=VALUE`` assignments applied after presets (``--set``).
        cwd: folder that relative override paths start from (default: the current directory).
        on_sections: called with the workflow once its sections are valid, before the model and loss checks
            import PyTorch (seconds): ``pipeline run`` starts its tracking process then.

    Returns:
        The validated workflow.

    Raises:
        ConfigError: with every problem found (at most :data:`MAX_PROBLEMS` listed), each with its dotted path.
    """
    path = Path(path).resolve()
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [(f"{path}: the workflow must be a mapping of sections (data, preprocess, "
                                       f"model, ...), got {'nothing' if raw is None else type(raw).__name__}")])
    problems: list[str] = []
    tree = _expand_presets(raw, path, (), problems, (path,))
    for assignment in overrides or []:
        try:
            apply_override(tree, assignment, cwd or Path.cwd())
        except ConfigError as exc:
            problems.extend(exc.problems)
    workflow: Workflow | None = None
    unlisted = 0
    try:
        workflow = Workflow.model_validate(tree)
    except ValidationError as exc:
        problems.extend(_format_pydantic(exc, limit=MAX_PROBLEMS))
        unlisted = max(exc.error_count() - MAX_PROBLEMS, 0)
    if workflow is not None and not problems and on_sections is not None:
        on_sections(workflow)
    from pipeline.losses import LOSSES
    from pipeline.models import MODELS

    problems += check_component(MODELS, tree.get("model"), "model", DERIVED_MODEL_ARGS)
    train = tree.get("train")
    if isinstance(train, dict):
        problems += check_component(LOSSES, train.get("loss"), "train.loss")
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("manifest"), str) and not _is_file(data["manifest"]):
        problems.append(f"data.manifest: {_cut(data['manifest'])} is not a regular file (a folder or a device)"
                        if _exists(data["manifest"]) else f"data.manifest: file not found: {_cut(data['manifest'])}")
    if workflow is not None and not problems:
        keys, manifest_problems = read_manifest_keys(workflow.data.manifest)
        problems += manifest_problems
        if keys is not None:
            problems += _check_against_data(workflow, keys)
        if keys is not None and not problems:
            problems += _check_model_builds(workflow, keys)
    if problems or workflow is None:
        more = len(problems) - MAX_PROBLEMS + unlisted
        if more > 0:
            problems = [*problems[:MAX_PROBLEMS], f"{path}: {more} more problem(s) not listed; fix these first"]
        raise ConfigError(str(path), problems)
    return LoadedWorkflow(workflow=workflow, source=path)


@dataclass(frozen=True)
class ManifestKeys:
    """What the workflow's checks need from its manifest (the prepare stage reads and checks the whole file)."""

    path: Path
    spatial_dims: int
    labels: dict[int, str]
    channels: int


def read_manifest_keys(path: Path) -> tuple[ManifestKeys | None, list[str]]:
    """The manifest's ``spatial_dims`` (default 3), ``labels`` and channel count, read defensively.

    Returns:
        The keys, or None with the problems (each starting with ``data.manifest``, naming the file and the rule).
    """
    from pipeline.data.manifest import MAX_LABELS, read_manifest_document
    from pipeline.errors import DataError

    where = f"data.manifest: {path}"
    try:  # the one definition of a readable manifest file (size, UTF-8, JSON, nesting)
        doc = read_manifest_document(Path(path))
    except DataError as exc:
        return None, [f"data.manifest: {exc}"]
    if not isinstance(doc, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(doc), "number")
        return None, [(f"{where}: a manifest is a JSON object with 'labels' and the split lists 'training', "
                       f"'validation' and 'test', not a JSON {kind}")]
    problems: list[str] = []
    dims = doc.get("spatial_dims", 3)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in (2, 3):
        problems.append(f"{where}: 'spatial_dims' must be the number 2 or 3, got {_shown(dims)}")
    labels_raw = doc.get("labels")
    labels: dict[int, str] = {}
    if isinstance(labels_raw, dict) and labels_raw and all(
            isinstance(k, str) and re.fullmatch(r"0|[1-9][0-9]*", k) for k in labels_raw) and len(labels_raw) <= MAX_LABELS:
        labels = {int(k): str(v) for k, v in labels_raw.items()}
    if not labels or sorted(labels) != list(range(len(labels))):
        problems.append(f"{where}: 'labels' must map the label values 0, 1, ..., N-1 (as strings) to class names, "
                        f"e.g. {{\"0\": \"background\", \"1\": \"tumour\"}}; got {_shown(labels_raw)}")
    channels = next((doc[k] for k in ("channel_names", "modality") if doc.get(k) is not None), None)
    n_channels = len(channels) if isinstance(channels, dict) and channels else 1
    if problems:
        return None, problems
    return ManifestKeys(Path(path), int(dims), labels, n_channels), []


def _check_against_data(workflow: Workflow, keys: ManifestKeys) -> list[str]:
    """Values that must fit the data: one size entry per spatial axis, windows within the voxel budget, axes
    that exist, classes that are labels of the manifest."""
    dims = keys.spatial_dims
    pre, infer, val = workflow.preprocess, workflow.infer, workflow.train.validation
    validation_roi = val.roi_size or pre.patch.size
    problems = [f"{key}: {len(size)} entries, but the data are {dims}D (one entry per spatial axis), got {size}"
                for key, size in (("preprocess.patch.size", pre.patch.size),
                                  ("infer.roi_size", infer.roi_size),
                                  ("train.validation.roi_size", validation_roi),
                                  ("preprocess.spacing", pre.spacing or [1.0] * dims))
                if len(size) != dims]
    budget = workflow.data.max_voxels
    for key, size in (("preprocess.patch.size", pre.patch.size), ("infer.roi_size", infer.roi_size),
                      ("train.validation.roi_size", validation_roi)):
        if math.prod(size) > budget:
            problems.append(f"{key}: a window of {size} is {math.prod(size):,} voxels, more than data.max_voxels "
                            f"({budget:,}, the largest scan read); use a smaller window")
    axes = ", ".join(map(str, range(dims)))
    for key, values in (("preprocess.augment.flip_axes", pre.augment.flip_axes),
                        ("infer.tta_flip_axes", infer.tta_flip_axes),
                        ("train.validation.tta_flip_axes", val.tta_flip_axes)):
        bad = [a for a in values if a >= dims]
        if bad:
            problems.append(f"{key}: axis {bad[0]} does not exist in {dims}D data (the spatial axes are {axes}), "
                            f"got {values}")
    classes = workflow.postprocess.keep_largest_component
    if isinstance(classes, list):
        unknown = [c for c in classes if c not in keys.labels or c == 0]
        if unknown:
            known = ", ".join(f"{c} ({_cut(n, 30)})" for c, n in sorted(keys.labels.items()) if c)
            problems.append(f"postprocess.keep_largest_component: class {unknown[0]} is not a foreground label of "
                            f"the manifest {keys.path} (its classes: {known or 'none'}), got {classes}")
    return problems


def _check_model_builds(workflow: Workflow, keys: ManifestKeys) -> list[str]:
    """Build the model on the meta device (shapes without memory, channel counts from the manifest) so that
    argument values the constructor rejects, a model too large to allocate, and patch or window sizes it cannot
    take, are reported before any work starts."""
    from pipeline.errors import PipelineError
    from pipeline.models.shapes import ModelTooLarge, build_on_meta, check_divisible

    validation_roi = workflow.train.validation.roi_size or workflow.preprocess.patch.size
    name = workflow.model.name
    try:
        model = build_on_meta(name, workflow.model.kwargs(), keys.channels, max(len(keys.labels), 2),
                              spatial_dims=keys.spatial_dims)
    except ModelTooLarge as exc:
        return [f"model: {exc}"]
    except (ValueError, TypeError) as exc:
        return [f"model: {_cut(str(exc))}"]
    except Exception as exc:  # noqa: BLE001 - a constructor's own failure on these argument values
        return [f"model: '{name}' cannot be built with these arguments: {_cut(str(exc), 200)}"]
    try:
        check_divisible(model, {"preprocess.patch.size": workflow.preprocess.patch.size,
                                "infer.roi_size": workflow.infer.roi_size,
                                "train.validation.roi_size": validation_roi})
    except PipelineError as exc:
        return [str(exc)]
    return []
