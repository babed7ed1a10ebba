"""What MLflow tracking costs: a workflow's wall time with and without tracking, side by side.

Usage:
    python bench/tracking.py [--workflow workflows/unet_cells.yaml] [--repeats 3] [--uri URI] [--set KEY=VALUE ...]

Each repeat runs the workflow from a fresh run folder (``--force``: every stage runs) once with
``tracking.enabled=false`` and once with tracking on (a SQLite store in the temporary folder, or ``--uri``, e.g. an
``mlflow server``), alternating which goes first so drift in the machine's speed falls on both. A warm-up run makes
the synthetic data first, a tracked one the store (a researcher's store is made once), and neither is counted. Timings are of the ``pipeline run`` command as a subprocess, Python
start-up included. Prints a Markdown table of the medians and the overhead (target: at most 5 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    if "failed" in proc.stderr and "MLflow" in proc.stderr:
        sys.exit(f"tracking failed during the benchmark:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default="workflows/unet_cells.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--uri", help="tracking store (default: a SQLite store in the temporary folder)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides passed to pipeline run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        tmpdir = Path(tmp)
        uri = args.uri or f"sqlite:///{tmpdir / 'mlflow.db'}"

        def cmd(tracked: bool, name: str) -> list[str]:
            out = [sys.executable, "-m", "pipeline", "run", args.workflow, "--force", "--run-dir",
                   str(tmpdir / name), "--set", f"data.root={tmpdir / 'data'}", "--set", "train.progress=false",
                   "--set", f"tracking.enabled={'true' if tracked else 'false'}",
                   "--set", f"tracking.tracking_uri={uri}"]
            for s in args.set:
                out += ["--set", s]
            return out

        timed(cmd(False, "warmup"))  # synthetic data, caches
        timed(cmd(True, "warmup-tracked"))  # the store's tables: made once per store, not per run
        times: dict[bool, list[float]] = {False: [], True: []}
        stage_sums: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.repeats):
            for tracked in ((False, True) if i % 2 == 0 else (True, False)):
                times[tracked].append(timed(cmd(tracked, f"run-{int(tracked)}-{i}")))
                stage_sums[tracked].append(sum(json.loads(f.read_text())["seconds"]
                                               for f in (tmpdir / f"run-{int(tracked)}-{i}").glob("*/_stage.json")))
                print(f"repeat {i + 1}: tracking {'on ' if tracked else 'off'} {times[tracked][-1]:.1f} s",
                      file=sys.stderr)

    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"workflow: {args.workflow} {' '.join(args.set)}; store: {'--uri ' + args.uri if args.uri else 'sqlite'}; "
          f"{os.cpu_count()} CPUs")
    print("| tracking | runs (s) | median (s) | median of the stages' seconds |")
    print("| --- | --- | ---: | ---: |")
    for tracked, median in ((False, off), (True, on)):
        runs = ", ".join(f"{t:.1f}" for t in times[tracked])
        print(f"| {'on' if tracked else 'off'} | {runs} | {median:.1f} | {statistics.median(stage_sums[tracked]):.1f} |")
    print(f"overhead of tracking: {100 * (on - off) / off:+.1f} % (target ≤ 5 %)")


if __name__ == "__main__":
    main()
