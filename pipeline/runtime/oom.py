"""The out-of-memory fallback ladder for predicting a case: a scan too large for the GPU still gets segmented.

How much GPU memory a case needs depends on the case (its size after resampling), the window batch and the
classes, so a workflow that fits on one scan can run out of memory on the next. Rather than failing the case (or
a whole cohort), :func:`run_with_fallback` retries it with less and less on the device, one step at a time:

1. the window batch (``sw_batch_size``) halved, repeatedly, down to 1 window per forward pass;
2. the stitching buffer (the window-deep accumulator and its weights) in host memory, the network still on the
   device: every window batch's logits travel to the host;
3. the network itself on the host.

Each step logs one warning naming the case and what was done, so a user whose cohort keeps falling back knows to
lower ``infer.sw_batch_size`` (or to use a larger GPU). An error that is not an out-of-memory error, or an
out-of-memory error on the last step, propagates unchanged.

The ladder is per case: every case starts again with the configured settings. What runs out of memory is usually
one large scan, and keeping a reduced setting for the rest of a cohort would slow every later case down (and make
its speed depend on the order of the cases).

Every step is a plain :class:`Attempt` (batch size, network device, stitching device), so the ladder runs the
same way whatever the devices are: with ``device`` and ``host`` both CPUs (``tests/runtime/test_oom_ladder.py``
uses ``cpu:0`` for the "device"), an out-of-memory error simulated by a hook walks exactly the steps a GPU would.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

log = logging.getLogger("pipeline")

HOST = torch.device("cpu")
T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """One rung of the ladder: where the network runs, where the windows are stitched, how many per batch."""

    sw_batch_size: int
    network_device: torch.device
    stitch_device: torch.device
    step: str  # "configured", "halved", "cpu-stitch" or "cpu-network"

    def describe(self) -> str:
        """``with sw_batch_size 4``, ``with sw_batch_size 1 and the stitching on cpu``, ..."""
        text = f"with sw_batch_size {self.sw_batch_size}"
        if self.network_device != self.stitch_device:
            text += f" and the stitching on {self.stitch_device}"
        return text


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), or a ``RuntimeError``
    whose message says ``out of memory`` (cuDNN and some CUDA kernels raise those)."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                       and "out of memory" in str(exc).lower())


def release_memory(device: torch.device) -> None:
    """Give the memory of the failed attempt back: its tensors (collected), then CUDA's cached blocks."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def ladder(sw_batch_size: int, device: torch.device, host: torch.device = HOST) -> list[Attempt]:
    """The attempts in order: the configured batch, halvings down to 1, stitching on ``host``, the network on
    ``host``. With ``device == host`` the last two are still tried (they move nothing but they run: the ladder
    behaves the same on any device, and a simulated out-of-memory error can reach them)."""
    size = max(1, int(sw_batch_size))
    steps = [Attempt(size, device, device, "configured")]
    while size > 1:
        size //= 2
        steps.append(Attempt(size, device, device, "halved"))
    steps.append(Attempt(size, device, host, "cpu-stitch"))
    steps.append(Attempt(size, host, host, "cpu-network"))
    return steps


def _retry_message(case: str, failed: Attempt, nxt: Attempt, exc: BaseException) -> str:
    if nxt.step == "halved":
        action = f"retrying with {nxt.sw_batch_size}"
    elif nxt.step == "cpu-stitch":
        action = f"retrying with the stitching buffer on the {nxt.stitch_device} (network still on {nxt.network_device})"
    else:
        action = f"retrying with the network on the {nxt.network_device}"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"{case}: " if case else ""
    return f"{prefix}out of memory on {failed.network_device} {failed.describe()}: {action} ({first_line[:200]})"


def run_with_fallback(attempt: Callable[[Attempt], T], sw_batch_size: int, device: torch.device, case: str = "",
                      host: torch.device = HOST) -> tuple[T, Attempt]:
    """Run ``attempt`` on the first rung of :func:`ladder`; on an out-of-memory error free the memory, log one
    warning and run it on the next rung.

    Args:
        attempt: does the whole work for one rung and returns its result; it must start from scratch each time
            (whatever a failed call left behind is overwritten or discarded).
        sw_batch_size: the configured window batch.
        device: the configured device (network and stitching).
        case: names the case in the warnings (empty when the caller does not know it).
        host: where the last two rungs stitch and run the network.

    Returns:
        the result and the rung that produced it.

    Raises:
        whatever ``attempt`` raises that is not an out-of-memory error, and the out-of-memory error of the last
        rung.
    """
    steps = ladder(sw_batch_size, device, host)
    for i, step in enumerate(steps):
        if i:
            release_memory(device)
        try:
            return attempt(step), step
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or i == len(steps) - 1:
                raise
            message = _retry_message(case, step, steps[i + 1], exc)
        # Outside the except block: the exception (and the frames holding the failed attempt's tensors) is gone.
        log.warning(message)
    raise AssertionError("unreachable: the last rung returns or raises")
