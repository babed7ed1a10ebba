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

The parts live beside this module and are importable from here too: the YAML parsing and its budget in
:mod:`pipeline.config.yaml_budget`, the checks against the manifest and the meta-device model build in
:mod:`pipeline.config.data_checks`, and how values and locations are shown in :mod:`pipeline.config.messages`.
"""

from __future__ import annotations

import copy
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, create_model

# Also imported from here (by the command line, the engine and the tests): the names of the loader's parts.
from pipeline.config.data_checks import (  # noqa: F401
    ManifestKeys,
    _check_against_data,
    _check_model_builds,
    read_manifest_keys,
)
from pipeline.config.messages import _KEY, MAX_SHOWN, _cut, _dotted, _key, _shown
from pipeline.config.schema import Workflow
from pipeline.config.yaml_budget import (  # noqa: F401
    EVENTS,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    YAMLBudgetError,
    _Loader,
    _PythonEvents,
    _yaml_problem,
    check_yaml_budget,
    parse_yaml,
    read_yaml,
)
from pipeline.errors import ConfigError
from pipeline.registry import Registry, suggest

PRESET_KEY = "preset"
# Constructor arguments the pipeline fills from the manifest; a workflow must not set them.
DERIVED_MODEL_ARGS = ("in_channels", "out_channels", "spatial_dims")
MAX_PROBLEMS = 20  # problems listed in one error; the rest are counted


@dataclass(frozen=True)
class LoadedWorkflow:
    """A validated workflow and where it came from."""

    workflow: Workflow
    source: Path

    def resolved(self) -> dict[str, Any]:
        """The fully resolved config as plain JSON-able data (presets merged, paths absolute)."""
        return self.workflow.model_dump(mode="json")


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
            msg = _cut(err["msg"].removeprefix("Value error, "))  # a validator may echo a long value
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
