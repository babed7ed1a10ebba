"""``bench/gpu.sh``: the dry run works on a CPU-only machine and lists every check; a real run refuses at once
without CUDA; the parent's bookkeeping (timeouts, reading each check's figure) works without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("cuda-tests", "crf", "infer", "amp", "ddp", "oom-ladder")


def gpu_checks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "bench" / "gpu_checks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_checks"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def gpu_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PYTHON": sys.executable})


def test_dry_run_lists_every_check_and_the_environment() -> None:
    proc = gpu_sh("--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"python {sys.version.split()[0]}" in out
    assert f"torch {torch.__version__}" in out
    for module in ("monai", "pydensecrf", "mlflow"):
        assert f"- {module}: " in out
    for name in CHECKS:
        assert f"- {name}: " in out
    assert "tests/postprocess/test_crf.py" in out and "bench/crf.py --sizes 256x256x128" in out
    assert "--devices cuda" in out and "--child ddp" in out
    if not torch.cuda.is_available():
        assert "CUDA available: no" in out and "CUDA is not available here" in out


def test_dry_run_only() -> None:
    proc = gpu_sh("--dry-run", "--only", "crf")
    assert proc.returncode == 0
    assert "- crf: " in proc.stdout and "- amp: " not in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_without_cuda_quickly() -> None:
    t0 = time.perf_counter()
    proc = gpu_sh()
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert "## GPU checks" not in proc.stdout
    assert time.perf_counter() - t0 < 60


def test_run_check_passes_fails_and_times_out() -> None:
    g = gpu_checks()
    result = {"s_per_iter": 0.05, "loss": 1.25, "scale": 65536.0}
    ok = g.Check("amp", "amp", [[sys.executable, "-c", f"print('noise'); print({json.dumps(result)!r})"]], 30, "x")
    res, figure, passed, _ = g.run_check(ok, 60)
    assert passed and res.startswith("ok") and "0.050 s/iteration" in figure
    nan = g.Check("amp", "amp", [[sys.executable, "-c", "print('{\"s_per_iter\": 1, \"loss\": NaN, \"scale\": 1}')"]],
                  30, "x")
    assert g.run_check(nan, 60)[2] is False
    bad = g.Check("ddp", "ddp", [[sys.executable, "-c", "raise SystemExit(3)"]], 30, "x")
    assert g.run_check(bad, 60)[:3] == ("failed (exit 3)", "-", False)
    t0 = time.perf_counter()
    slow = g.Check("ddp", "ddp", [["bash", "-c", "sleep 30 & sleep 30"]], 2, "x")
    res, _, passed, _ = g.run_check(slow, 60)
    assert not passed and res.startswith("timed out") and time.perf_counter() - t0 < 10


def test_judge_reads_each_figure() -> None:
    g = gpu_checks()
    table = ("| backend | device | size | voxels | median s | Mvoxel/s | peak host MB | peak CUDA MB |\n"
             "|---|---|---|---:|---:|---:|---:|---:|\n")
    cpu = table + "| pydensecrf | cpu | 256x256x128 | 8,388,608 | 42.00 | 0.20 | 3000 | - |\n"
    gpu = table + "| torch | cuda | 256x256x128 | 8,388,608 | 1.00 | 8.39 | 2000 | 900 |\n"
    figure, passed = g.judge("crf", [cpu, gpu])
    assert passed and figure.startswith("42.0x")
    assert g.judge("crf", [cpu, gpu.replace("| 1.00 |", "| 3.00 |")])[1] is False
    assert g.judge("cuda-tests", ["2 passed, 10 deselected in 3.1s", "12 passed in 20s"])[1]
    assert not g.judge("cuda-tests", ["2 skipped, 10 deselected in 3.1s", "12 passed in 20s"])[1]
    infer = json.dumps({"naive_s": 30.0, "ours_s": 10.0, "cases": 6, "agreement": 0.995})
    assert g.judge("infer", [infer]) == ("3.00x (30.0 s vs 10.0 s, 6 cases), labels agree 99.50%", True)
    oom = {"step": "cpu-network", "warnings": 4, "max_diff": 1e-3, "model_device": "cuda:0"}
    assert g.judge("oom-ladder", [json.dumps(oom)])[1]
    assert not g.judge("oom-ladder", [json.dumps({**oom, "step": "halved"})])[1]
    assert g.judge("ddp", ["no json here"]) == ("unreadable output (no JSON result line in the output)", False)
