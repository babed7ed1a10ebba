"""One scan in, labels (and optionally class probabilities) on that scan's own voxel grid out.

The steps are split so a cohort runner can overlap them: :meth:`Predictor.prepare` (MONAI preprocessing, any
thread), :meth:`Predictor.network` (the sliding window, on the model's device) and :meth:`Predictor.restore`
(undo the spatial preprocessing, any thread).

Memory: without probabilities requested and with no resampling in the preprocessing (orientation and crops
only, which the inverse undoes exactly), the stitcher keeps only ``uint8`` labels and the labels are inverted
directly. With resampling (``preprocess.spacing``) the probabilities are kept in float16 and mapped back one class
at a time with a running argmax: never a full-volume float32 array for every class.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from torch import nn

from pipeline.config.schema import InferConfig, PreprocessConfig
from pipeline.inference.stitch import LabelSink, ProbabilitySink, stitch
from pipeline.transforms.build import deterministic_transforms


@dataclass
class NetworkOutput:
    """What :meth:`Predictor.network` hands to :meth:`Predictor.restore`."""

    prepared: dict[str, Any]
    labels: torch.Tensor | None  # (*spatial') uint8 in preprocessed space, when no probabilities are kept
    probs: torch.Tensor | None  # (K, *spatial') float16 in preprocessed space


class Predictor:
    """A network with its preprocessing and sliding-window settings."""

    def __init__(self, model: nn.Module, preprocess: PreprocessConfig, infer: InferConfig, device: torch.device,
                 spatial_dims: int) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.infer = infer
        self.spatial_dims = spatial_dims
        self.pre = Compose(deterministic_transforms(preprocess, keys=("image",), spatial_dims=spatial_dims,
                                                    load=False))
        self.resamples = preprocess.spacing is not None

    def prepare(self, array: np.ndarray, affine: np.ndarray, name: str = "") -> dict[str, Any]:
        """Preprocess an image ``(*spatial)`` or ``(*spatial, C)`` with its RAS affine."""
        data = np.asarray(array, dtype=np.float32)
        data = data[None] if data.ndim == self.spatial_dims else np.moveaxis(data, -1, 0)
        aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(data)), affine=aff,
                           meta={"original_affine": aff.clone(), "space": "RAS", "filename_or_obj": name,
                                 "spatial_shape": np.asarray(data.shape[1:])})
        return self.pre({"image": image})

    def network(self, prepared: dict[str, Any], probabilities: bool = False) -> NetworkOutput:
        """Run the sliding window over a prepared image."""
        image = prepared["image"]
        keep_probs = probabilities or self.resamples
        sink: LabelSink | ProbabilitySink = (ProbabilitySink(image.shape[1:]) if keep_probs
                                             else LabelSink(image.shape[1:]))
        cfg = self.infer
        stitch(self.model, image, cfg.roi_size, self.device, sink, overlap=cfg.overlap,
               sw_batch_size=cfg.sw_batch_size, mode=cfg.mode, sigma_scale=cfg.sigma_scale,
               flip_axes=cfg.tta_flip_axes)
        if isinstance(sink, ProbabilitySink):
            return NetworkOutput(prepared, None, sink.result)
        return NetworkOutput(prepared, sink.result, None)

    def _invert(self, prepared: dict[str, Any], data: torch.Tensor, nearest: bool) -> torch.Tensor:
        image = prepared["image"]
        pred = MetaTensor(data, meta=image.meta, applied_operations=list(image.applied_operations))
        with warnings.catch_warnings():
            # MONAI's inverse orientation warns for 2D images that their (3D) axis codes are longer than the
            # image's rank; the inverse itself is right (tests/inference/test_geometry.py).
            warnings.filterwarnings("ignore", message="axcodes .* length is smaller")
            out = Invertd(keys="pred", transform=self.pre, orig_keys="image", nearest_interp=nearest)(
                {"image": image, "pred": pred})["pred"]
        return out.as_tensor() if isinstance(out, MetaTensor) else out

    def restore(self, out: NetworkOutput, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels ``(*spatial)`` uint8 and, when asked, probabilities ``(K, *spatial)`` float16 on the scan's grid."""
        if out.labels is not None:
            labels = self._invert(out.prepared, out.labels[None].float(), nearest=True)[0]
            return np.asarray(labels.round().to(torch.uint8).numpy()), None
        assert out.probs is not None
        best: torch.Tensor | None = None
        labels_t: torch.Tensor | None = None
        kept: np.ndarray | None = None
        for k in range(out.probs.shape[0]):  # one class at a time: no full float32 array for every class
            channel = self._invert(out.prepared, out.probs[k : k + 1].float(), nearest=False)[0]
            if best is None:
                best, labels_t = channel, torch.zeros(channel.shape, dtype=torch.uint8)
            else:
                better = channel > best
                labels_t[better] = k  # type: ignore[index]
                best = torch.maximum(best, channel)
            if probabilities:
                if kept is None:
                    kept = np.zeros((out.probs.shape[0], *channel.shape), dtype=np.float16)
                kept[k] = channel.numpy()
        assert labels_t is not None
        return np.asarray(labels_t.numpy()), kept

    def __call__(self, array: np.ndarray, affine: np.ndarray,
                 probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """All three steps in sequence."""
        return self.restore(self.network(self.prepare(array, affine), probabilities), probabilities)
