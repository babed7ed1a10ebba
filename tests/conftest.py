"""Fixtures shared across test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from tests.utils import blob_dataset, tiny_workflow


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A finished tiny V-Net run (tracked in its own MLflow store): ``(run_dir, manifest, tracking_uri)``."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    manifest = blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=3, affine_keys=("oblique", "lps", "anisotropic"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    wf = tiny_workflow(tmp / "wf.yaml", manifest, **{
        "postprocess": {"keep_largest_component": True},
        "tracking": {"enabled": True, "tracking_uri": uri, "experiment": "tiny"},
    })
    assert main(["run", str(wf), "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run", manifest, uri
