"""Benchmark the dense CRF backends (time, throughput, peak memory).

Each (backend, device, size) case runs in a fresh subprocess so that its peak host memory (``ru_maxrss``) does not
bleed into the others; the timed call is :func:`pipeline.postprocess.crf.dense_crf` on numpy inputs, so for CUDA the
host-to-device and device-to-host copies are included.

Usage::

    python bench/crf.py                                   # all sizes, torch + pydensecrf on CPU (+ CUDA if present)
    python bench/crf.py --sizes 128 256x256x128 --repeats 3
    python bench/crf.py --backends torch --devices cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"64": (64, 64, 64), "128": (128, 128, 128), "256x256x128": (256, 256, 128)}
CLASSES = 3
ITERATIONS = 5


def make_case(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Synthetic 3-class case: nested ellipsoids, z-scored noisy image, blurred noisy probabilities (float32)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    spacing = (1.0,) * len(shape)
    r2 = np.zeros(shape, dtype=np.float32)
    for ax, size in enumerate(shape):
        c = (np.arange(size, dtype=np.float32) - size / 2) / (0.35 * size)
        view = [1] * len(shape)
        view[ax] = size
        r2 += (c**2).reshape(view)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[r2 < 1.0] = 1
    gt[r2 < 0.3] = 2
    del r2
    image = np.array([-1.0, 0.3, 1.5], dtype=np.float32)[gt]
    image += rng.normal(0.0, 0.3, shape).astype(np.float32)
    probs = np.empty((CLASSES, *shape), dtype=np.float32)
    for k in range(CLASSES):
        gaussian_filter((gt == k).astype(np.float32), 2.0, output=probs[k])
        probs[k] += rng.uniform(0.0, 0.3, shape).astype(np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    return probs, image, spacing


def run_child(backend: str, device: str, size: str, repeats: int) -> dict:
    """Run one case ``repeats`` times in this process and return timings and peak memory."""
    sys.path.insert(0, str(ROOT))
    from pipeline.postprocess.crf import CRFParams, dense_crf

    if backend == "torch":
        import torch  # imported before timing

        if device.startswith("cuda"):
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats()
    probs, image, spacing = make_case(SIZES[size])
    params = CRFParams(iterations=ITERATIONS)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dense_crf(probs, image, spacing, params, backend=backend, device=device)
        times.append(time.perf_counter() - t0)
    out = {
        "backend": backend,
        "device": device,
        "size": size,
        "voxels": int(np.prod(SIZES[size])),
        "times": times,
        "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_cuda_mb": None,
    }
    if backend == "torch" and device.startswith("cuda"):
        import torch

        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every case in a subprocess and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=["pydensecrf", "torch"], choices=["pydensecrf", "torch"])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if available)")
    ap.add_argument("--child", nargs=3, metavar=("BACKEND", "DEVICE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.child:
        print(json.dumps(run_child(*args.child, repeats=args.repeats)))
        return 0
    devices = args.devices
    if devices is None:
        devices = ["cpu"]
        try:
            import torch

            if torch.cuda.is_available():
                devices.append("cuda")
        except ImportError:
            pass
    rows = []
    for size in args.sizes:
        for backend in args.backends:
            for device in devices:
                if backend == "pydensecrf" and device != "cpu":
                    continue
                cmd = [sys.executable, __file__, "--child", backend, device, size, "--repeats", str(args.repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if proc.returncode != 0:
                    print(f"{backend}/{device}/{size} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(res)
                print(f"done {backend}/{device}/{size}: {res['times']}", file=sys.stderr, flush=True)
    print(f"\nDense CRF, {CLASSES} classes, {ITERATIONS} iterations, median of {args.repeats}\n")
    print("| backend | device | size | voxels | median s | Mvoxel/s | peak host MB | peak CUDA MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        med = statistics.median(r["times"])
        cuda = f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] is not None else "-"
        print(
            f"| {r['backend']} | {r['device']} | {r['size']} | {r['voxels']:,} | {med:.2f} | "
            f"{r['voxels'] / med / 1e6:.2f} | {r['peak_host_mb']:.0f} | {cuda} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
