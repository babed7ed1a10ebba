"""Device selection from a workflow's ``device`` setting."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def select_device(requested: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a user error.

    Args:
        requested: ``auto``, ``cpu``, ``cuda`` or any other :class:`torch.device` string.

    Raises:
        PipelineError: ``cuda`` was requested but no CUDA GPU is available.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(requested)
