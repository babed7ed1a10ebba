"""The shipped prostate workflow runs on a fetched MSD manifest (two channels: T2 + ADC) with one override."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from tests.data.fetchers.helpers import make_tar, md5_of
from tests.utils import REPO


def test_fetch_then_run_the_prostate_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = make_tar(tmp_path, n_cases=6)
    root = tmp_path / "msd"
    assert main(["data", "fetch", "msd-prostate", "--root", str(root), "--archive", str(archive),
                 "--md5", md5_of(archive), "--quiet"]) == 0
    manifest = root / "msd_prostate.json"
    assert f"--set data.manifest={manifest}" in capsys.readouterr().out

    # The one override that matters is data.manifest; the rest only make the run take seconds.
    code = main(["run", str(REPO / "workflows" / "vnet_prostate.yaml"), "--run-dir", str(tmp_path / "run"),
                 "--set", f"data.manifest={manifest}",
                 "--set", "train.epochs=1", "--set", "train.iterations_per_epoch=1", "--set", "model.base_channels=2",
                 "--set", "tracking.enabled=false", "--set", "train.progress=false"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["classes"]) == {"PZ", "TZ"}
    doc = json.loads(manifest.read_text())
    for case in doc["test"]:
        src = nib.load(root / case["image"])
        pred = nib.load(tmp_path / "run" / "infer" / f"{case['id']}.nii.gz")
        assert src.ndim == 4 and pred.shape == src.shape[:3]
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
