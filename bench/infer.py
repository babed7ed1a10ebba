"""Benchmark cohort inference: `pipeline infer`'s engine against a naive MONAI loop, side by side.

The naive loop is what a MONAI tutorial does, one file after another: ``LoadImaged`` → the same preprocessing
transforms → ``sliding_window_inference`` (mirrored copies for flip TTA) → ``Invertd`` → ``AsDiscreted(argmax)``
→ the bundle's postprocessing (``KeepLargestConnectedComponentd``) → ``SaveImaged``. Ours is
:func:`pipeline.cohort.infer_cohort` (prefetch threads, slab stitching on a channels-last inference copy
of the network, a background writer, geometry checks, report). Both use the same model weights, preprocessing
and window settings, the model already loaded, on the same synthetic prostate cohort. A third row times our
sliding window alone (cases prepared beforehand, nothing written): the floor of our loop for this model and these
window settings; ``--plain-network`` adds the same with PyTorch's own instance norm, which shows what
:func:`pipeline.inference.optimize.for_inference` is worth. Each variant runs in a fresh subprocess (peak memory is
that process's VmHWM); repeats alternate the order. A second part runs one large volume (default 512×512×300,
3 classes, labels only) through each to compare peak memory.

The hardware is printed first (CPU model, its bf16/AMX flags, PyTorch's threads), and every row says its
precision (``infer.precision``, :mod:`pipeline.runtime.precision`; the naive loop is always fp32). ``--precisions
fp32 bf16`` adds rows of ours forced to those precisions (on a CPU without hardware bf16, bf16 is emulated: very
slow); ``--compile`` adds ours with ``torch.compile`` (its end-to-end time includes the warm-up, which is also
shown apart). The last column compares each row's labels with our fp32 run's (``ours`` when that is fp32).

Usage::

    python bench/infer.py                                  # random-init V-Net of workflows/vnet_prostate.yaml
    python bench/infer.py --model models/vnet_prostate     # a bundle from `pipeline export`
    python bench/infer.py --cases 10 --shape 192 192 24 --repeats 3 --large-shape 512 512 300
    python bench/infer.py --model MODEL_DIR --plain-network --large-shape 0 0 0   # cohort rows only
    python bench/infer.py --model MODEL_DIR --precisions fp32 bf16 --large-shape 0 0 0  # on a CPU with bf16
    python bench/infer.py --cases 50 --compile --repeats 2 --large-shape 0 0 0     # is compiling worth it?
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPACING = (0.6, 0.6, 3.6)
LARGE_SPACING = (0.3, 0.3, 0.9)


def make_cohort(folder: Path, n: int, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """Write the cohort in a separate process: generating a 512×512×300 volume takes ~11 GB, which would otherwise
    stay in this process's footprint (and in what its children inherit)."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_write_cohort, args=(folder, n, shape, spacing))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"generating the cohort in {folder} failed")


