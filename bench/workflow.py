"""Time a workflow the way a new user runs it: a fresh run, then unchanged reruns (stage reuse).

Usage:
    python bench/workflow.py [--workflow workflows/vnet_prostate.yaml] [--reruns 3] [--set KEY=VALUE ...]
    python bench/workflow.py --precisions fp32 auto --reruns 0     # the main job in fp32 and in what auto picks

Everything goes to a temporary folder (synthetic data, run folder, MLflow store), so the first run really starts
from nothing. Prints the hardware (CPU model, its bf16/AMX flags, PyTorch's threads) and a Markdown table: per
precision (``train.precision`` and ``infer.precision`` set to it, and what they resolved to), fresh wall time, test
dice_mean, median rerun wall time, peak memory. Each timing is of the ``pipeline run`` command as a subprocess,
Python start-up and imports included.
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
sys.path.insert(0, str(REPO))


def timed_run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def one(args: argparse.Namespace, precision: str | None) -> dict:
    """A fresh run (and the reruns) in a folder of its own; ``precision`` None: the workflow's own setting."""
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        tmpdir = Path(tmp)
        cmd = [sys.executable, "-m", "pipeline", "run", args.workflow, "--run-dir", str(tmpdir / "run"),
               "--set", f"data.root={tmpdir / 'data'}", "--set", "train.progress=false",
               "--set", f"tracking.tracking_uri=sqlite:///{tmpdir / 'mlflow.db'}"]
        if precision is not None:
            cmd += ["--set", f"train.precision={precision}", "--set", f"infer.precision={precision}"]
        for s in args.set:
            cmd += ["--set", s]
        fresh, _ = timed_run(cmd)
        run = tmpdir / "run"
        summary = json.loads((run / "summary.json").read_text())
        stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in run.glob("*/_stage.json")}
        resolved = {s: json.loads((run / s / "_stage.json").read_text())["record"].get("precision", "?")
                    for s in ("train", "infer")}
        reruns = [timed_run(cmd)[0] for _ in range(args.reruns)]
    return {"precision": precision or "(workflow's)", "resolved": resolved, "fresh": fresh, "summary": summary,
            "stages": stages, "reruns": reruns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default="workflows/vnet_prostate.yaml")
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=["auto", "fp32", "bf16", "fp16"],
                        help="one fresh run per precision (train and infer); default: the workflow's setting")
    parser.add_argument("--set", action="append", default=[], help="extra overrides passed to pipeline run")
    args = parser.parse_args()
    from pipeline.runtime.precision import hardware_summary

    h = hardware_summary()
    results = [one(args, p) for p in (args.precisions or [None])]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2

    print(f"workflow: {args.workflow} {' '.join(args.set)}")
    print(f"CPU: {h['cpu']}; flags: {h['cpu_flags']}; hardware bf16: {h['hardware_bf16']}; torch {h['torch']}, "
          f"{h['torch_threads']} threads")
    print("| precision | resolved (train / infer) | fresh run (s) | test dice_mean | per-class Dice | median rerun (s) "
          "| peak RSS (GB) |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for r in results:
        summary = r["summary"]
        classes = ", ".join(f"{k} {v['dice']:.3f}" for k, v in summary["classes"].items())
        rerun = f"{statistics.median(r['reruns']):.1f}" if r["reruns"] else "-"
        print(f"| {r['precision']} | {r['resolved']['train']} / {r['resolved']['infer']} | {r['fresh']:.0f} | "
              f"{summary['dice_mean']:.3f} | {classes} | {rerun} | {peak_gb:.1f} |")
    for r in results:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items())
        print(f"stage seconds ({r['precision']}, fresh run): {stages}")
        if r["reruns"]:
            print(f"rerun seconds ({r['precision']}): " + ", ".join(f"{x:.1f}" for x in r["reruns"]))


if __name__ == "__main__":
    main()
