"""Benchmark the registered segmentation models in 2D on the CPU: parameter count and inference time.

Every registered model that can be built with ``spatial_dims=2`` is run on a 256×256 image with 1 input channel and
3 classes (batch 1, eval mode, ``torch.no_grad``); the median over ``--repeats`` timed calls after one warm-up call is
reported as a Markdown table. Models that are 3D-only (e.g. V-Net) are listed as skipped. A model registered once
with several published configurations (FC-DenseNet: ``depth`` 56, 67, 103) gets one row each (:data:`VARIANTS`),
named ``fcdensenet56`` etc. (also accepted by ``--models``).

Usage::

    python bench/models.py                      # default widths, 5 repeats
    python bench/models.py --width 8 --repeats 3 --models unet deeplabv3plus
    python bench/models.py --repeats 3 --models fcdensenet        # FC-DenseNet56, 67 and 103
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models import MODELS  # noqa: E402

IN_CHANNELS, CLASSES = 1, 3
# registered name → (row name, constructor arguments) for models with several published configurations
VARIANTS: dict[str, list[tuple[str, dict]]] = {
    "fcdensenet": [(f"fcdensenet{d}", {"depth": d}) for d in (56, 67, 103)],
}


def rows(names: list[str]) -> list[tuple[str, str, dict]]:
    """(row name, registered name, arguments) for registered names or :data:`VARIANTS` row names."""
    by_row = {row: (name, kw) for name, variants in VARIANTS.items() for row, kw in variants}
    out: list[tuple[str, str, dict]] = []
    for name in names:
        if name in by_row:
            out.append((name, *by_row[name]))
        else:
            out += [(row, name, kw) for row, kw in VARIANTS.get(name, [(name, {})])]
    return out


def build(name: str, width: int | None, extra: dict | None = None) -> torch.nn.Module:
    """Build ``name`` in 2D with the arguments ``extra``; ``width`` overrides the base width (U-Net: channels w, 2w,
    4w, 8w; models without a width, such as FC-DenseNet, keep theirs)."""
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    if "spatial_dims" not in params:
        raise ValueError("no spatial_dims argument (3D-only)")
    kwargs: dict = {"spatial_dims": 2, **(extra or {})}
    if width is not None:
        if "width" in params:
            kwargs["width"] = width
        elif "channels" in params:
            kwargs["channels"] = tuple(width * 2**i for i in range(4))
    return factory(in_channels=IN_CHANNELS, out_channels=CLASSES, **kwargs)


def width_of(model: torch.nn.Module) -> str:
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "width"):
        return f"ResNet-{backbone.depth}, width {backbone.width}, os {backbone.output_stride}"
    net = getattr(model, "net", None)
    if net is not None and hasattr(net, "channels"):
        return "channels " + "/".join(str(c) for c in net.channels)
    if hasattr(model, "growth_rate") and hasattr(model, "layers_per_block"):
        return f"growth {model.growth_rate}, layers " + "/".join(str(n) for n in model.layers_per_block)
    return ""


def time_model(model: torch.nn.Module, size: int, repeats: int) -> float:
    """Median seconds per call on one ``size``×``size`` image after one warm-up call."""
    x = torch.randn(1, IN_CHANNELS, size, size)
    model.eval()
    times = []
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, CLASSES, size, size), out.shape
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per model after one warm-up (default 5)")
    ap.add_argument("--size", type=int, default=256, help="image side (default 256)")
    ap.add_argument("--width", type=int, default=None, help="override the base width of every model")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--models", nargs="*", default=None, help="registered names (default: all)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.models or MODELS.names()
    print(f"{args.size}×{args.size}, {IN_CHANNELS} channel, {CLASSES} classes, batch 1, CPU "
          f"({torch.get_num_threads()} threads), median of {args.repeats} after 1 warm-up, torch {torch.__version__}\n")
    print("| model | configuration | parameters | ms / image |")
    print("|---|---|---:|---:|")
    skipped = []
    for row, name, extra in rows(names):
        try:
            model = build(name, args.width, extra)
        except (ValueError, TypeError) as exc:
            skipped.append(f"{row} ({exc})")
            continue
        n_params = sum(p.numel() for p in model.parameters())
        seconds = time_model(model, args.size, args.repeats)
        print(f"| {row} | {width_of(model)} | {n_params:,} | {seconds * 1000:.1f} |", flush=True)
    if skipped:
        print("\nskipped: " + "; ".join(skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