def _write_cohort(folder: Path, n: int, shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[Path]:
    """Synthetic prostate T2 volumes as .nii.gz (the demo generator at the given grid)."""
    sys.path.insert(0, str(ROOT))
    import nibabel as nib

    from pipeline.data.synthetic_prostate import make_prostate_case

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"case{i:03d}.nii.gz"
        if not path.is_file():
            image, _, affine = make_prostate_case(1000 + i, shape, spacing)
            img = nib.Nifti1Image(image.astype(np.float32), affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, str(path))
        paths.append(path)
    return paths


def random_bundle(folder: Path) -> Path:
    """The V-Net of workflows/vnet_prostate.yaml with seeded random weights (same compute as the trained one)."""
    import torch

    from pipeline.bundle import write_bundle
    from pipeline.config.loader import load_workflow
    from pipeline.models import build_model

    if (folder / "bundle.json").is_file():
        return folder
    wf = load_workflow(ROOT / "workflows" / "vnet_prostate.yaml").workflow
    torch.manual_seed(0)
    model = build_model(wf.model.name, wf.model.kwargs(), 1, 3, 3)
    return write_bundle(folder, name="vnet_prostate_random", model={"name": wf.model.name, "kwargs": wf.model.kwargs(),
                        "in_channels": 1, "out_channels": 3}, state_dict=model.state_dict(),
                        labels={0: "background", 1: "PZ", 2: "TZ"}, channels=["T2"], spatial_dims=3,
                        preprocess=wf.preprocess, infer=wf.infer, postprocess=wf.postprocess,
                        source={"workflow": "vnet_prostate", "note": "random weights (bench)"})


def child_naive(bundle_dir: Path, inputs: list[Path], out: Path, device: str = "cpu") -> float:
    """The naive MONAI loop on ``device``; returns the seconds of the loop (model already loaded)."""
    import warnings

    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import AsDiscreted, Compose, Invertd, KeepLargestConnectedComponentd, SaveImaged

    from pipeline.bundle import load_bundle
    from pipeline.transforms.build import deterministic_transforms

    warnings.filterwarnings("ignore")
    bundle = load_bundle(bundle_dir)
    dev = torch.device(device)
    model, cfg = bundle.model.to(dev).eval(), bundle.infer
    pre = Compose(deterministic_transforms(bundle.preprocess, keys=("image",)))
    klc = bundle.postprocess.keep_largest_component
    klc_classes = list(range(1, bundle.num_classes)) if klc is True else list(klc or [])
    post = Compose([
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
        AsDiscreted(keys="pred", argmax=True),
        *([KeepLargestConnectedComponentd(keys="pred", applied_labels=klc_classes)] if klc_classes else []),
        SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", separate_folder=False, resample=False,
                   output_dtype=np.uint8, print_log=False),
    ])
    t0 = time.perf_counter()
    for path in inputs:
        d = pre({"image": str(path)})
        with torch.no_grad():
            x = d["image"][None].to(dev)
            probs = None
            for dims in [()] + [(a + 2,) for a in cfg.tta_flip_axes]:
                xi = torch.flip(x, dims) if dims else x
                logits = sliding_window_inference(xi, cfg.roi_size, cfg.sw_batch_size, model, overlap=cfg.overlap,
                                                  mode=cfg.mode, sigma_scale=cfg.sigma_scale)
                p = torch.softmax(logits, 1)
                p = torch.flip(p, dims) if dims else p
                probs = p if probs is None else probs + p
        d["pred"] = (probs[0] / (1 + len(cfg.tta_flip_axes))).cpu()
        post(d)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def child_ours(bundle_dir: Path, inputs: list[Path], out: Path, prefetch: int | None = None,
               device: str = "cpu", precision: str | None = None, compile: bool = False) -> dict:
    """`pipeline infer`'s engine, in process, on ``device``: the seconds of the batch (model already loaded; with
    ``compile`` the warm-up is inside it and also returned apart), the resolved precision and the median case."""
    from pipeline.bundle import load_bundle
    from pipeline.cohort import InferOptions, infer_cohort

    bundle = load_bundle(bundle_dir)
    options = InferOptions(output=out, device=device, overwrite=True, precision=precision, compile=compile,
                           **({} if prefetch is None else {"prefetch": prefetch}))
    t0 = time.perf_counter()
    rows = infer_cohort(bundle, inputs, options, progress=False)
    seconds = time.perf_counter() - t0
    failed = [r for r in rows if r.status != "written"]
    if failed:
        raise SystemExit(f"cases not written: {failed}")
    report = json.loads((out / "report.json").read_text())
    return {"seconds": seconds, "precision": report.get("precision", "?"),
            "warm_up": report.get("compile_warm_up_seconds"), "case_median": statistics.median(r.seconds for r in rows)}


def child_network(bundle_dir: Path, inputs: list[Path], plain: bool = False, precision: str | None = None) -> dict:
    """Our sliding window alone (cases read and preprocessed beforehand, nothing written): the floor of our loop
    with this model and these window settings on this machine. ``plain`` runs the trained module as PyTorch
    builds it (channels-last weights, but PyTorch's instance norm) instead of :func:`for_inference`'s copy, to
    show what that copy is worth. Both with the allocator setting ``infer_cohort`` applies, in ``precision``
    (default: the bundle's, auto)."""
    import torch

    from pipeline.bundle import load_bundle
    from pipeline.inference.optimize import tune_allocator
    from pipeline.inference.predictor import Predictor
    from pipeline.runtime.sliding_window import channels_last
    from pipeline.io.scan import read_scan
    from pipeline.runtime.precision import resolve_precision

    tune_allocator()  # as infer_cohort does
    bundle = load_bundle(bundle_dir)
    cpu = torch.device("cpu")
    predictor = Predictor(bundle.model, bundle.preprocess, bundle.infer, cpu, bundle.spatial_dims,
                          precision=resolve_precision(precision or bundle.infer.precision, cpu))
    if plain:
        predictor.model = bundle.model.eval().to(memory_format=channels_last(bundle.spatial_dims))
    prepared = [predictor.prepare(scan.array, scan.affine) for scan in map(read_scan, inputs)]
    t0 = time.perf_counter()
    for d in prepared:
        predictor.network(d)
    return {"seconds": time.perf_counter() - t0, "precision": predictor.precision.name}


