"""Fixtures shared across test folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.runtime.precision import AUTO_ENV
from tests.utils import blob_dataset, tiny_workflow

# `auto` precision means fp32 in the tests, whichever CPU the runner has: on one with AMX or AVX-512 BF16 it would
# train and infer in bf16, and the figures the tests compare with are fp32 ones. Set here, at import, so the
# commands the tests start as subprocesses inherit it; the tests of the policy itself unset it
# (tests/runtime/test_precision.py), and explicit bf16 is tested on every machine.
os.environ[AUTO_ENV] = "fp32"


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Commands that track to the default store (``pipeline infer`` without ``--tracking-uri``) write to a store
    of the test session, never to ``./mlflow.db`` of the checkout."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


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
