"""Data-parallel training over several processes (PyTorch's ``torchrun``), one process per GPU or CPU share.

``pipeline run WORKFLOW --nproc N`` starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m
pipeline run WORKFLOW ...`` (:func:`launch_command`); several machines run ``torchrun --nnodes ... -m pipeline run``
themselves. Every process then sees torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and calls
:func:`init`: NCCL between GPUs (each process on GPU ``LOCAL_RANK``), gloo on CPUs.

Rank 0 runs the whole workflow: prepare, preprocess, train, infer, ... and alone writes the run folder and talks
to MLflow. The other ranks only train: they wait (:func:`wait_for_train`) until rank 0 reaches the train stage and
says whether it trains (and whether it resumes) or reuses a finished train stage (:func:`announce`), train with it
and exit. The waits use their own gloo group with a long timeout (:data:`WAIT_TIMEOUT`), since rank 0 may spend
hours preparing data or validating while the others wait; training's own collectives keep PyTorch's default.

Each epoch's patches are drawn once from the seeded generator, identically on every rank, and dealt out by rank
(:class:`ShardedRandomSampler`), so one process draws exactly what a single-process run draws and ``N`` processes
together draw ``N`` times that with the same seed.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import RandomSampler, Sampler

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

WAIT_TIMEOUT = timedelta(hours=12)  # how long ranks > 0 wait for rank 0 (data preparation, validation)
TRAIN, REUSED, ABORTED = "train", "reused", "aborted"

_wait_group: Any = None
_announced = False


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes torchrun started (1 process, rank 0 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch() -> Launch:
    """This process's rank, local rank and world size from torchrun's environment."""
    env = os.environ
    return Launch(int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1")))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files, validates and reports (rank 0, or the only process)."""
    return rank() == 0


def launch_command(nproc: int, pipeline_args: list[str]) -> list[str]:
    """The command that runs ``pipeline <pipeline_args>`` in ``nproc`` processes on this machine."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "pipeline", *pipeline_args]


def die_with_parent(sig: int) -> None:
    """Linux: this process gets ``sig`` when its parent dies. torchrun starts its workers in sessions of their own,
    so without this a killed launch (``kill -9``, a lost terminal) would leave trainers running on in the run folder
    of the rerun. Elsewhere a no-op."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def check_devices(requested: str, nproc: int) -> None:
    """More processes on this machine than GPUs for a CUDA workflow is a mistake (two processes on one GPU).

    Raises:
        PipelineError: ``nproc`` exceeds the GPUs visible here.
    """
    from pipeline.runtime.device import select_device

    device = select_device(requested)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise PipelineError(f"--nproc {nproc}: train.device is {requested} ({device.type}) but this machine has "
                            f"{torch.cuda.device_count()} GPU(s); use at most that many processes per machine, or "
                            "--set train.device=cpu")


def init(requested: str) -> torch.device:
    """Join torchrun's process group (when there is one) and return this process's training device.

    Raises:
        PipelineError: a CUDA workflow on a machine with fewer GPUs than processes.
    """
    global _wait_group
    from pipeline.runtime.device import select_device

    me = launch()
    device = select_device(requested)
    if not me.distributed:
        return device
    die_with_parent(signal.SIGKILL)  # torchrun's agent died: so do its workers
    if device.type == "cuda":
        if me.local_rank >= torch.cuda.device_count():
            raise PipelineError(f"process {me.rank} (local rank {me.local_rank}) has no GPU of its own: this machine "
                                f"has {torch.cuda.device_count()}; start at most that many processes per machine")
        device = torch.device("cuda", me.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        log.info("[train] process %d of %d (%s)", me.rank, me.world_size, device)
    return device


def shutdown() -> None:
    """Leave the process group (a no-op in a single process)."""
    global _wait_group, _announced
    if dist.is_initialized():
        dist.destroy_process_group()
    _wait_group, _announced = None, False


def announce(what: str, **details: Any) -> None:
    """Rank 0 tells the waiting ranks what to do: :data:`TRAIN` (with ``details``, e.g. ``resume``), :data:`REUSED`
    (train stage already finished) or :data:`ABORTED` (the run stopped before training). Only the first call of a
    run says anything; later ones are no-ops, so every way out of rank 0 may call it."""
    global _announced
    if not dist.is_initialized() or rank() != 0 or _announced:
        return
    _announced = True
    dist.broadcast_object_list([{"what": what, **details}], src=0, group=_wait_group)


def wait_for_train() -> dict[str, Any]:
    """Ranks > 0: wait for rank 0's :func:`announce` (``{"what": ..., **details}``)."""
    message: list[Any] = [None]
    dist.broadcast_object_list(message, src=0, group=_wait_group)
    return message[0]


def barrier() -> None:
    """Every rank waits for the others (rank 0 may be validating: the long timeout)."""
    if dist.is_initialized():
        dist.barrier(group=_wait_group)


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others); ``[obj]`` in a single process."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_wait_group)
    return out


def mean(value: float, device: torch.device) -> float:
    """The mean of ``value`` over all ranks."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """The model to train: in DistributedDataParallel across ranks (BatchNorm as SyncBatchNorm when asked), else
    ``model`` itself. Checkpoints keep saving ``model`` (the unwrapped module).

    Raises:
        PipelineError: ``train.sync_batchnorm`` on CPUs (PyTorch synchronises BatchNorm on GPUs only).
    """
    if world_size() == 1:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise PipelineError("train.sync_batchnorm: PyTorch's SyncBatchNorm needs CUDA GPUs; set it to false for "
                                "training on CPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ShardedRandomSampler(Sampler[int]):
    """``num_samples`` indices (with replacement) per rank: every rank draws the same ``num_samples * world``
    indices from ``generator`` (as :class:`torch.utils.data.RandomSampler` does) and keeps every ``world``-th one
    from its rank on. With one rank it yields exactly what ``RandomSampler`` yields."""

    def __init__(self, n: int, num_samples: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> None:
        self.n, self.num_samples, self.generator, self.rank, self.world = n, num_samples, generator, rank, world

    def __iter__(self) -> Iterator[int]:
        drawn = list(RandomSampler(range(self.n), replacement=True, num_samples=self.num_samples * self.world,
                                   generator=self.generator))
        return iter(drawn[self.rank::self.world])

    def __len__(self) -> int:
        return self.num_samples


def same_run_dir(run_dir: Path, main_run_dir: str) -> None:
    """A rank > 0 computed the run folder itself; it must be rank 0's (same workflow, same overrides).

    Raises:
        PipelineError: the folders differ.
    """
    if Path(main_run_dir).name != run_dir.name:
        raise PipelineError(f"process {rank()} would train in {run_dir} but rank 0 trains in {main_run_dir}: start "
                            "every process with the same workflow file, --set overrides and --run-dir")
