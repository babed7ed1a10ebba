"""A killed batch, rerun, yields every output exactly once, byte-identical to an uninterrupted run, with no
temporary files left; and the Ray executor gives the same outputs and report as the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.cohort.inputs import STATE_DIR
from tests.utils import AFFINES, blob_case, write_nifti

N_CASES = 8


@pytest.fixture(scope="module")
def cohort(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run's model as a bundle, and a folder of scans big enough that a batch takes seconds."""
    run_dir, _, _ = tiny_run
    tmp = tmp_path_factory.mktemp("cohort")
    assert main(["export", str(run_dir), "--out", str(tmp / "model"), "--no-mlflow"]) == 0
    keys = ("oblique", "lps", "anisotropic", "ras")
    for i in range(N_CASES):
        image, _ = blob_case(shape=(72, 64, 40), seed=i)
        write_nifti(tmp / "scans" / f"scan{i}.nii.gz", image, AFFINES[keys[i % len(keys)]])
    return tmp / "model", tmp / "scans"


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.nii.gz")}


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".part" in p.name]


def command(model: Path, scans: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "infer", str(model), "--input", str(scans), "--output", str(out),
            "--quiet"]


def test_kill_then_rerun_gives_identical_outputs(cohort, tmp_path):
    model, scans = cohort
    reference = tmp_path / "reference"
    subprocess.run(command(model, scans, reference), check=True, capture_output=True)
    assert len(outputs(reference)) == N_CASES

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(model, scans, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("scan*.nii.gz")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    written_at_kill = len(list(out.glob("scan*.nii.gz")))
    assert 0 < written_at_kill < N_CASES, "the kill must land in the middle of the batch"
    # A case counts as done once its record follows its output (a kill between the two redoes the case).
    # A kill while a record is written leaves its temporary (".<case>.part.json"): not a record.
    done_at_kill = len([p for p in (out / STATE_DIR).glob("*.json") if ".part" not in p.name])

    rerun = subprocess.run(command(model, scans, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "report.json").read_text())
    statuses = [c["status"] for c in report["cases"]]
    assert statuses.count("skipped") >= done_at_kill and statuses.count("written") + statuses.count("skipped") == N_CASES
    assert outputs(out) == outputs(reference)  # every output once, byte for byte
    assert leftovers(out) == []


def test_sigterm_leaves_no_partial_files(cohort, tmp_path):
    model, scans = cohort
    out = tmp_path / "terminated"
    proc = subprocess.Popen(command(model, scans, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("scan*.nii.gz")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again" in err
    assert leftovers(out) == []


def test_ray_executor_matches_local(cohort, tmp_path):
    ray = pytest.importorskip("ray")
    model, scans = cohort
    local = tmp_path / "local"
    assert main(["infer", str(model), "--input", str(scans), "--output", str(local), "--quiet"]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024**2)
    try:
        distributed = tmp_path / "ray"
        assert main(["infer", str(model), "--input", str(scans), "--output", str(distributed), "--quiet",
                     "--executor", "ray", "--ray-workers", "2"]) == 0
        assert outputs(distributed) == outputs(local)
        rows = lambda d: [(c["case"], c["status"], Path(c["output"]).name)  # noqa: E731
                          for c in json.loads((d / "report.json").read_text())["cases"]]
        assert rows(distributed) == rows(local)
        assert json.loads((distributed / "report.json").read_text())["executor"] == "ray"
        # a rerun on Ray skips what is done, like the local executor
        assert main(["infer", str(model), "--input", str(scans), "--output", str(distributed), "--quiet",
                     "--executor", "ray"]) == 0
        assert {c["status"] for c in json.loads((distributed / "report.json").read_text())["cases"]} == {"skipped"}
    finally:
        ray.shutdown()
