"""Synthetic data generators a manifest can name in ``source.generator``; they write missing cases on first use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.data.synthetic_prostate import write_prostate_case
from pipeline.registry import Registry

GENERATORS: Registry[Callable[[Path, dict[str, Any], dict[str, Any]], None]] = Registry("generator")
GENERATORS.register("synthetic_prostate")(write_prostate_case)

from pipeline.data import synthetic_cells, synthetic_oct  # noqa: E402

synthetic_cells.register(GENERATORS)  # synthetic_cells_2d, synthetic_cells_3d
synthetic_oct.register(GENERATORS)  # synthetic_oct
