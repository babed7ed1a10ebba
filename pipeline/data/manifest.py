"""Data manifests: the Medical Segmentation Decathlon ``dataset.json`` format, extended.

The file stays readable by ``monai.data.load_decathlon_datalist``; the pipeline also uses per-case ``id``,
``fold`` and ``spacing``, and the top-level ``domain``, ``spatial_dims``, ``labels``, ``channel_names``,
``source`` (a download with its checksum, or a ``generator`` that writes synthetic cases on first use) and
``data_root`` (where the case paths start, relative to the manifest; default its own folder).

A manifest may come from anywhere (edited by hand, downloaded), so :func:`load_manifest` checks it at the edge and
refuses it, with one :class:`~pipeline.errors.DataError` naming the manifest, the key or case and the rule, unless:

- it is a regular file of at most :data:`MAX_MANIFEST_BYTES`, UTF-8 JSON (no ``NaN``/``Infinity``), an object
  nested at most :data:`MAX_DEPTH` levels deep;
- ``labels`` maps ``"0".."N-1"`` to names (at most :data:`MAX_LABELS`: label maps are stored as 8-bit),
  ``channel_names`` (or MSD's ``modality``) maps ``"0".."C-1"`` to names, ``spatial_dims`` is 2 or 3;
- every case is an object with string ``image`` and ``label`` paths, an optional string ``id`` and an optional
  integer ``fold`` (``-1``: not in a cross-validation fold); ``name``, ``domain`` and ``data_root`` are strings,
  ``source`` an object;
- **case ids** (explicit, or derived from the image file name) are safe file names (:data:`CASE_ID_RULE`): they
  name the files a run writes (``preprocess/<id>_image.nii``, ``infer/<id>.nii.gz``), so an id such as
  ``../../x`` would write outside the run folder;
- **every path stays under the data root**: the image, the label and the extra files (``instances``,
  ``boundaries``) are resolved with symlinks followed and must lie under the data root (itself resolved). A path
  that leaves it (``..``, an absolute path elsewhere) or a symlink pointing out of it is refused
  (:data:`ROOT_RULE`); absolute paths inside the root are fine.

The data root is, in order: the ``root`` argument (the workflow's ``data.root``, the user's explicit and trusted
folder), else the manifest's ``data_root`` resolved against the manifest's folder (the manifest author's statement
of where its data lives; the shipped demos use ``../data/NAME``), else the manifest's folder. To use files that
live elsewhere (shared storage), link or mount the whole data folder, not single files, or set ``data.root`` to the
folder that holds them. Run a manifest from an untrusted source with an explicit ``data.root``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.confine import ROOT_RULE, confined_path, confinement_problem, resolve_root  # noqa: F401
from pipeline.errors import DataError
from pipeline.io.jsondoc import MAX_DEPTH, MAX_LABELS, MAX_MANIFEST_BYTES, read_manifest_document  # noqa: F401
from pipeline.io.jsondoc import json_kind as _json_kind
from pipeline.io.jsondoc import show as _show

SPLITS = ("training", "validation", "test")
# Per-case files besides image and label that domain metrics use: instance labels (cells), boundary rows (OCT).
EXTRA_FILES = ("instances", "boundaries")

MAX_CHANNELS = 1024
MAX_ID_LENGTH = 128
MAX_PATH_LENGTH = 4096  # PATH_MAX on Linux
MAX_PROBLEMS_SHOWN = 20

_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_INDEX_KEY = re.compile(r"0|[1-9][0-9]*")
CASE_ID_RULE = (f"a case id is 1-{MAX_ID_LENGTH} characters among letters, digits, '_', '-' and '.', does not start "
                "with '.' and holds no '..' (it names the files a run writes, so it may not hold a folder separator)")


@dataclass(frozen=True)
class Case:
    """One labelled case of a split.

    Attributes:
        entry: the case's object as the manifest holds it (generators read their options from it).
    """

    id: str
    image: Path
    label: Path | None
    split: str
    fold: int | None = None
    extras: dict[str, Path] = field(default_factory=dict)
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest with absolute case paths."""

    path: Path
    root: Path
    name: str
    labels: dict[int, str]
    channels: list[str]
    spatial_dims: int
    source: dict[str, Any]
    domain: str = ""
    cases: dict[str, list[Case]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes including background (labels are 0..N-1)."""
        return max(self.labels) + 1

    def all_cases(self) -> list[Case]:
        return [c for s in SPLITS for c in self.cases.get(s, [])]


def case_id_problem(cid: Any) -> str | None:
    """Why ``cid`` is not a safe case id (see :data:`CASE_ID_RULE`), or ``None`` when it is one."""
    if not isinstance(cid, str):
        return f"a case id must be a string, got a JSON {_json_kind(cid)} {_show(cid)}"
    if not cid:
        return "the case id is empty"
    if len(cid) > MAX_ID_LENGTH:
        return f"the case id {_show(cid)} is {len(cid)} characters long; {CASE_ID_RULE}"
    if _CASE_ID.fullmatch(cid) is None or ".." in cid:
        return f"the case id {_show(cid)} is not a safe file name: {CASE_ID_RULE}"
    return None


def case_id(entry: Mapping[str, Any]) -> str:
    """A case's id: its ``id``, else its image file name without extensions (as MSD names cases).

    The id is not checked here: :func:`load_manifest` checks it with :func:`case_id_problem`.
    """
    explicit = entry.get("id")
    if isinstance(explicit, str) and explicit:
        return explicit
    return Path(str(entry.get("image", ""))).name.split(".")[0]


def _index_map(doc: Mapping[str, Any], key: str, what: str, limit: int, example: str,
               problems: list[str]) -> dict[int, str] | None:
    """A ``{"0": name, "1": name, ...}`` object (``labels``, ``channel_names``) as ``{0: name, ...}``."""
    value = doc[key]
    if not isinstance(value, dict):
        problems.append(f"'{key}' must be an object mapping {what} numbers to names, e.g. {example}; got "
                        f"{_json_kind(value)} {_show(value, 80)}")
        return None
    if not value:
        problems.append(f"'{key}' is empty; it maps {what} numbers to names, e.g. {example}")
        return None
    if len(value) > limit:
        problems.append(f"'{key}' has {len(value)} entries; at most {limit} {what}s are supported")
        return None
    bad_keys = [k for k in value if _INDEX_KEY.fullmatch(k) is None]
    if bad_keys:
        problems.append(f"'{key}' keys must be {what} numbers 0, 1, 2, ... written as strings, e.g. {example}; got "
                        f"{', '.join(_show(k, 40) for k in bad_keys[:5])}")
        return None
    bad_names = [k for k, v in value.items() if not isinstance(v, str) or not v]
    if bad_names:
        shown = ", ".join(f"{k!r}: {_show(value[k], 40)}" for k in bad_names[:5])
        problems.append(f"'{key}' names must be non-empty strings; got {shown}")
        return None
    out = {int(k): v for k, v in value.items()}
    if sorted(out) != list(range(len(out))):
        numbers = sorted(out)
        problems.append(f"'{key}' must be numbered 0..N-1 without gaps, got {numbers[:10]}"
                        f"{' ...' if len(numbers) > 10 else ''}")
        return None
    return dict(sorted(out.items()))


def _optional_str(doc: Mapping[str, Any], key: str, problems: list[str], default: str = "") -> str:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        problems.append(f"'{key}' must be a string, got {_json_kind(value)} {_show(value, 80)}")
        return default
    return value


def _path_value(entry: Mapping[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = entry.get(key)
    if key not in entry:
        problems.append(f"{where}: each case needs 'image' and 'label' paths; '{key}' is missing")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: '{key}' must be a non-empty path string, got {_show(value, 80)}")
        return None
    if len(value) > MAX_PATH_LENGTH or "\x00" in value:
        problems.append(f"{where}: '{key}' {_show(value, 80)} is not a valid path (NUL byte or over "
                        f"{MAX_PATH_LENGTH} characters)")
        return None
    return value


def _case(entry: Any, split: str, i: int, base: Path, seen: set[str], problems: list[str],
          parents: dict[str, str]) -> Case | None:
    where = f"{split}[{i}]"
    if not isinstance(entry, dict):
        problems.append(f"{where}: each case is an object with 'image' and 'label' paths, got "
                        f"{_json_kind(entry)} {_show(entry, 80)}")
        return None
    n_before = len(problems)
    image_value = entry.get("image")
    if entry.get("id") not in (None, ""):
        cid = entry["id"]
        problem = case_id_problem(cid)
        if problem is not None:
            problems.append(f"{where}: {problem}; fix its 'id'")
    elif isinstance(image_value, str) and image_value.strip():
        cid = case_id(entry)
        problem = case_id_problem(cid)
        if problem is not None:
            problems.append(f"{where}: the id derived from its image name {_show(image_value, 80)}: {problem}; "
                            "give the case an 'id' that follows this rule")
    else:
        cid = None
    if isinstance(cid, str) and case_id_problem(cid) is None:
        where = f"{split}[{i}] (case '{cid}')"
        if cid in seen:
            problems.append(f"{where}: duplicate case id '{cid}'")
        seen.add(cid)
    image = _path_value(entry, "image", where, problems)
    label = _path_value(entry, "label", where, problems)
    fold = entry.get("fold")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or fold < -1):
        problems.append(f"{where}: 'fold' must be an integer >= 0 (a cross-validation fold) or -1 (none), got "
                        f"{_show(fold, 80)}")
    paths: dict[str, Path] = {}
    named = [(k, v) for k, v in (("image", image), ("label", label)) if v is not None]
    for key in EXTRA_FILES:
        if entry.get(key) is not None:
            value = _path_value(entry, key, where, problems)
            if value is not None:
                named.append((key, value))
    for key, value in named:
        resolved, problem = confinement_problem(base, value, parents)
        if problem is not None or resolved is None:
            problems.append(f"{where}: '{key}' {_show(value)} {problem}")
        else:
            paths[key] = resolved
    if len(problems) > n_before:
        return None
    return Case(id=str(cid), image=paths["image"], label=paths["label"], split=split, fold=fold,
                extras={k: paths[k] for k in EXTRA_FILES if k in paths}, entry=entry)


def load_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Parse and check a manifest (the rules are in the module docstring).

    Args:
        path: the manifest JSON.
        root: folder the relative image paths start from, and under which every case path must lie (default:
            the manifest's ``data_root``, itself relative to the manifest's folder, else the manifest's folder).

    Raises:
        DataError: missing, oversized or malformed file; missing or malformed keys; labels not 0..N-1; unsafe or
            duplicate case ids; a case path outside the data root. Every problem found is listed, naming the
            manifest, the key or case (``training[3]``) and the rule.
    """
    path = Path(path)
    doc = read_manifest_document(path)
    if not isinstance(doc, dict):
        raise DataError(f"manifest {path}: a manifest is a JSON object with 'labels' and the split lists "
                        f"{', '.join(repr(s) for s in SPLITS)}; got a JSON {_json_kind(doc)}")
    problems: list[str] = []
    example = '{"0": "background", "1": "PZ"}'
    labels: dict[int, str] | None = None
    if doc.get("labels") is None or doc.get("labels") == {}:
        problems.append(f"'labels' is missing or empty; it maps label values to class names, e.g. {example}")
    else:
        labels = _index_map(doc, "labels", "label", MAX_LABELS, example, problems)
    channel_key = next((k for k in ("channel_names", "modality") if doc.get(k) is not None), None)
    channels_map = (_index_map(doc, channel_key, "channel", MAX_CHANNELS, '{"0": "T2", "1": "ADC"}', problems)
                    if channel_key else {0: "image"})
    spatial_dims = 3 if doc.get("spatial_dims") is None else doc["spatial_dims"]
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims not in (2, 3):
        problems.append(f"'spatial_dims' must be the number 2 or 3, got {_show(spatial_dims, 80)}")
    name = _optional_str(doc, "name", problems, path.stem)
    domain = _optional_str(doc, "domain", problems)
    source = doc.get("source")
    if source is not None and not isinstance(source, dict):
        problems.append(f"'source' must be an object (a download or a generator), got {_json_kind(source)} "
                        f"{_show(source, 80)}")
        source = None
    elif isinstance(source, dict) and source.get("generator") is not None and not isinstance(source["generator"], str):
        problems.append(f"'source.generator' must be a generator's name, got {_show(source['generator'], 80)}")
    if root is not None:
        base = resolve_root(root)
    elif doc.get("data_root") is not None:
        data_root = doc["data_root"]
        if not isinstance(data_root, str) or not data_root.strip() or "\x00" in data_root:
            problems.append(f"'data_root' must be a folder path (relative to the manifest's folder), got "
                            f"{_show(data_root, 80)}")
            base = resolve_root(path.parent)
        else:
            try:
                base = resolve_root(path.parent / data_root)
            except DataError as exc:
                problems.append(f"'data_root': {exc}")
                base = resolve_root(path.parent)
    else:
        base = resolve_root(path.parent)
    cases: dict[str, list[Case]] = {}
    seen: set[str] = set()
    parents: dict[str, str] = {}
    for split in SPLITS:
        entries = doc.get(split)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(f"'{split}' must be a list of cases, got {_json_kind(entries)} {_show(entries, 80)}")
            continue
        out = []
        for i, e in enumerate(entries):
            case = _case(e, split, i, base, seen, problems, parents)
            if case is not None:
                out.append(case)
        cases[split] = out
    if not problems and not cases.get("training"):
        problems.append("the 'training' split is empty; run the dataset's fetch or import command first")
    if not problems and not cases.get("test"):
        problems.append("the 'test' split is empty: evaluation needs labelled test cases")
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise DataError(f"{path}: invalid manifest ({len(problems)} problem(s)):\n"
                        + "\n".join(f"  - {p}" for p in shown) + (f"\n  - ... and {more} more" if more else ""))
    assert labels is not None and channels_map is not None
    return Manifest(
        path=path.resolve(),
        root=base,
        name=name,
        labels=labels,
        channels=list(channels_map.values()),
        spatial_dims=int(spatial_dims),
        source=dict(source or {}),
        domain=domain,
        cases=cases,
    )
