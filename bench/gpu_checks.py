"""Every CUDA check of the project in one run, for a GPU machine: tests, benchmarks against their targets, an AMP
training step, a 1-GPU DDP step and the out-of-memory ladder on a real device. Run through ``bench/gpu.sh``.

Usage:
    bash bench/gpu.sh              # on a GPU machine: run every check, print one Markdown table
    bash bench/gpu.sh --dry-run    # anywhere: report the environment and print the commands, run nothing
    bash bench/gpu.sh --only crf amp

CI has no GPU, so nothing else exercises the CUDA paths; this is the one command to run when a GPU machine is
lent (often for a few minutes, offline). Each check runs in its own subprocess with its own timeout, all within a
total budget (``--budget``, 450 s by default, so the whole run stays under 8 minutes); a check that fails or
times out is reported and the next one runs. The table at the end has one row per check (result, the measured
figure, the target, pass/fail); the exit status is non-zero if any check failed. Without a CUDA device the script
refuses at once (exit 2) instead of reporting every check as failed.

Notes on the checks:

* ``cuda-tests``: the tests that need CUDA are skipped without it (``needs_cuda`` in
  ``tests/postprocess/test_crf.py``); none carries the ``gpu`` marker registered in ``pyproject.toml``, so
  ``pytest -m gpu`` would select nothing. They are selected by file and ``-k cuda``, plus the out-of-memory ladder
  tests; a CUDA test skipped on a GPU machine counts as a failure.
* ``crf``: ``bench/crf.py`` at 256x256x128, pydensecrf on the CPU against the torch backend on CUDA (target
  20x).
* ``infer``: ``bench/infer.py`` runs on the CPU only (its children hard-code ``device="cpu"``), so this check
  reuses its cohort and random V-Net bundle and times, on CUDA, the same naive MONAI loop (model and windows on
  the GPU) against ``pipeline infer``'s engine (target 2x), with the label agreement between the two.
* ``amp``: a few training iterations of a small 3D U-Net under ``torch.autocast`` + ``GradScaler``.
* ``ddp``: ``torch.distributed`` with NCCL, world size 1, one ``DistributedDataParallel`` forward/backward.
* ``oom-ladder``: a case predicted on CUDA through :func:`pipeline.runtime.sliding_window.stitch_with_fallback`
  with a network that runs out of memory whenever it is on the GPU: it must end on the CPU rung, with the model
  back on the GPU and the labels equal to the plain CUDA result.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# The optional and heavy dependencies the checks (or the project) import: (module, distribution).
DEPENDENCIES = [("monai", "monai"), ("pydensecrf", "pydensecrf2"), ("mlflow", "mlflow"), ("nibabel", "nibabel"),
                ("SimpleITK", "SimpleITK"), ("itk", "itk"), ("scipy", "scipy"), ("skimage", "scikit-image"),
                ("ray", "ray"), ("pytest", "pytest")]


@dataclass
class Check:
    name: str
    what: str
    commands: list[list[str]]
    timeout: int
    target: str


def child(name: str, *extra: str) -> list[str]:
    return [PY, str(Path(__file__).resolve().relative_to(ROOT)), "--child", name, *extra]


CHECKS = [
    Check("cuda-tests", "CUDA tests (pytest)",
          [[PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/postprocess/test_crf.py", "-k",
            "cuda and not without_cuda"],
           [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/runtime/test_oom_ladder.py"]],
          90, "all pass, none skipped"),
    Check("crf", "dense CRF 256x256x128: torch on CUDA vs pydensecrf on CPU",
          [[PY, "bench/crf.py", "--sizes", "256x256x128", "--repeats", "1", "--backends", "pydensecrf",
            "--devices", "cpu"],
           [PY, "bench/crf.py", "--sizes", "256x256x128", "--repeats", "3", "--backends", "torch",
            "--devices", "cuda"]],
          170, ">= 20x"),
    Check("infer", "cohort inference on CUDA: pipeline infer vs naive MONAI loop", [child("infer")], 120,
          ">= 2x"),
    Check("amp", "AMP training step (3D U-Net, autocast + GradScaler)", [child("amp")], 45, "loss finite"),
    Check("ddp", "1-GPU DDP step (NCCL, world size 1)", [child("ddp")], 45, "gradients finite"),
    Check("oom-ladder", "OOM ladder on CUDA (network OOM on the GPU -> CPU)", [child("oom")], 30,
          "reaches cpu-network, |dp| <= 1e-2"),
]


# ------------------------------------------------------------------------------------------------ environment
def environment() -> tuple[list[str], bool]:
    """Lines describing the machine, and whether CUDA is usable."""
    lines = [f"python {platform.python_version()} ({PY})", f"platform {platform.platform()}"]
    cuda = False
    try:
        import torch

        lines.append(f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
        cuda = torch.cuda.is_available()
        if cuda:
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            lines.append(f"CUDA available: yes, {len(names)} device(s): {', '.join(names)}")
            lines.append(f"NCCL available: {'yes' if torch.distributed.is_nccl_available() else 'no'}")
        else:
            lines.append("CUDA available: no")
    except ImportError as exc:
        lines.append(f"torch: NOT importable ({exc})")
    for module, dist in DEPENDENCIES:
        if importlib.util.find_spec(module) is None:
            lines.append(f"{module}: missing (pip package {dist})")
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "version unknown"
        lines.append(f"{module}: found ({dist} {version})")
    return lines, cuda


# ------------------------------------------------------------------------------------------------ parent
def run_check(check: Check, budget_left: float) -> tuple[str, str, bool, str]:
    """Run a check's commands; returns (result, figure, passed, log tail)."""
    outputs: list[str] = []
    t0 = time.perf_counter()
    for cmd in check.commands:
        left = min(check.timeout - (time.perf_counter() - t0), budget_left - (time.perf_counter() - t0))
        if left <= 1:
            return f"timed out ({check.timeout} s)", "-", False, "\n".join(outputs)
        # A session of its own: on a timeout the whole tree goes (bench/crf.py and pytest start children).
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            out, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            outputs.append(out or "")
            return f"timed out after {time.perf_counter() - t0:.0f} s", "-", False, "\n".join(outputs)
        outputs.append(out or "")
        if proc.returncode != 0:
            return f"failed (exit {proc.returncode})", "-", False, "\n".join(outputs)
    seconds = time.perf_counter() - t0
    figure, passed = judge(check.name, outputs)
    return f"ok in {seconds:.0f} s" if passed else f"ran in {seconds:.0f} s", figure, passed, "\n".join(outputs)


