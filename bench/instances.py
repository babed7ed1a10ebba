"""Compare the ways of making nucleus instances on one data set, side by side: the semantic U-Net with connected
components or a distance watershed (one trained model), the three-class head (U-Net border weights) and the
distance head; plus the same two mask methods applied to the *true* masks (what a perfect mask allows).

Usage::

    python bench/instances.py                                  # workflows/unet_cells.yaml on the 2D demo
    python bench/instances.py --workflow workflows/unet_cells3d.yaml
    python bench/instances.py --set data.manifest=DIR/dsb2018.json   # real data

Each method is a ``pipeline run`` of the workflow with ``--set instances.method=...`` (run folders under
``--runs``, default ``runs/bench_instances``; the two mask methods share one run folder and its trained model,
so the second only infers and evaluates again; its run time is that).
Prints a Markdown table: object F1 at IoU 0.5, precision, recall, mean matched IoU (over the matched objects), test
Dice and the wall time of each run. Object scores are pooled over the test cases (every object counts once).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.evaluation.domain import instance_metrics  # noqa: E402
from pipeline.instances.decode import decode  # noqa: E402

METHODS = ("components", "watershed", "three_class", "distance")
MASK_METHODS = ("components", "watershed")  # decoded from the semantic model's mask: the same training


def run(workflow: str, method: str, run_dir: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "pipeline", "run", workflow, "--run-dir", str(run_dir),
           "--set", f"instances.method={method}", "--set", "tracking.enabled=false", "--set", "train.progress=false"]
    for s in extra:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def pooled(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Object scores over all cases at once: true positives, predictions and references summed."""
    tp = n_pred = n_true = 0.0
    ious: list[float] = []
    for pred, truth in pairs:
        m = instance_metrics(pred, truth)
        case_tp = m["f1"] * (m["n_pred"] + m["n_true"]) / 2
        tp, n_pred, n_true = tp + case_tp, n_pred + m["n_pred"], n_true + m["n_true"]
        if m["mean_matched_iou"] == m["mean_matched_iou"]:
            ious += [m["mean_matched_iou"]] * int(round(case_tp))
    return {"f1": 2 * tp / max(n_pred + n_true, 1), "precision": tp / max(n_pred, 1),
            "recall": tp / max(n_true, 1), "iou": float(np.mean(ious)) if ious else float("nan")}


def test_cases(run_dir: Path) -> list[dict]:
    record = json.loads((run_dir / "prepare" / "_stage.json").read_text())["record"]
    return list(record["cases"].get("test", []))


def scores(run_dir: Path) -> dict[str, float]:
    infer = json.loads((run_dir / "infer" / "_stage.json").read_text())["record"]
    pairs = []
    for case in test_cases(run_dir):
        pred = np.asarray(nib.load(run_dir / infer["instances"][case["id"]]).dataobj)
        pairs.append((pred, np.asarray(nib.load(case["extras"]["instances"]).dataobj)))
    out = pooled(pairs)
    out["dice"] = json.loads((run_dir / "summary.json").read_text())["dice_mean"]
    return out


def true_mask_scores(run_dir: Path, method: str) -> dict[str, float]:
    pairs = []
    for case in test_cases(run_dir):
        truth = np.asarray(nib.load(case["extras"]["instances"]).dataobj)
        pairs.append((decode(method, None, 2, labels=(truth > 0).astype(np.uint8)), truth))
    return {**pooled(pairs), "dice": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default="workflows/unet_cells.yaml")
    parser.add_argument("--runs", default="runs/bench_instances", help="folder of the run folders")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--set", action="append", default=[], help="extra overrides passed to pipeline run")
    parser.add_argument("--csv", help="also write the table as CSV here")
    args = parser.parse_args()
    root = Path(args.runs) / Path(args.workflow).stem
    rows = []
    for method in args.methods:
        folder = root / ("semantic" if method in MASK_METHODS else method)  # one trained model for both
        seconds = run(args.workflow, method, folder, args.set)
        rows.append({"instances from": f"U-Net + {method}", **scores(folder), "seconds": seconds})
        print(f"{method}: {rows[-1]}", file=sys.stderr)
    any_run = root / ("semantic" if args.methods[0] in MASK_METHODS else args.methods[0])
    for method in ("watershed", "components"):
        rows.append({"instances from": f"true mask + {method}", **true_mask_scores(any_run, method),
                     "seconds": float("nan")})
    print(f"workflow {args.workflow}; {len(test_cases(any_run))} test cases; scores pooled over their objects\n")
    print("| instances from | object F1 @ IoU 0.5 | precision | recall | mean matched IoU | test Dice | run (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        secs = "" if r["seconds"] != r["seconds"] else f"{r['seconds']:.0f}"
        print(f"| {r['instances from']} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['iou']:.3f} | {r['dice']:.3f} | {secs} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
