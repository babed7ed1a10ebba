"""Data manifests: the Medical Segmentation Decathlon ``dataset.json`` format, extended.

The file stays readable by ``monai.data.load_decathlon_datalist``; the pipeline also uses per-case ``id``,
``fold`` and ``spacing``, and the top-level ``domain``, ``spatial_dims``, ``labels``, ``channel_names``,
``source`` (a download with its checksum, or a ``generator`` that writes synthetic cases on first use) and
``data_root`` (where the case paths start, relative to the manifest; default its own folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError

SPLITS = ("training", "validation", "test")
# Per-case files besides image and label that domain metrics use: instance labels (cells), boundary rows (OCT).
EXTRA_FILES = ("instances", "boundaries")


@dataclass(frozen=True)
class Case:
    """One labelled case of a split."""

    id: str
    image: Path
    label: Path | None
    split: str
    fold: int | None = None
    extras: dict[str, Path] = field(default_factory=dict)


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


def case_id(entry: dict[str, Any]) -> str:
    """A case's id: its ``id``, else its image file name without extensions (as MSD names cases)."""
    return str(entry.get("id") or Path(str(entry["image"])).name.split(".")[0])


def load_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Parse and check a manifest.

    Args:
        path: the manifest JSON.
        root: folder the relative image paths start from (default: the manifest's ``data_root``, itself relative
            to the manifest's folder, else the manifest's folder).

    Raises:
        DataError: missing or malformed file, missing keys, labels not 0..N-1, duplicate case ids.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON manifest ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a manifest is a JSON object with 'labels' and split lists")
    problems: list[str] = []
    try:
        labels = {int(k): str(v) for k, v in dict(doc.get("labels", {})).items()}
    except (TypeError, ValueError):
        labels = {}
        problems.append("'labels' must map integer strings to names, e.g. {\"0\": \"background\", \"1\": \"PZ\"}")
    if labels and sorted(labels) != list(range(len(labels))):
        problems.append(f"'labels' must be numbered 0..N-1 without gaps, got {sorted(labels)}")
    if not labels and not problems:
        problems.append("'labels' is missing or empty")
    channels_raw = doc.get("channel_names") or doc.get("modality") or {"0": "image"}
    channels = [str(channels_raw[k]) for k in sorted(channels_raw, key=int)]
    if root is not None:
        base = Path(root)
    elif isinstance(doc.get("data_root"), str):
        base = path.parent / doc["data_root"]
    else:
        base = path.parent
    cases: dict[str, list[Case]] = {}
    seen: set[str] = set()
    for split in SPLITS:
        entries = doc.get(split, [])
        if not isinstance(entries, list):
            problems.append(f"'{split}' must be a list of cases")
            continue
        out = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "image" not in e or "label" not in e:
                problems.append(f"{split}[{i}]: each case needs 'image' and 'label' paths")
                continue
            cid = case_id(e)
            if cid in seen:
                problems.append(f"{split}[{i}]: duplicate case id '{cid}'")
            seen.add(cid)
            out.append(
                Case(
                    id=cid,
                    image=(base / str(e["image"])).resolve(),
                    label=(base / str(e["label"])).resolve(),
                    split=split,
                    fold=e.get("fold"),
                    extras={k: (base / str(e[k])).resolve() for k in EXTRA_FILES if isinstance(e.get(k), str)},
                )
            )
        cases[split] = out
    if not problems and not cases.get("training"):
        problems.append("the 'training' split is empty; run the dataset's fetch or import command first")
    if not problems and not cases.get("test"):
        problems.append("the 'test' split is empty: evaluation needs labelled test cases")
    if problems:
        raise DataError(f"{path}: invalid manifest:\n" + "\n".join(f"  - {p}" for p in problems))
    return Manifest(
        path=path.resolve(),
        root=base.resolve(),
        name=str(doc.get("name", path.stem)),
        labels=labels,
        channels=channels,
        spatial_dims=int(doc.get("spatial_dims", 3)),
        source=dict(doc.get("source") or {}),
        domain=str(doc.get("domain", "")),
        cases=cases,
    )
