"""The arithmetic precision of the network: the policy behind ``train.precision``, ``infer.precision`` and
``pipeline infer --precision``.

``auto`` picks bfloat16 where the hardware multiplies it: CPUs with the ``amx_bf16`` or ``avx512_bf16`` flags
(Intel Sapphire Rapids and later, AMD Zen 4 and later) and CUDA devices that support it (Ampere and later); float16
on older CUDA devices (what ``train.amp`` always did there); float32 everywhere else. It never picks the emulated
bfloat16 of older CPUs: on an AVX2 CPU a 3D convolution under bfloat16 autocast ran ~90x slower than in float32.
``train.amp: false`` makes ``auto`` mean float32 (the meaning it had before ``precision`` existed). The
environment variable ``MEDSEG_AUTO_PRECISION`` (``fp32``, ``bf16`` or ``fp16``) pins what ``auto`` means on a
machine, whatever its hardware: the same arithmetic on every node of a mixed cluster, or a test suite whose
results do not depend on which CPU the CI runner drew (``tests/conftest.py`` pins fp32).

Only the network runs in the lower precision, under :func:`torch.autocast` (convolutions and matrix products;
weights stay float32, so checkpoints keep their format). Everything around it stays float32: the instance-norm
statistics (:mod:`pipeline.inference.optimize`; PyTorch's own norms are on autocast's float32 list), the logits
are cast to float32 before the softmax, the stitching weights and buffers are float32, and losses and Dice are
computed from float32 logits (:func:`pipeline.training.trainer.compute_loss`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
Requested = Literal["auto", "fp32", "bf16", "fp16"]
AUTO_ENV = "MEDSEG_AUTO_PRECISION"
HARDWARE_BF16 = ("amx_bf16", "avx512_bf16")  # lscpu / /proc/cpuinfo flags of CPUs that multiply bf16 natively
HARDWARE_FP16 = ("amx_fp16", "avx512_fp16")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def hardware_bf16(self) -> bool:
        return any(f in self.flags for f in HARDWARE_BF16)

    @property
    def hardware_fp16(self) -> bool:
        return any(f in self.flags for f in HARDWARE_FP16)

    def reported_flags(self) -> str:
        """The flags that decide the arithmetic (``-`` when none), in a fixed order."""
        return " ".join(f for f in REPORTED_FLAGS if f in self.flags) or "-"


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU model and feature flags (``/proc/cpuinfo``, as ``lscpu`` shows them; elsewhere the
    processor name and no flags, so ``auto`` stays float32)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.processor() or platform.machine())


def parse_cpuinfo(text: str, fallback_model: str = "") -> CpuInfo:
    """The model name and flags of the first processor in a ``/proc/cpuinfo`` text (x86 ``flags``, Arm
    ``Features``)."""
    model, flags = fallback_model, frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip() and model == fallback_model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, flags)


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what the network computes in on ``device_type``, and why."""

    name: Literal["fp32", "bf16", "fp16"]
    device_type: str = "cpu"
    requested: str = "fp32"
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def lowered(self) -> bool:
        """True when the network runs under autocast (bf16 or fp16)."""
        return self.name != "fp32"

    @property
    def needs_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context of the network's forward pass (a no-op for fp32)."""
        if not self.lowered:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def on(self, device: torch.device) -> Precision:
        """This precision for a network moved to ``device`` (the out-of-memory fallback to the CPU): the same on
        the same kind of device, else what ``auto`` picks there (never emulated bf16 on a CPU without it); fp32
        stays fp32 anywhere."""
        if device.type == self.device_type or not self.lowered:
            return self
        return resolve_precision("auto", device, quiet=True)

    def describe(self) -> str:
        """``"fp32 (auto: this CPU has no hardware bf16 ...)"``: what is printed and logged."""
        return f"{self.name} ({self.reason})" if self.reason else self.name

    def __str__(self) -> str:
        return self.name


FP32 = Precision("fp32", "cpu", "fp32", "asked for")


