"""Parameters of the fully connected CRF."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CRFParams:
    """Parameters of the dense CRF (Krähenbühl & Koltun 2011; DeepLab / DeepMedic style).

    Attributes:
        iterations: mean-field iterations (>= 1).
        smooth_weight: weight of the smoothness (position-only) Gaussian kernel (>= 0; 0 disables it).
        smooth_sigma_mm: width of the smoothness kernel in millimetres (> 0).
        bilateral_weight: weight of the appearance (position + intensity) kernel (>= 0; 0 disables it).
        bilateral_sigma_mm: spatial width of the appearance kernel in millimetres (> 0).
        bilateral_sigma_intensity: intensity width of the appearance kernel, in the units of the image passed to
            :func:`dense_crf` (callers pass z-scored images) (> 0).
        bbox_margin_mm: when set, the CRF only runs inside the bounding box of the predicted foreground (argmax not
            background) grown by this margin in millimetres; outside it the labels are the argmax. ``None`` runs on
            the whole volume.
    """

    iterations: int = 5
    smooth_weight: float = 3.0
    smooth_sigma_mm: float = 3.0
    bilateral_weight: float = 5.0
    bilateral_sigma_mm: float = 10.0
    bilateral_sigma_intensity: float = 0.5
    bbox_margin_mm: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"CRFParams.iterations must be an integer >= 1, got {self.iterations!r}")
        for name in ("smooth_weight", "bilateral_weight"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"CRFParams.{name} must be a finite number >= 0, got {v!r}")
        for name in ("smooth_sigma_mm", "bilateral_sigma_mm", "bilateral_sigma_intensity"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"CRFParams.{name} must be a finite number > 0 (a kernel width), got {v!r}")
        m = self.bbox_margin_mm
        if m is not None and (not _is_number(m) or not math.isfinite(m) or m < 0):
            raise ValueError(f"CRFParams.bbox_margin_mm must be None or a finite number >= 0 (millimetres), got {m!r}")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