def agreement(ours: Path, other: Path) -> float:
    """Fraction of voxels where both loops give the same label, over the cohort (``other``: the naive loop's
    ``NAME_seg.nii.gz`` files or another run of ours)."""
    import nibabel as nib

    same = total = 0
    for p in sorted(ours.glob("*.nii.gz")):
        q = other / p.name
        if not q.is_file():
            q = other / p.name.replace(".nii.gz", "_seg.nii.gz")
        a = np.asarray(nib.load(str(p)).dataobj)
        b = np.asarray(nib.load(str(q)).dataobj).reshape(a.shape)
        same += int((a == b).sum())
        total += a.size
    return same / total


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: on Linux that keeps the high-water mark of
    the parent the child was forked from, across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class Variant:
    """One row: ``kind`` (naive, ours, network, network-plain) with a precision (None: the bundle's, auto) and
    compile."""

    label: str
    kind: str
    precision: str | None = None
    compile: bool = False


def variants(args: argparse.Namespace) -> list[Variant]:
    """The rows asked for, in table order (``--kinds`` keeps only some kinds of loop)."""
    rows = [Variant("naive", "naive"), Variant("ours", "ours")]
    rows += [Variant(f"ours {p}", "ours", p) for p in args.precisions or ()]
    if args.compile:
        rows.append(Variant("ours compiled", "ours", None, True))
    rows.append(Variant("network alone (our floor)", "network"))
    rows += [Variant(f"network alone {p}", "network", p) for p in args.precisions or ()]
    if args.plain_network:
        rows.append(Variant("network alone, PyTorch's instance norm", "network-plain"))
    return [v for v in rows if v.kind in args.kinds or (v.kind == "network-plain" and "network" in args.kinds)]


