"""How hard is the synthetic prostate demo? The best single intensity threshold's gland Dice per case.

Usage:
    python bench/prostate_difficulty.py [--cases 8]

Generates the demo manifest's first cases in memory (same seeds as `pipeline run`) and prints, per case and as
median and mean, the foreground Dice of the best threshold (either direction). The issue's bar: below 0.6.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pipeline.data.synthetic_prostate import best_threshold_dice, case_seed, make_prostate_case

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()
    doc = json.loads((REPO / "data_manifests" / "prostate_demo.json").read_text())
    source = doc["source"]
    scores = []
    for entry in doc["training"][: args.cases]:
        image, label, _ = make_prostate_case(case_seed(source["seed"], entry["id"]), tuple(source["shape"]),
                                             tuple(source["spacing"]))
        scores.append(best_threshold_dice(image, label))
        print(f"{entry['id']}: best-threshold gland Dice {scores[-1]:.3f}")
    print(f"median {statistics.median(scores):.3f}, mean {statistics.mean(scores):.3f} over {len(scores)} cases")


if __name__ == "__main__":
    main()
