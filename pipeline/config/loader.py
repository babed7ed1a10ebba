"""Read a workflow file into a validated :class:`~pipeline.config.schema.Workflow`.

Steps: safe YAML load → expand ``preset:`` references (a section may name a YAML file whose keys it extends) →
resolve relative paths → apply ``--set`` overrides → validate types, unknown keys, component names and their
arguments, and referenced files. Every problem is collected and reported at once with its dotted path.
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

from pipeline.config.schema import Workflow
from pipeline.errors import ConfigError
from pipeline.registry import Registry, suggest

PRESET_KEY = "preset"
# Constructor arguments the pipeline fills from the manifest; a workflow must not set them.
DERIVED_MODEL_ARGS = ("in_channels", "out_channels", "spatial_dims")


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
        ConfigError: the file is missing, unreadable or not valid YAML.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{what} file not found: {path}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read {what} file: {exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"malformed YAML{where}: {problem}"]) from None


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
        if loc[: len(prefix)] != prefix:
            continue
        node: Any = tree
        rest = loc[len(prefix) :]
        for key in rest[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(rest[-1]), str):
            p = Path(node[rest[-1]]).expanduser()
            node[rest[-1]] = str(p if p.is_absolute() else (base / p).resolve())


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
    where = ".".join((*loc, PRESET_KEY))
    if not isinstance(ref, str):
        problems.append(f"{where}: expected a path to a YAML file, got {ref!r}")
        return node
    preset_path = (file.parent / ref).resolve()
    if preset_path in chain:
        problems.append(f"{where}: preset {preset_path} includes itself")
        return node
    if not preset_path.is_file():
        problems.append(f"{where}: preset file not found: {preset_path}")
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
        raise ConfigError("--set", [f"expected KEY.PATH=VALUE such as train.epochs=2, got {assignment!r}"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if parts in PATH_FIELDS and isinstance(value, str):
        p = Path(value).expanduser()
        value = str(p if p.is_absolute() else (cwd / p).resolve())
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError("--set", [f"{'.'.join(parts[: i + 1])} is not a section, cannot set {key}"])
        node = child
    node[parts[-1]] = value


def _format_pydantic(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*prefix, *err["loc"]))
        if err["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key{_suggest_key(prefix, err['loc'])}")
        elif err["type"] == "missing":
            problems.append(f"{loc}: required key is missing")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict) else "a mapping"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}, got {shown}")
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
    hint = suggest(str(loc[-1]), known)
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
        return [f"{loc}.name: {registry.unknown_message(name)}"]
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
    args_model = create_model(f"{name}_args", __config__={"extra": "forbid", "strict": True}, **fields)  # type: ignore[call-overload]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    problems = [f"{loc}.{k}: set by the pipeline from the manifest; remove it" for k in kwargs if k in derived]
    kwargs = {k: v for k, v in kwargs.items() if k not in derived}
    try:
        args_model(**kwargs)
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                known = sorted(fields)
                problems.append(
                    f"{loc}.{key}: unknown argument for {registry.kind} '{name}' "
                    f"(known: {', '.join(known)}).{suggest(key, known)}"
                )
            else:
                problems.append(f"{loc}.{key}: {err['msg']}, got {err.get('input')!r}")
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
        ConfigError: with every problem found, each with its dotted path.
    """
    path = Path(path).resolve()
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"the workflow must be a mapping of sections, got {type(raw).__name__}"])
    problems: list[str] = []
    tree = _expand_presets(raw, path, (), problems, (path,))
    for assignment in overrides or []:
        try:
            apply_override(tree, assignment, cwd or Path.cwd())
        except ConfigError as exc:
            problems.extend(exc.problems)
    workflow: Workflow | None = None
    try:
        workflow = Workflow.model_validate(tree)
    except ValidationError as exc:
        problems.extend(_format_pydantic(exc))
    if workflow is not None and not problems and on_sections is not None:
        on_sections(workflow)
    from pipeline.losses import LOSSES
    from pipeline.models import MODELS

    problems += check_component(MODELS, tree.get("model"), "model", DERIVED_MODEL_ARGS)
    train = tree.get("train")
    if isinstance(train, dict):
        problems += check_component(LOSSES, train.get("loss"), "train.loss")
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("manifest"), str) and not Path(data["manifest"]).is_file():
        problems.append(f"data.manifest: file not found: {data['manifest']}")
    if workflow is not None and not problems:
        problems += _check_model_builds(workflow)
    if problems or workflow is None:
        raise ConfigError(str(path), problems)
    return LoadedWorkflow(workflow=workflow, source=path)


def _manifest_dims(path: Path) -> int:
    """The manifest's ``spatial_dims`` (3 when absent or unreadable: the prepare stage reports a broken manifest)."""
    import json

    try:
        return int(json.loads(Path(path).read_text()).get("spatial_dims", 3))
    except (OSError, ValueError, TypeError, AttributeError):
        return 3


def _check_model_builds(workflow: Workflow) -> list[str]:
    """Build the model once (channel counts are placeholders) so that argument values the constructor rejects,
    and patch or window sizes it cannot take, are reported before any work starts."""
    from pipeline.errors import PipelineError
    from pipeline.models import build_model
    from pipeline.models.shapes import check_divisible

    dims = _manifest_dims(workflow.data.manifest)
    validation_roi = workflow.train.validation.window(workflow.preprocess.patch.size).roi_size
    problems = [f"{key}: {len(size)} entries, but the data are {dims}D (one entry per spatial axis)"
                for key, size in (("preprocess.patch.size", workflow.preprocess.patch.size),
                                  ("infer.roi_size", workflow.infer.roi_size),
                                  ("train.validation.roi_size", validation_roi),
                                  ("preprocess.spacing", workflow.preprocess.spacing or [0] * dims))
                if len(size) != dims]
    if problems:
        return problems
    try:
        model = build_model(workflow.model.name, workflow.model.kwargs(), 1, 2, spatial_dims=dims)
    except (ValueError, TypeError) as exc:
        return [f"model: {exc}"]
    try:
        check_divisible(model, {"preprocess.patch.size": workflow.preprocess.patch.size,
                                "infer.roi_size": workflow.infer.roi_size,
                                "train.validation.roi_size": validation_roi})
    except PipelineError as exc:
        return [str(exc)]
    return []
