"""Data-parallel training throughput: one process against ``--nproc`` processes on the same total batch.

Usage:
    python bench/ddp.py [--workflow workflows/unet_cells.yaml] [--nproc 2] [--batch 4] [--epochs 3]
                        [--iterations 10] [--repeats 3] [--set KEY=VALUE ...]

Each repeat trains the workflow from a fresh run folder (``--force``) once in one process with
``train.batch_size=BATCH`` and once with ``pipeline run --nproc N`` and ``train.batch_size=BATCH/N`` per process
(gloo on CPUs, NCCL on GPUs), alternating which goes first so drift in the machine's speed falls on both. Every
process gets ``cpu_count / processes`` threads (``OMP_NUM_THREADS``), so both use the whole machine. Throughput is
patches per second of the train stage (its seconds in ``train/_stage.json``: dataset caching, model set-up and one
final validation included; ``train.val_every`` is set past the last epoch), patches being
``epochs x iterations_per_epoch x total batch x patch.num_samples``. A warm-up run makes the synthetic data first and
is not counted. Prints a Markdown table of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def train_seconds(cmd: list[str], run_dir: Path, threads: int) -> tuple[float, int]:
    """Run ``cmd``; the train stage's seconds and the patches it trained on (all processes together)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    stage = json.loads((run_dir / "train" / "_stage.json").read_text())
    wf = yaml.safe_load((run_dir / "workflow.yaml").read_text())
    t = wf["train"]
    patches = (t["epochs"] * t["iterations_per_epoch"] * t["batch_size"] * stage["record"]["world_size"]
               * wf["preprocess"]["patch"]["num_samples"])
    return float(stage["seconds"]), patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default="workflows/unet_cells.yaml")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    parser.add_argument("--batch", type=int, default=4, help="total batch (divisible by --nproc)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per epoch (per process)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="extra overrides passed to pipeline run")
    args = parser.parse_args()
    if args.batch % args.nproc:
        sys.exit(f"--batch {args.batch} is not divisible by --nproc {args.nproc}")
    cpus = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        tmpdir = Path(tmp)

        def run(nproc: int, name: str) -> tuple[float, int]:
            cmd = [sys.executable, "-m", "pipeline", "run", args.workflow, "--force", "--run-dir", str(tmpdir / name),
                   "--set", f"data.root={tmpdir / 'data'}", "--set", "train.progress=false",
                   "--set", "tracking.enabled=false", "--set", f"train.epochs={args.epochs}",
                   "--set", f"train.iterations_per_epoch={args.iterations}",
                   "--set", f"train.val_every={args.epochs + 1}", "--set", f"train.batch_size={args.batch // nproc}"]
            for s in args.set:
                cmd += ["--set", s]
            if nproc > 1:
                cmd += ["--nproc", str(nproc)]
            return train_seconds(cmd, tmpdir / name, max(1, cpus // nproc))

        run(1, "warmup")  # synthetic data, caches
        seconds: dict[int, list[float]] = {1: [], args.nproc: []}
        patches: dict[int, int] = {}
        for i in range(args.repeats):
            for n in ((1, args.nproc) if i % 2 == 0 else (args.nproc, 1)):
                s, patches[n] = run(n, f"run-{n}-{i}")
                seconds[n].append(s)
                print(f"repeat {i + 1}: {n} process(es) {s:.1f} s, {patches[n] / s:.1f} patches/s", file=sys.stderr)

    print(f"workflow: {args.workflow} {' '.join(args.set)}; total batch {args.batch}, {args.epochs} epochs x "
          f"{args.iterations} iterations; {cpus} CPUs; median of {args.repeats}")
    print("| processes | batch per process | train stage (s), each repeat | median (s) | patches/s (median) |")
    print("| ---: | ---: | --- | ---: | ---: |")
    for n in (1, args.nproc):
        runs = ", ".join(f"{t:.1f}" for t in seconds[n])
        median = statistics.median(seconds[n])
        print(f"| {n} | {args.batch // n} | {runs} | {median:.1f} | {patches[n] / median:.1f} |")
    speedup = statistics.median(seconds[1]) / statistics.median(seconds[args.nproc])
    print(f"speed-up with {args.nproc} processes: {speedup:.2f}x")


if __name__ == "__main__":
    main()
