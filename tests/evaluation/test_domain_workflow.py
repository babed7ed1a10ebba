"""Domain metrics reach summary.json, cases.csv and cases_domain.csv in short 2D runs on generated data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.utils import REPO, tiny_workflow


def small_manifest(tmp: Path, demo: str, shape: list[int]) -> Path:
    doc = json.loads((REPO / "data_manifests" / f"{demo}.json").read_text())
    doc["source"]["shape"] = shape
    doc["data_root"] = str(tmp / "data")
    for split, n in (("training", 3), ("validation", 1), ("test", 2)):
        doc[split] = doc[split][:n]
    path = tmp / f"{demo}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("demo", "shape", "patch", "expected"), [
    ("cells2d_demo", [64, 64], [32, 32], {"instance_f1", "mean_matched_iou"}),
    ("oct_demo", [64, 96], [32, 96], {"boundary_mae_px", "boundary_mae_um", "ILM_um", "BM_px"}),
])
def test_domain_metrics_reported(tmp_path: Path, demo: str, shape: list[int], patch: list[int],
                                 expected: set[str]) -> None:
    manifest = small_manifest(tmp_path, demo, shape)
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "preprocess": {"orientation": "RAS", "spacing": None, "patch": {"size": patch, "num_samples": 1}},
        "model": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
        "infer": {"roi_size": patch, "overlap": 0.25}, "train.epochs": 1})
    assert main(["run", str(wf), "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert expected <= set(summary["domain"])
    rows = list(csv.DictReader((tmp_path / "run" / "evaluate" / "cases_domain.csv").open()))
    assert len(rows) == 2 and expected <= set(rows[0])
    header = (tmp_path / "run" / "evaluate" / "cases.csv").read_text().splitlines()[0]
    assert ("instance_f1" if "cells" in demo else "boundary_mae_um") in header
