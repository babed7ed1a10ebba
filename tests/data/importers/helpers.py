"""Shared checks of the importer tests: manifests readable by MONAI and by our loader, case look-up."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist

from pipeline.data.manifest import load_manifest

SPLITS = ("training", "validation", "test")


def data_of(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def check_manifest(path: Path, n_cases: int, keys=("image", "label")) -> dict:
    """Readable by MONAI and by our loader; every case in exactly one split; files exist."""
    doc = json.loads(path.read_text())
    ids = []
    for split in SPLITS:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split)
        assert len(items) == len(doc[split])
        for item in items:
            for k in keys:
                assert Path(item[k]).is_file(), (split, k, item[k])
        ids += [e["id"] for e in doc[split]]
    assert len(ids) == len(set(ids)) == n_cases
    if n_cases >= 3:
        assert all(doc[s] for s in SPLITS)
    load_manifest(path)
    return doc


def case_entry(doc: dict, case_id: str) -> dict:
    for split in SPLITS:
        for e in doc[split]:
            if e["id"] == case_id:
                return e
    raise KeyError(case_id)
