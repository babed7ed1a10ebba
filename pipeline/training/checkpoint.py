"""Checkpoints hold tensors and plain data only, so they load with ``torch.load(weights_only=True)``.

That includes the random states an exact resume needs (:func:`rng_state`): NumPy's arrays are stored as tensors.
"""

from __future__ import annotations

import pickle
import random
import re
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
    except pickle.UnpicklingError as exc:
        raise PipelineError(f"{refused_pickle(path, exc)}; delete it and re-run training") from None
    except Exception as exc:
        raise PipelineError(f"cannot load checkpoint {path} ({exc}); delete it and re-run training") from None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refused_pickle(path: Path, exc: pickle.UnpicklingError) -> str:
    """What to say when ``torch.load(weights_only=True)`` refused ``path`` for holding pickled Python objects: the
    file and the object, in one line (PyTorch's own message spans lines and suggests ``weights_only=False``, which
    would run whatever the file holds)."""
    found = _GLOBAL.search(str(exc))
    what = f"a pickled Python object ({found.group(1)})" if found else "pickled data that are not tensors"
    return (f"{path}: holds {what}, not only tensors and plain data; refused without loading it, since "
            "unpickling it could run code")


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: Path,
                     expected: dict[str, Any] | None = None) -> None:
    """Put a checkpoint's ``model_state`` into ``model``.

    Args:
        expected: the ``model`` entry the checkpoint must hold (name, kwargs, channels, dimensionality), if known.

    Raises:
        PipelineError: the checkpoint was saved by another model, or its weights do not fit ``model``; the message
            names the file and the first difference.
    """
    saved = state.get("model")
    if expected is not None and isinstance(saved, dict) and saved != expected:
        flat = {**{k: v for k, v in saved.items() if k != "kwargs"}, **(saved.get("kwargs") or {})}
        want = {**{k: v for k, v in expected.items() if k != "kwargs"}, **(expected.get("kwargs") or {})}
        diffs = [f"{k}: {flat.get(k)!r} in it, {want.get(k)!r} in the workflow"
                 for k in sorted(set(flat) | set(want), key=str) if flat.get(k) != want.get(k)]
        raise PipelineError(f"{path} was saved by another model ({'; '.join(diffs)}); delete {path.parent} and run "
                            "again to train from the start")
    try:
        model.load_state_dict(state["model_state"])
    except (KeyError, RuntimeError) as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        detail = detail if len(detail) <= 200 else detail[:200] + " ..."
        raise PipelineError(f"{path}: its weights do not fit the model the workflow builds ({detail}); delete "
                            f"{path.parent} and run again to train from the start") from None


def _monai_states(transform: Any) -> list[np.random.RandomState]:
    """The random generators of a MONAI ``Compose``'s random transforms (and of the random transforms they hold),
    in a fixed order. Walks the chain itself: ``Compose.flatten()`` builds a new ``Compose``, whose constructor
    re-seeds (and replaces) every generator it holds."""
    from monai.transforms import Compose, Randomizable

    def walk(t: Any) -> Any:
        yield t
        for child in t.transforms if isinstance(t, Compose) else ():
            yield from walk(child)

    found: dict[int, np.random.RandomState] = {}
    for t in walk(transform):
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
