"""Supervised training of a segmentation network on preprocessed cases.

Poly learning-rate decay (power from config, 0.9 by default) per iteration, mixed precision where the hardware has
it (``train.precision``, :mod:`pipeline.runtime.precision`: bf16 autocast on CPUs and GPUs that multiply bf16, fp16
with loss scaling on older GPUs; weights, optimizer state and checkpoints stay float32), validation Dice every
``val_every`` epochs on whole validation volumes (sliding window), best and last checkpoints, resume from the
last checkpoint, and a seed that makes CPU runs repeatable (every epoch re-seeds the sampler and augmentations).

Resume is exact: ``last.pt`` holds the model, optimizer, scheduler, AMP scaler and every random state
(:func:`pipeline.training.checkpoint.rng_state`), so a run killed after epoch ``k`` and run again continues from
epoch ``k + 1`` and ends with the same tensors and history as an uninterrupted run (on CPU, where kernels are
deterministic); the train record says ``resumed_from_epoch: k``.

Under torchrun (:mod:`pipeline.training.distributed`) every process trains a DistributedDataParallel copy on its
share of each epoch's patches. ``train.batch_size`` and ``train.iterations_per_epoch`` are per process, so a step
sees ``batch_size x world size`` samples and an epoch ``world size`` times the patches; the poly schedule still
decays per iteration over ``epochs x iterations_per_epoch`` steps (scale ``train.optimizer.lr`` yourself if the
larger batch wants it). Rank 0 alone validates and writes checkpoints, history and the progress bar.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.metrics import DiceMetric
from monai.metrics.utils import do_metric_reduction
from monai.networks.utils import one_hot
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged
from monai.utils import set_determinism
from torch import nn
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.errors import PipelineError
from pipeline.instances.heads import TRAINED_METHODS, Head
from pipeline.instances.loss import EXTRA_KEYS, instance_loss
from pipeline.io.atomic import write_json
from pipeline.losses import LOSSES
from pipeline.models import build_model
from pipeline.models.shapes import check_divisible
from pipeline.runtime.precision import FP32, Precision, resolve_precision
from pipeline.runtime.sliding_window import predict_case
from pipeline.training import distributed
from pipeline.training.checkpoint import (
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from pipeline.transforms.build import random_transforms

log = logging.getLogger("pipeline")


@dataclass
class TrainResult:
    best_dice: float
    best_epoch: int
    epochs: int
    history: list[dict[str, float]]
    device: str = "cpu"
    world_size: int = 1
    resumed_from_epoch: int | None = None
    precision: str = "fp32"


def compute_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 extras: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The training loss; a model that returns ``(logits, aux_logits)`` in training mode (PSPNet's auxiliary head)
    adds ``model.aux_weight`` times the auxiliary loss. The instance-aware losses also get the extra targets
    (:mod:`pipeline.instances.loss`). Under bf16/fp16 autocast only the network runs in the lower precision: the
    loss (softmax, Dice, cross-entropy) is computed from float32 logits with autocast off."""
    def loss(logits: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            return loss_fn(logits, y) if extras is None else loss_fn(logits, y, extras)

    out = model(x)
    if isinstance(out, (tuple, list)):
        main, *aux = out
        weight = float(getattr(distributed.unwrap(model), "aux_weight", 0.4))
        return loss(main) + weight * sum(loss(a) for a in aux)
    return loss(out)


def _optimizer(model: nn.Module, wf: Workflow) -> torch.optim.Optimizer:
    o = wf.train.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=True)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _schedule(opt: torch.optim.Optimizer, wf: Workflow, total_iters: int) -> torch.optim.lr_scheduler.LRScheduler:
    s = wf.train.lr_schedule
    if s.name == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_iters, power=s.power)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def validate(model: nn.Module, data: list[dict[str, Any]], wf: Workflow, device: torch.device,
             num_classes: int, head: Head | None = None, precision: Precision = FP32) -> float:
    """Mean foreground Dice over the validation volumes (on the preprocessed grid), with the sliding-window settings
    of ``train.validation``, on the manifest's classes (an instance head's output folded into them). Reduced here,
    not by ``DiceMetric.aggregate``, which would wait for the other ranks of a torchrun launch (only rank 0
    validates). The network runs in the training's ``precision``; the Dice is computed on float32 probabilities."""
    head = head or Head(num_classes)
    window = wf.train.validation.window(wf.preprocess.patch.size)
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    model.eval()
    per_case = []
    for item in data:
        probs = predict_case(model, item["image"], window, device, activation=head.activation, precision=precision)
        labels = torch.from_numpy(head.labels(probs.numpy())).long()
        pred = one_hot(labels[None, None], num_classes)
        truth = one_hot(head.training_labels(item["label"]).long()[None], num_classes)
        per_case.append(metric(pred, truth))
    value = float(do_metric_reduction(torch.cat(per_case), metric.reduction)[0].item()) if data else float("nan")
    model.train()
    return value


