"""What each precision costs on this machine: the prostate V-Net's forward pass on one window batch and one
training step, in fp32 and under bf16 / fp16 autocast, side by side (:mod:`pipeline.runtime.precision`).

The forward pass is what inference repeats (the inference copy, channels-last, a batch of ``sw_batch_size``
windows of ``infer.roi_size``); the training step is forward + backward + Adam on a batch of ``train.batch_size``
patches of ``preprocess.patch.size`` under the loss of the workflow. Weights are seeded random ones (the same
compute as trained ones); labels are compared with fp32 by argmax. Prints the hardware first, and what ``auto``
picks here.

Usage::

    python bench/precision.py                          # fp32, bf16, fp16; median of 5 (1 for a slow row)
    python bench/precision.py --precisions fp32 bf16 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def speed_up(ratio: float) -> str:
    """``1.73x``, or for a large slow-down ``1/415`` (an emulated precision)."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"1/{1 / ratio:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default=str(ROOT / "workflows" / "vnet_prostate.yaml"))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-seconds", type=float, default=20.0,
                    help="a row whose first repeat takes longer than this is timed once (emulated precisions)")
    args = ap.parse_args(argv)

    import torch

    from pipeline.config.loader import load_workflow
    from pipeline.inference.optimize import for_inference
    from pipeline.losses import LOSSES
    from pipeline.models import build_model
    from pipeline.runtime.precision import hardware_summary, resolve_precision
    from pipeline.runtime.sliding_window import channels_last
    from pipeline.training.trainer import compute_loss

    wf = load_workflow(args.workflow).workflow
    cpu = torch.device("cpu")
    h = hardware_summary()
    print(f"CPU: {h['cpu']}; flags: {h['cpu_flags']}; hardware bf16: {h['hardware_bf16']}; torch {h['torch']}, "
          f"{h['torch_threads']} threads; auto here: {resolve_precision('auto', cpu).describe()}")
    torch.manual_seed(0)
    model = build_model(wf.model.name, wf.model.kwargs(), 1, 3, 3)
    layout = channels_last(3)
    windows = torch.randn(wf.infer.sw_batch_size, 1, *wf.infer.roi_size).contiguous(memory_format=layout)
    patches = torch.randn(wf.train.batch_size, 1, *wf.preprocess.patch.size)
    target = torch.randint(0, 3, (wf.train.batch_size, 1, *wf.preprocess.patch.size))
    loss_fn = LOSSES.get(wf.train.loss.name)(**wf.train.loss.kwargs())

    def timed(step, repeats: int) -> list[float]:
        t0 = time.perf_counter()
        step()  # warm-up (oneDNN primitives, allocator); an emulated precision is as slow warm as cold
        if time.perf_counter() - t0 > args.slow_seconds:
            return [time.perf_counter() - t0]
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            out.append(time.perf_counter() - t0)
        return out

    inference = for_inference(model, 3)
    reference = None
    rows = []
    for name in args.precisions:
        p = resolve_precision(name, cpu, quiet=True)

        def forward(p=p):
            with torch.no_grad(), p.autocast():
                return inference(windows).float()

        out = forward()
        if reference is None and name == "fp32":
            reference = out.argmax(1)
        agree = (out.argmax(1) == reference).float().mean().item() if reference is not None else float("nan")
        fwd = timed(forward, args.repeats)
        net = build_model(wf.model.name, wf.model.kwargs(), 1, 3, 3)
        net.load_state_dict(model.state_dict())
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cpu", enabled=p.needs_scaler)

        def train_step(p=p, net=net, opt=opt, scaler=scaler):
            opt.zero_grad(set_to_none=True)
            with p.autocast():
                loss = compute_loss(net, loss_fn, patches, target)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        step = timed(train_step, args.repeats)
        rows.append((name, p.reason, statistics.median(fwd), len(fwd), statistics.median(step), len(step), agree))
        print(f"{name}: forward {statistics.median(fwd) * 1000:.0f} ms ({len(fwd)}), train step "
              f"{statistics.median(step) * 1000:.0f} ms ({len(step)})", file=sys.stderr, flush=True)

    base = {r[0]: r for r in rows}.get("fp32")
    print(f"\nV-Net of {Path(args.workflow).name}: forward of {wf.infer.sw_batch_size} windows "
          f"{'x'.join(map(str, wf.infer.roi_size))} (inference copy, channels-last); training step of "
          f"{wf.train.batch_size} patches {'x'.join(map(str, wf.preprocess.patch.size))} (forward + backward + Adam)\n")
    print("| precision | forward ms (runs) | speed-up | train step ms (runs) | speed-up | argmax = fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, reason, fwd, nf, step, ns, agree in rows:
        up_f = speed_up(base[2] / fwd) if base else "-"
        up_s = speed_up(base[4] / step) if base else "-"
        label = name + (" (emulated)" if "emulated" in reason else "")
        print(f"| {label} | {fwd * 1000:.0f} ({nf}) | {up_f} | {step * 1000:.0f} ({ns}) | {up_s} | "
              f"{agree * 100:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