def resolve_precision(requested: str, device: torch.device | str, amp: bool = True, quiet: bool = False,
                      cpu: CpuInfo | None = None, cuda_bf16: bool | None = None) -> Precision:
    """What ``requested`` means on ``device``.

    Args:
        requested: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        amp: ``train.amp``; false makes ``auto`` float32.
        quiet: no warning for an explicit precision the hardware emulates.
        cpu: the CPU's flags (default: this machine's, :func:`cpu_info`).
        cuda_bf16: whether the CUDA device multiplies bf16 (default: asked from PyTorch).
    """
    device = torch.device(device)
    kind = device.type
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return Precision("fp32", kind, requested, "asked for")
    pinned = os.environ.get(AUTO_ENV, "").strip().lower()
    if requested == "auto" and pinned:
        if pinned not in PRECISIONS[1:]:
            raise PipelineError(f"${AUTO_ENV}={pinned!r}: use fp32, bf16 or fp16 (or unset it)")
        if not amp:
            return Precision("fp32", kind, requested, "auto with train.amp false")
        return Precision(pinned, kind, requested, f"auto pinned by ${AUTO_ENV}")  # type: ignore[arg-type]
    cpu = cpu or cpu_info()
    if kind == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
        if requested == "auto":
            if not amp:
                return Precision("fp32", kind, requested, "auto with train.amp false")
            if cuda_bf16:
                return Precision("bf16", kind, requested, "auto: this GPU multiplies bf16")
            return Precision("fp16", kind, requested, "auto: this GPU has no bf16; fp16 autocast")
        if requested == "bf16" and not cuda_bf16 and not quiet:
            log.warning("precision bf16 on a GPU without bf16 arithmetic (older than Ampere): emulated and slow; "
                        "use auto (fp16 there) or fp32")
        return Precision(requested, kind, requested, "asked for")  # type: ignore[arg-type]
    if kind != "cpu":
        if requested == "auto":
            return Precision("fp32", kind, requested, f"auto: no lower precision chosen on {kind}")
        return Precision(requested, kind, requested, "asked for")  # type: ignore[arg-type]
    if requested == "auto":
        if not amp:
            return Precision("fp32", kind, requested, "auto with train.amp false")
        if cpu.hardware_bf16:
            present = " ".join(f for f in HARDWARE_BF16 if f in cpu.flags)
            return Precision("bf16", kind, requested, f"auto: this CPU multiplies bf16 in hardware ({present})")
        return Precision("fp32", kind, requested, "auto: this CPU has no hardware bf16 (no amx_bf16 or avx512_bf16 "
                         "flag)")
    native = cpu.hardware_bf16 if requested == "bf16" else cpu.hardware_fp16
    if not native and not quiet:
        log.warning("precision %s on a CPU without hardware %s (flags: %s): it is emulated and can be ~100x slower "
                    "than fp32; use auto or fp32", requested, requested, cpu.reported_flags())
    return Precision(requested, kind, requested, "asked for" + ("" if native else ", emulated on this CPU"))


def precision_here(requested: str, device: str, amp: bool = True) -> str | None:
    """What ``requested`` resolves to on the device the setting ``device`` (``auto``, ``cpu``, ``cuda``) picks on
    this machine (stage keys, run records): ``fp32``, ``bf16`` or ``fp16``; None when that device cannot be had
    (``cuda`` without a GPU: the stage or batch itself says so)."""
    from pipeline.runtime.device import select_device

    try:
        target = select_device(device)
    except PipelineError:
        return None
    return resolve_precision(requested, target, amp=amp, quiet=True).name


def hardware_summary(device: torch.device | str = "cpu") -> dict[str, str]:
    """What decides the speed of the arithmetic here: CPU model, its bf16/AMX flags, PyTorch's thread count and
    version, and the GPU when ``device`` is CUDA (bench tables and run records print it)."""
    cpu = cpu_info()
    out = {"cpu": cpu.model, "cpu_flags": cpu.reported_flags(), "hardware_bf16": "yes" if cpu.hardware_bf16 else "no",
           "torch_threads": str(torch.get_num_threads()), "torch": torch.__version__}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out
