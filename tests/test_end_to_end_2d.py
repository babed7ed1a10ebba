"""A 2D workflow (U-Net) through the same engine: Dice threshold and 2D output geometry."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.cli import main
from tests.utils import blob_dataset_2d, tiny_workflow


def test_2d_unet_workflow(tmp_path: Path) -> None:
    manifest = blob_dataset_2d(tmp_path / "data", n_train=4, n_val=1, n_test=2)
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{
        "preprocess": {"orientation": "RAS", "spacing": [0.5, 0.5], "intensity": {"mode": "zscore"},
                       "patch": {"size": [32, 32], "num_samples": 2},
                       "augment": {"rotate_prob": 0.3, "scale_prob": 0.3, "flip_prob": 0.5}},
        "model": {"name": "unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "train.epochs": 15, "train.iterations_per_epoch": 4, "train.val_every": 5,
        "train.optimizer": {"name": "adam", "lr": 0.01},
        "infer": {"roi_size": [32, 32], "overlap": 0.25},
        "postprocess": {"keep_largest_component": True},
    })
    assert main(["run", str(wf), "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dice_mean"] >= 0.75, summary
    doc = json.loads(manifest.read_text())
    for case in doc["test"]:
        src = nib.load(manifest.parent / case["image"])
        pred = nib.load(tmp_path / "run" / "postprocess" / f"{case['id']}.nii.gz")
        assert pred.shape == src.shape and len(pred.shape) == 2
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
    assert (tmp_path / "run" / "evaluate" / "overview.png").stat().st_size > 0
