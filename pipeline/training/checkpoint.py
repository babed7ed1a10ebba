"""Checkpoints hold tensors and plain data only, so they load with ``torch.load(weights_only=True)``.

That includes the random states an exact resume needs (:func:`rng_state`): NumPy's arrays are stored as tensors.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.io.atomic import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects.

    Raises:
        PipelineError: the file is missing or not a valid checkpoint.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise PipelineError(f"cannot load checkpoint {path} ({exc}); delete it and re-run training") from None


def _monai_states(transform: Any) -> list[np.random.RandomState]:
    """The random generators of a MONAI ``Compose``'s random transforms (and of the random transforms they hold),
    in a fixed order."""
    from monai.transforms import Randomizable

    found: dict[int, np.random.RandomState] = {}
    for t in (transform, *transform.flatten().transforms):
        for obj in (t, *vars(t).values()):
            if isinstance(obj, Randomizable):
                found.setdefault(id(obj.R), obj.R)
    return list(found.values())


def _numpy_state(state: Any) -> dict[str, Any]:
    """NumPy's legacy ``(kind, keys, pos, has_gauss, cached)`` state with its key array as a tensor."""
    kind, keys, pos, has_gauss, cached = state
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _from_numpy_state(state: dict[str, Any]) -> tuple[Any, ...]:
    return (state["kind"], state["keys"].cpu().numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached"])


def rng_state(transform: Any, generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state training draws from, as checkpoint-safe data: Python's ``random``, NumPy's global
    generator, PyTorch's CPU (and this process's CUDA device's) generator, the sampler's generator and the
    generators of the MONAI random transforms in ``transform``."""
    state: dict[str, Any] = {
        "python": random.getstate(), "numpy": _numpy_state(np.random.get_state()), "torch": torch.get_rng_state(),
        "sampler": generator.get_state(), "monai": [_numpy_state(r.get_state()) for r in _monai_states(transform)],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], transform: Any, generator: torch.Generator,
                      device: torch.device) -> None:
    """Put back what :func:`rng_state` saved (the same transforms, in the same order), also from a checkpoint
    loaded onto a GPU (generator states are CPU byte tensors)."""
    random.setstate(state["python"])
    np.random.set_state(_from_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["sampler"].cpu())
    generators = _monai_states(transform)
    if len(generators) != len(state["monai"]):
        raise PipelineError(f"the checkpoint holds {len(state['monai'])} augmentation random states but the "
                            f"workflow has {len(generators)} random transforms; delete the train folder and re-run")
    for r, saved in zip(generators, state["monai"]):
        r.set_state(_from_numpy_state(saved))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
