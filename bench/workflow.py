"""Time a workflow the way a new user runs it: a fresh run, then unchanged reruns (stage reuse).

Usage:
    python bench/workflow.py [--workflow workflows/vnet_prostate.yaml] [--reruns 3] [--set KEY=VALUE ...]

Everything goes to a temporary folder (synthetic data, run folder, MLflow store), so the first run really starts
from nothing. Prints a Markdown table: fresh wall time, test dice_mean, median rerun wall time, peak memory.
Each timing is of the ``pipeline run`` command as a subprocess, Python start-up and imports included.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default="workflows/vnet_prostate.yaml")
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="extra overrides passed to pipeline run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        tmpdir = Path(tmp)
        cmd = [sys.executable, "-m", "pipeline", "run", args.workflow, "--run-dir", str(tmpdir / "run"),
               "--set", f"data.root={tmpdir / 'data'}", "--set", "train.progress=false",
               "--set", f"tracking.tracking_uri=sqlite:///{tmpdir / 'mlflow.db'}"]
        for s in args.set:
            cmd += ["--set", s]
        fresh, _ = timed_run(cmd)
        summary = json.loads((tmpdir / "run" / "summary.json").read_text())
        stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in (tmpdir / "run").glob("*/_stage.json")}
        reruns = [timed_run(cmd)[0] for _ in range(args.reruns)]
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2

    print(f"workflow: {args.workflow} {' '.join(args.set)}")
    print("| fresh run (s) | test dice_mean | per-class Dice | median rerun (s) | peak RSS (GB) |")
    print("| ---: | ---: | --- | ---: | ---: |")
    classes = ", ".join(f"{k} {v['dice']:.3f}" for k, v in summary["classes"].items())
    print(f"| {fresh:.0f} | {summary['dice_mean']:.3f} | {classes} | {statistics.median(reruns):.1f} | {peak_gb:.1f} |")
    print("stage seconds (fresh run): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))
    print("rerun seconds: " + ", ".join(f"{r:.1f}" for r in reruns))


if __name__ == "__main__":
    main()