def run_child(variant: Variant, bundle: Path, inputs_dir: Path, out: Path, prefetch: int,
              compile_cache: Path | None = None) -> dict:
    """One variant in a fresh process; a compiled one with TorchInductor's cache in ``compile_cache`` (default: a
    new empty folder beside ``out``, so its warm-up is a first run's, not one served from an earlier compilation's
    cache)."""
    cmd = [sys.executable, __file__, "--child", variant.kind, str(bundle), str(inputs_dir), str(out),
           "--prefetch", str(prefetch)]
    if variant.precision:
        cmd += ["--precision", variant.precision]
    if variant.compile:
        cmd += ["--compile"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if variant.compile:
        cache = compile_cache or out.parent / f"{out.name}.inductor-cache"
        if compile_cache is None:
            shutil.rmtree(cache, ignore_errors=True)  # empty: a first run's warm-up, also with a reused --workdir
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{variant.label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hardware_header() -> str:
    """CPU model, the flags that decide bf16, PyTorch's threads and version: the first line of every table."""
    from pipeline.runtime.precision import hardware_summary

    h = hardware_summary()
    return (f"CPU: {h['cpu']}; flags: {h['cpu_flags']}; hardware bf16: {h['hardware_bf16']}; "
            f"torch {h['torch']}, {h['torch_threads']} threads")


def report_cohort(args: argparse.Namespace, results: dict[Variant, list[dict]], agree: dict[Variant, str]) -> None:
    def med(v: Variant, key: str) -> float:
        return statistics.median(x[key] for x in results[v])

    naive = next((v for v in results if v.kind == "naive"), next(iter(results)))  # speed-up against it
    print(f"\n{hardware_header()}")
    print(f"Cohort: {args.cases} synthetic prostate volumes {'x'.join(map(str, args.shape))} at "
          f"{'x'.join(map(str, args.spacing))} mm, CPU, median of {args.repeats}\n")
    print("| loop | precision | median s | cases/s | peak MB | speed-up | labels = our fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for v, runs in results.items():
        s = med(v, "seconds")
        precision = runs[0].get("precision", "fp32")
        if v.compile:
            warm = statistics.median(x["warm_up"] for x in runs)
            precision += f", compiled (warm-up {warm:.1f} s of it)"
        print(f"| {v.label} | {precision} | {s:.1f} | {args.cases / s:.3f} | {med(v, 'peak_mb'):.0f} | "
              f"{med(naive, 'seconds') / s:.2f}x | {agree.get(v, '')} |")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a bundle folder (default: random-init V-Net of workflows/vnet_prostate.yaml)")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=[192, 192, 24], help="cohort volume grid")
    ap.add_argument("--spacing", type=float, nargs=3, default=list(SPACING), help="cohort voxel size in mm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--large-shape", type=int, nargs=3, default=[512, 512, 300],
                    help="the large volume for the memory comparison (0.3x0.3x0.9 mm); 0 0 0 skips it")
    ap.add_argument("--large-only", action="store_true", help="only the large-volume memory comparison")
    ap.add_argument("--plain-network", action="store_true",
                    help="also time the network alone with PyTorch's own instance norm (what for_inference saves)")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"],
                    help="also rows of ours (and of the network alone) forced to these precisions")
    ap.add_argument("--compile", action="store_true", help="also a row of ours with torch.compile (an empty "
                    "compilation cache each run: the warm-up of a first run)")
    ap.add_argument("--warm-compile-cache", action="store_true",
                    help="with --compile: keep TorchInductor's cache across the repeats (the warm-up of a machine "
                    "that compiled this model before)")
    ap.add_argument("--kinds", nargs="+", choices=["naive", "ours", "network"], default=["naive", "ours", "network"],
                    help="which loops to time (speed-ups are against the naive loop, else the first row)")
    ap.add_argument("--precision", help=argparse.SUPPRESS)  # a child's
    ap.add_argument("--workdir", help="keep inputs and outputs here (default: a temporary folder)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "BUNDLE", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        kind, bundle, inputs_dir, out = args.child
        inputs = sorted(Path(inputs_dir).glob("*.nii.gz"))
        if kind == "naive":
            res: dict = {"seconds": child_naive(Path(bundle), inputs, Path(out)), "precision": "fp32"}
        elif kind in ("network", "network-plain"):
            res = child_network(Path(bundle), inputs, plain=kind == "network-plain", precision=args.precision)
        else:
            res = child_ours(Path(bundle), inputs, Path(out), args.prefetch, precision=args.precision,
                             compile=args.compile)
        print(json.dumps({"kind": kind, **res, "cases": len(inputs), "peak_mb": peak_mb()}))
        return 0

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-infer."))
    bundle = Path(args.model) if args.model else random_bundle(work / "model")
    if not args.large_only:
        inputs_dir = work / f"cohort_{'x'.join(map(str, args.shape))}_{'x'.join(map(str, args.spacing))}"
        make_cohort(inputs_dir, args.cases, tuple(args.shape), tuple(args.spacing))
        print(f"model {bundle}; {args.cases} volumes {tuple(args.shape)}; {hardware_header()}", file=sys.stderr)
        rows = variants(args)
        results: dict[Variant, list[dict]] = {v: [] for v in rows}
        folder = {v: f"out_{i}" for i, v in enumerate(rows)}
        for r in range(args.repeats):
            for v in rows if r % 2 == 0 else reversed(rows):
                res = run_child(v, bundle, inputs_dir, work / f"{folder[v]}_{r}", args.prefetch,
                                work / "inductor-cache" if args.warm_compile_cache else None)
                results[v].append(res)
                print(f"repeat {r + 1}: {v.label} ({res['precision']}) {res['seconds']:.1f} s, peak "
                      f"{res['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
        written = [v for v in rows if v.kind in ("naive", "ours")]
        reference = next((v for v in written if v.kind == "ours" and results[v][0]["precision"] == "fp32"), None)
        agree = {}
        if reference is not None:
            for v in written:
                if v != reference:
                    agree[v] = f"{agreement(work / f'{folder[reference]}_0', work / f'{folder[v]}_0') * 100:.3f}%"
            agree[reference] = "(reference)"
        report_cohort(args, results, agree)
    if all(args.large_shape):
        large_dir = work / f"large_{'x'.join(map(str, args.large_shape))}"
        make_cohort(large_dir, 1, tuple(args.large_shape), LARGE_SPACING)
        print(f"\nOne volume {'x'.join(map(str, args.large_shape))} at {'x'.join(map(str, LARGE_SPACING))} mm "
              "(3 classes, labels only)\n")
        print("| loop | seconds | peak MB |")
        print("|---|---:|---:|")
        for kind in ("naive", "ours"):
            res = run_child(Variant(kind, kind), bundle, large_dir, work / f"large_{kind}", args.prefetch)
            print(f"| {kind} | {res['seconds']:.1f} | {res['peak_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