RANK_SEED_STRIDE = 1_000_003  # rank r augments with seed + epoch + r * stride (rank 0: as a single process)


def train(wf: Workflow, run_dir: Path, stage_dir: Path, cases: Mapping[str, Sequence[Any]],
          labels: dict[str, str], channels: list[str], resume: bool, spatial_dims: int = 3) -> TrainResult:
    """Train the workflow's model on the preprocessed ``cases`` (split → cases with ``image`` and ``label`` paths
    relative to ``run_dir``) and write checkpoints into ``stage_dir`` (rank 0; every rank trains)."""
    cfg, pp = wf.train, wf.preprocess
    device = distributed.init(cfg.device)
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    num_classes = max(int(k) for k in labels) + 1
    set_determinism(seed=wf.seed)
    head = trained_head(wf, num_classes)
    model_kwargs = wf.model.kwargs()
    model = build_model(wf.model.name, model_kwargs, len(channels), head.out_channels, spatial_dims).to(device)
    check_divisible(model, {"preprocess.patch.size": pp.patch.size,
                            "train.validation.roi_size": cfg.validation.window(pp.patch.size).roi_size})
    loss_fn = LOSSES.get(cfg.loss.name)(**cfg.loss.kwargs())
    extra_keys = EXTRA_KEYS.get(head.method or "", ())
    if head.trained:
        loss_fn = instance_loss(head, loss_fn, wf.instances.distance_weight if wf.instances else 1.0)

    def files(split: str) -> list[dict[str, str]]:
        return [{"image": str(run_dir / c.image), "label": str(run_dir / c.label),
                 **{k: str(run_dir / c.extras[k]) for k in extra_keys}} for c in cases.get(split, ())]

    keys = ("image", "label", *extra_keys)
    load = [LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)]
    train_tf = Compose(load + random_transforms(pp, spatial_dims, extra_keys))
    train_ds = CacheDataset(files("training"), train_tf, cache_rate=1.0, progress=False)
    val_ds = CacheDataset(files("validation") if main else [],
                          Compose(load + [EnsureTyped(keys=("image", "label"), track_meta=False)]),
                          cache_rate=1.0, progress=False)
    iters = cfg.iterations_per_epoch or math.ceil(len(train_ds) / cfg.batch_size)
    generator = torch.Generator()
    sampler = distributed.ShardedRandomSampler(len(train_ds), iters * cfg.batch_size, generator, rank, world)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=list_data_collate)
    net = distributed.wrap(model, device, cfg.sync_batchnorm)
    model = distributed.unwrap(net)  # SyncBatchNorm (when asked) swapped in; what checkpoints save
    opt = _optimizer(model, wf)
    sched = _schedule(opt, wf, cfg.epochs * iters)
    precision = resolve_precision(cfg.precision, device, amp=cfg.amp, quiet=not main)
    if main:
        log.info("[train] precision: %s", precision.describe())
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)

    meta = {"model": {"name": wf.model.name, "kwargs": model_kwargs, "in_channels": len(channels),
                      "out_channels": head.out_channels, "spatial_dims": spatial_dims},
            "labels": labels, "channels": channels, "head": head.to_json(), "precision": precision.name}
    start, best_dice, best_epoch, history = 0, -1.0, -1, []
    last_path, best_path = stage_dir / "last.pt", stage_dir / "best.pt"
    resumed_from = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, device)
        load_model_state(model, state, last_path, meta["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, best_dice, best_epoch = state["epoch"] + 1, state["best_dice"], state["best_epoch"]
        history = list(state["history"])
        if state.get("precision", "fp32") != precision.name and main:
            log.warning("[train] %s was trained in %s; resuming in %s (the run is no longer repeatable as one "
                        "precision)", last_path, state.get("precision", "fp32"), precision.name)
        _restore_rng(state, rank, world, train_tf, generator, device)
        resumed_from = start
        log.info("[train] resuming after epoch %d of %d", start, cfg.epochs)

    # In a log file (no terminal) redraw rarely, so the log stays readable.
    bar = tqdm(total=cfg.epochs * iters, initial=start * iters, desc="train", unit="it",
               disable=not (cfg.progress and main), dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    net.train()
    for epoch in range(start, cfg.epochs):
        train_tf.set_random_state(seed=wf.seed + epoch + rank * RANK_SEED_STRIDE)
        generator.manual_seed(wf.seed + epoch)  # the same draw on every rank: the sampler deals it out by rank
        torch.manual_seed(wf.seed + epoch + rank * RANK_SEED_STRIDE)
        losses = []
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            extras = {k: batch[k].to(device) for k in extra_keys} if extra_keys else None
            opt.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = compute_loss(net, loss_fn, x, y, extras)
            if not torch.isfinite(loss):
                raise PipelineError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                                    "lower train.optimizer.lr")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.item()))
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{losses[-1]:.4f}",
                            best_dice=f"{best_dice:.3f}" if best_dice >= 0 else "-")
        row: dict[str, float] = {"epoch": epoch + 1, "train_loss": distributed.mean(sum(losses) / len(losses), device),
                                 "lr": opt.param_groups[0]["lr"]}
        if main and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            dice = (validate(model, list(val_ds), wf, device, num_classes, head, precision) if len(val_ds)
                    else float("nan"))
            row["val_dice"] = dice
            if len(val_ds) == 0 or dice > best_dice:
                best_dice, best_epoch = (dice if dice == dice else best_dice), epoch + 1
                save_checkpoint(best_path, {**meta, "model_state": model.state_dict(), "epoch": epoch,
                                            "val_dice": dice})
        history.append(row)
        rng = distributed.gather(rng_state(train_tf, generator, device))  # after validation: what comes next
        if main:
            save_checkpoint(last_path, {
                **meta, "model_state": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "best_dice": best_dice, "best_epoch": best_epoch, "history": history, "rng": rng,
                "world_size": world,
            })
            write_json(stage_dir / "history.json", history)
        distributed.barrier()
    if main:  # a run killed between the last epoch's checkpoint and its history resumes with no epoch left
        write_json(stage_dir / "history.json", history)
    bar.close()
    return TrainResult(best_dice, best_epoch, cfg.epochs, history, str(device), world, resumed_from, precision.name)


def trained_head(wf: Workflow, num_classes: int) -> Head:
    """What the network learns to output: an instance-aware head for ``instances.method`` three_class or
    distance, else the manifest's classes (decoding settings are the inference's, not stored here)."""
    inst = wf.instances
    if inst is None or inst.method not in TRAINED_METHODS:
        return Head(num_classes)
    return Head(num_classes, inst.method)


def _restore_rng(state: Mapping[str, Any], rank: int, world: int, transform: Any, generator: torch.Generator,
                 device: torch.device) -> None:
    """This rank's random states from a checkpoint; one saved by another number of processes has no states for
    this one (training stays repeatable: every epoch re-seeds), and one from before exact resume none at all."""
    saved = state.get("rng") or []
    if state.get("world_size", 1) == world and len(saved) == world:
        restore_rng_state(saved[rank], transform, generator, device)
    elif rank == 0:
        log.warning("[train] %s holds no random states for %d process(es); resuming from the per-epoch seeds only",
                    "the checkpoint", world)


def load_history(stage_dir: Path) -> list[dict[str, float]]:
    return json.loads((stage_dir / "history.json").read_text())