def _json_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON result line in the output")


def _crf_seconds(text: str, backend: str) -> float:
    """The median seconds of ``backend``'s row of bench/crf.py's table."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0] == backend:
            return float(cells[4])
    raise ValueError(f"no {backend} row in bench/crf.py's table")


def judge(name: str, outputs: list[str]) -> tuple[str, bool]:
    """The figure of a finished check and whether it meets its target."""
    try:
        if name == "cuda-tests":
            text = "\n".join(outputs)
            summary = [line.strip("= ") for line in text.splitlines() if " passed" in line or " skipped" in line]
            skipped = any("skipped" in line for line in summary)  # a CUDA test skipped on a GPU machine
            return "; ".join(summary) or "no summary", bool(summary) and not skipped
        if name == "crf":
            ref, gpu = _crf_seconds(outputs[0], "pydensecrf"), _crf_seconds(outputs[1], "torch")
            ratio = ref / gpu
            return f"{ratio:.1f}x ({ref:.2f} s vs {gpu:.2f} s)", ratio >= 20
        res = _json_line(outputs[0])
        if name == "infer":
            ratio = res["naive_s"] / res["ours_s"]
            return (f"{ratio:.2f}x ({res['naive_s']:.1f} s vs {res['ours_s']:.1f} s, {res['cases']} cases), "
                    f"labels agree {res['agreement'] * 100:.2f}%"), ratio >= 2
        if name == "amp":
            return (f"{res['s_per_iter']:.3f} s/iteration, loss {res['loss']:.4f}, scale {res['scale']:.0f}",
                    math.isfinite(res["loss"]))
        if name == "ddp":
            return f"loss {res['loss']:.4f}, {res['seconds']:.2f} s", bool(res["finite"])
        if name == "oom-ladder":
            passed = (res["step"] == "cpu-network" and res["max_diff"] <= 1e-2
                      and res["model_device"].startswith("cuda"))
            return (f"reached {res['step']} after {res['warnings']} warnings, max |dp| {res['max_diff']:.1e} vs "
                    f"plain CUDA, model back on {res['model_device']}"), passed
    except (ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
        return f"unreadable output ({exc})", False
    return "-", False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="report the environment and the commands; run nothing")
    ap.add_argument("--only", nargs="+", choices=[c.name for c in CHECKS], help="run only these checks")
    ap.add_argument("--budget", type=float, default=450.0, help="total seconds for all checks (default 450)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # children: cpu for a smoke run
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        result = CHILDREN[args.child](args.device)
        print(json.dumps(result))
        return 0

    checks = [c for c in CHECKS if not args.only or c.name in args.only]
    lines, cuda = environment()
    print("## Environment\n")
    for line in lines:
        print(f"- {line}")
    if args.dry_run:
        print(f"\n## Checks (dry run: nothing is run; total budget {args.budget:.0f} s)\n")
        for c in checks:
            print(f"- {c.name}: {c.what}; timeout {c.timeout} s; target {c.target}")
            for cmd in c.commands:
                print(f"    {shlex.join(cmd)}")
        print(f"\nCUDA is {'available' if cuda else 'not available'} here; "
              f"{'bash bench/gpu.sh would run the checks above' if cuda else 'bash bench/gpu.sh needs a CUDA device'}.")
        return 0
    if not cuda:
        print("\nbench/gpu.sh: no CUDA device here (torch.cuda.is_available() is False): the checks need a GPU. "
              "Run it on a GPU machine, or use --dry-run to see what it would run.", file=sys.stderr)
        return 2

    print()
    rows = []
    start = time.perf_counter()
    for c in checks:
        left = args.budget - (time.perf_counter() - start)
        print(f"running {c.name} (timeout {min(c.timeout, max(0, int(left)))} s) ...", file=sys.stderr, flush=True)
        result, figure, passed, log_tail = run_check(c, left)
        if not passed:
            print(f"--- {c.name}: {result}; last output:\n{log_tail[-3000:]}\n---", file=sys.stderr, flush=True)
        rows.append((c, result, figure, passed))
    total = time.perf_counter() - start
    print(f"\n## GPU checks ({total:.0f} s)\n")
    print("| check | result | figure | target | pass/fail |")
    print("|---|---|---|---|---|")
    for c, result, figure, passed in rows:
        print(f"| {c.name}: {c.what} | {result} | {figure} | {c.target} | {'pass' if passed else 'FAIL'} |")
    failed = [c.name for c, _, _, passed in rows if not passed]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; failed: {', '.join(failed)}" if failed
                                                                          else ""))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ children
def child_amp(device_name: str) -> dict:
    """A few mixed-precision training iterations of a small 3D U-Net; seconds per iteration after warm-up."""
    import torch

    from pipeline.losses.dice_ce import dice_ce
    from pipeline.models import build_model

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model("unet", {"channels": [16, 32, 64, 128], "strides": [2, 2, 2]}, 1, 3, 3).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    loss_fn = dice_ce()
    side = 64 if cuda else 32  # 32 for a CPU smoke run
    x = torch.randn(2, 1, side, side, side, device=device)
    y = (x > 0.5).long() + (x > 1.5).long()
    times, loss = [], float("nan")
    for _ in range(8):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16 if cuda else torch.bfloat16):
            out = model(x)
            loss_t = loss_fn(out.float(), y)
        scaler.scale(loss_t).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        loss = float(loss_t.detach())
    steady = times[3:]
    return {"s_per_iter": sum(steady) / len(steady), "loss": loss, "scale": float(scaler.get_scale()) if cuda else 1.0}


def child_ddp(device_name: str) -> dict:
    """One DistributedDataParallel forward/backward with world size 1 (NCCL on CUDA, gloo for a CPU smoke run)."""
    import socket

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.models import build_model

    device = torch.device(device_name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_model("unet", {"channels": [8, 16, 32], "strides": [2, 2]}, 1, 2, 3).to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        x = torch.randn(2, 1, 32, 32, 32, device=device)
        y = (x > 0).long()[:, 0]
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)
        return {"loss": float(loss.detach()), "finite": finite, "seconds": seconds}
    finally:
        dist.destroy_process_group()


def child_oom(device_name: str) -> dict:
    """The out-of-memory ladder on a real device: a network that raises OOM whenever its weights are on the GPU."""
    import logging

    import torch
    from torch import nn

    from pipeline.config.schema import SlidingWindowConfig
    from pipeline.runtime.sliding_window import ProbabilitySink, stitch_with_fallback

    device = torch.device(device_name)

    class OnlyOffDevice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 3, 1)).eval()
            self.refuse = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.refuse and self.net[0].weight.device.type == "cuda":
                raise torch.OutOfMemoryError("CUDA out of memory (simulated by bench/gpu_checks.py)")
            return self.net(x)

    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logging.getLogger("pipeline").addHandler(Keep(logging.WARNING))
    model = OnlyOffDevice().to(device)
    image = torch.randn(1, 40, 96, 96)
    cfg = SlidingWindowConfig(roi_size=[32, 64, 64], overlap=0.5, sw_batch_size=4)
    fallback = ProbabilitySink(image.shape[1:], dtype=torch.float32)
    reached = stitch_with_fallback(model, image, cfg, device, fallback, case="gpu-check")
    model.refuse = False
    plain = ProbabilitySink(image.shape[1:], dtype=torch.float32)  # on the GPU, fp32 (stitch's default)
    stitch_with_fallback(model, image, cfg, device, plain)
    assert fallback.result is not None and plain.result is not None
    max_diff = float((fallback.result - plain.result).abs().max())
    return {"step": reached.step, "warnings": len(warnings), "max_diff": max_diff,
            "model_device": str(next(model.parameters()).device)}


def child_infer(device_name: str, cases: int = 6, shape: tuple[int, int, int] = (192, 192, 24)) -> dict:
    """bench/infer.py's cohort and random V-Net bundle; the naive MONAI loop and ``infer_cohort`` on ``device``
    (one warm-up case each first, not counted)."""
    import tempfile

    import torch

    device = torch.device(device_name)
    cases = int(os.environ.get("GPU_CHECK_INFER_CASES", cases))  # smaller for a CPU smoke run
    if os.environ.get("GPU_CHECK_INFER_SHAPE"):
        shape = tuple(int(n) for n in os.environ["GPU_CHECK_INFER_SHAPE"].split("x"))  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="gpu-check-infer.") as tmp:
        return _infer_in(Path(tmp), device, cases, shape)


def _infer_in(work: Path, device: Any, cases: int, shape: tuple[int, ...]) -> dict:
    import warnings

    sys.path.insert(0, str(ROOT / "bench"))  # a real module: its cohort writer runs in a spawned process
    import infer as bench_infer

    warnings.filterwarnings("ignore")
    bundle_dir = bench_infer.random_bundle(work / "model")
    inputs_dir = work / "cohort"
    bench_infer.make_cohort(inputs_dir, cases + 1, shape, bench_infer.SPACING)
    paths = sorted(inputs_dir.glob("*.nii.gz"))
    warm, inputs = paths[:1], paths[1:]
    dev = str(device)

    # bench/infer.py's two loops, on the GPU. CUDA context, cuDNN autotuning, first-call costs: not counted
    bench_infer.child_naive(bundle_dir, warm, work / "warm_naive", device=dev)
    bench_infer.child_ours(bundle_dir, warm, work / "warm_ours", device=dev)
    naive_s = bench_infer.child_naive(bundle_dir, inputs, work / "out_naive", device=dev)
    ours_s = bench_infer.child_ours(bundle_dir, inputs, work / "out_ours", device=dev)
    agree = bench_infer.agreement(work / "out_ours", work / "out_naive")
    return {"naive_s": naive_s, "ours_s": ours_s, "cases": len(inputs), "agreement": agree}


CHILDREN = {"amp": child_amp, "ddp": child_ddp, "oom": child_oom, "infer": child_infer}


if __name__ == "__main__":
    sys.exit(main())
