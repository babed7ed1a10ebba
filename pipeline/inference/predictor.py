"""One scan in, labels (and optionally class probabilities) on that scan's own voxel grid out.

The steps are split so a cohort runner can overlap them: :meth:`Predictor.prepare` (MONAI preprocessing, any
thread), :meth:`Predictor.network` (the sliding window, on the model's device) and :meth:`Predictor.restore`
(undo the spatial preprocessing, any thread).

Memory: without probabilities requested and with no resampling in the preprocessing (orientation and crops
only, which the inverse undoes exactly), the stitcher keeps only ``uint8`` labels and the labels are inverted
directly. With resampling (``preprocess.spacing``) the probabilities are kept in float16 and mapped back one class
at a time with a running argmax: never a full-volume float32 array for every class.

Out of memory on the GPU: :meth:`Predictor.network` retries the case with a halved window batch, then stitching on
the CPU, then the network on the CPU, with one warning per step (:mod:`pipeline.runtime.oom`); the next case starts
again from the configured settings.
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
from pipeline.inference.optimize import compile_network, for_inference, warm_up
from pipeline.instances.heads import Head
from pipeline.runtime.precision import Precision, resolve_precision
from pipeline.runtime.sliding_window import LabelSink, ProbabilitySink, argmax_labels, stitch_with_fallback
from pipeline.transforms.build import deterministic_transforms


@dataclass
class NetworkOutput:
    """What :meth:`Predictor.network` hands to :meth:`Predictor.restore`."""

    prepared: dict[str, Any]
    labels: torch.Tensor | None  # (*spatial') uint8 in preprocessed space, when no probabilities are kept
    probs: torch.Tensor | None  # (K, *spatial') float16 in preprocessed space


class Predictor:
    """A network with its preprocessing and sliding-window settings.

    The network runs in ``infer.precision`` resolved on ``device`` (:mod:`pipeline.runtime.precision`), or in
    ``precision`` when given; with ``infer.compile`` the inference copy is compiled (:meth:`warm_up` compiles it
    before the first case).
    """

    def __init__(self, model: nn.Module, preprocess: PreprocessConfig, infer: InferConfig, device: torch.device,
                 spatial_dims: int, head: Head | None = None, precision: Precision | None = None) -> None:
        self.model = for_inference(model, spatial_dims).to(device)  # a channels-last copy; `model` is untouched
        self.in_channels = _in_channels(model)
        if infer.compile:
            self.model = compile_network(self.model)
        self.precision = precision or resolve_precision(infer.precision, device)
        self.warm_up_seconds: float | None = None
        self.head = head
        self.device = device
        self.infer = infer
        self.spatial_dims = spatial_dims
        self.pre = Compose(deterministic_transforms(preprocess, keys=("image",), spatial_dims=spatial_dims,
                                                    load=False))
        self.resamples = preprocess.spacing is not None

    def prepare(self, array: np.ndarray, affine: np.ndarray, name: str = "") -> dict[str, Any]:
        """Preprocess an image ``(*spatial)`` or ``(*spatial, C)`` with its RAS affine (for a 2D image, the 4x4
        affine of the plane it lies in: see :func:`in_plane_affine`)."""
        data = np.asarray(array, dtype=np.float32)
        if isinstance(array, np.ndarray) and np.shares_memory(data, array):
            data = data.copy()  # MONAI's intensity transforms work in place: the caller's scan stays as it was
        data = data[None] if data.ndim == self.spatial_dims else np.moveaxis(data, -1, 0)
        if self.spatial_dims == 2:
            affine = in_plane_affine(affine)
        aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(data)), affine=aff,
                           meta={"original_affine": aff.clone(), "space": "RAS", "filename_or_obj": name,
                                 "spatial_shape": np.asarray(data.shape[1:])})
        return self.pre({"image": image})  # the meta keeps original_affine and spatial_shape for restore()

    def network(self, prepared: dict[str, Any], probabilities: bool = False, case: str | None = None) -> NetworkOutput:
        """Run the sliding window over a prepared image (falling back on out-of-memory errors; ``case`` names it
        in the warnings, by default the file name given to :meth:`prepare`)."""
        image = prepared["image"]
        head = self.head
        keep_probs = probabilities or self.resamples or (head is not None and head.needs_probabilities)
        sink: LabelSink | ProbabilitySink = (ProbabilitySink(image.shape[1:]) if keep_probs
                                             else LabelSink(image.shape[1:]))
        if case is None:
            meta = getattr(image, "meta", {})
            case = str(meta.get("filename_or_obj", "") or "")
        if self.infer.compile and self.warm_up_seconds is None:
            self.warm_up()
        stitch_with_fallback(self.model, image, self.infer, self.device, sink, case=case,
                             activation=head.activation if head is not None else None, precision=self.precision)
        if isinstance(sink, ProbabilitySink):
            return NetworkOutput(prepared, None, sink.result)
        return NetworkOutput(prepared, sink.result, None)

    def warm_up(self) -> float:
        """Compile the network for every window-batch size now (``infer.compile``; once), so no case's time holds
        it; returns the seconds (0 without ``infer.compile``)."""
        if not self.infer.compile:
            return 0.0
        if self.warm_up_seconds is None:
            self.warm_up_seconds = warm_up(self.model, self.in_channels, self.infer.roi_size,
                                           self.infer.sw_batch_size, self.device, self.precision)
        return self.warm_up_seconds

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
        """Labels ``(*spatial)`` uint8 and, when asked, probabilities ``(K, *spatial)`` float16 on the scan's grid
        (the manifest's classes: an instance head's output folded into them)."""
        labels, probs, _ = self.restore_all(out, probabilities)
        return labels, probs

    def restore_all(self, out: NetworkOutput, probabilities: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`restore` and the instance map (uint16 or uint32; None when the head makes none)."""
        head = self.head
        if out.labels is not None:
            labels = self._invert(out.prepared, out.labels[None].float(), nearest=True)[0]
            labels_np = np.asarray(labels.round().to(torch.uint8).numpy())
            instances = head.decode(None, labels_np) if head is not None else None
            if instances is not None:
                labels_np[instances == 0] = 0
            return labels_np, None, instances
        assert out.probs is not None
        image = out.prepared["image"]
        keep = probabilities or (head is not None and head.needs_probabilities)
        labels_np, probs = resample_to_grid(out.probs, image.affine, np.asarray(image.meta["original_affine"]),
                                            tuple(int(n) for n in image.meta["spatial_shape"]), keep)
        if head is None:
            return labels_np, probs, None
        if head.out_channels != head.classes:  # an instance head: fold its channels into the manifest's classes
            assert probs is not None
            labels_np = head.labels(probs)
        instances = head.decode(probs, labels_np)
        if instances is not None:  # objects under min_size_px leave the label map too: both show the same objects
            labels_np[instances == 0] = 0
        kept = head.class_probabilities(probs) if probabilities and probs is not None else None
        return labels_np, kept, instances

    def __call__(self, array: np.ndarray, affine: np.ndarray,
                 probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """All three steps in sequence."""
        return self.restore(self.network(self.prepare(array, affine), probabilities), probabilities)


def _in_channels(model: nn.Module) -> int:
    """The input channels of a network: those of its first convolution (1 when it has none)."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return 1


def in_plane_affine(affine: np.ndarray) -> np.ndarray:
    """The geometry of a 2D image as MONAI's 2D transforms read it (the affine's top-left 2x2 block): a slice in
    the world x-y plane keeps its affine; a coronal, sagittal or tilted one, whose block would be singular or
    foreshortened, gets its true in-plane voxel sizes in stored order. Outputs are still written with the scan's
    own affine."""
    affine = np.asarray(affine, dtype=np.float64)
    columns = affine[:3, :2]
    sizes = np.linalg.norm(columns, axis=0)
    if np.all(np.abs(columns[2]) <= 1e-3 * sizes):  # in the world x-y plane
        return affine
    out = np.eye(4)
    out[0, 0], out[1, 1], out[2, 2] = sizes[0], sizes[1], np.linalg.norm(affine[:3, 2])
    out[:3, 3] = affine[:3, 3]
    return out


SLAB_VOXELS = 1 << 21  # output voxels resampled per step: bounds the sampling grid and the float32 block


def resample_to_grid(probs: torch.Tensor, source_affine: Any, target_affine: np.ndarray,
                     target_shape: tuple[int, ...], keep: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Map class probabilities ``(K, *source)`` from the preprocessed grid back to the scan's grid and reduce
    them to labels, slab by slab along the first axis.

    Each scan voxel centre is carried through the affines (scan voxel → world → preprocessed voxel) and the
    probabilities of every class are sampled there at once, trilinearly with border clamping (MONAI's ``Spacing``
    convention: voxel centres at integer coordinates; ``tests/inference/test_predictor.py`` checks it against
    ``Invertd``). Only the block of the source the slab needs is converted to float32; voxels that fall outside the
    preprocessed volume (a foreground crop) are background.

    Reorientation and resampling map each scan axis onto one preprocessed axis (the voxel-to-voxel matrix has one
    non-zero per row and column); trilinear interpolation is then done one axis at a time, a few times faster than
    ``grid_sample``, which handles any other affine.

    Returns:
        labels ``target_shape`` uint8, and with ``keep`` the probabilities ``(K, *target_shape)`` float16.
    """
    from monai.data.utils import to_affine_nd

    nd = len(target_shape)
    src = np.asarray(to_affine_nd(3, np.asarray(source_affine, dtype=np.float64)), dtype=np.float64)
    tgt = np.asarray(to_affine_nd(3, np.asarray(target_affine, dtype=np.float64)), dtype=np.float64)
    m = (np.linalg.inv(src) @ tgt)[:nd, [*range(nd), 3]]  # target voxel -> source voxel
    src_shape = tuple(int(n) for n in probs.shape[1:])
    k = probs.shape[0]
    labels = np.zeros(target_shape, dtype=np.uint8)
    kept = np.zeros((k, *target_shape), dtype=np.float16) if keep else None
    rest = tuple(target_shape[1:])
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(rest))))
    perm = _axis_permutation(m[:, :nd], target_shape)
    for x0 in range(0, target_shape[0], step):
        x1 = min(target_shape[0], x0 + step)
        if perm is not None:
            sampled, inside = _sample_separable(probs, m, perm, src_shape, x0, x1, rest)
        else:
            sampled, inside = _sample_general(probs, torch.as_tensor(m), src_shape, x0, x1, rest)
        lab = argmax_labels(sampled)
        lab[~inside] = 0
        labels[x0:x1] = lab.numpy()
        if kept is not None:
            sampled[:, ~inside] = 0
            sampled[0, ~inside] = 1
            kept[:, x0:x1] = sampled.numpy()
    return labels, kept


def _axis_permutation(lin: np.ndarray, shape: tuple[int, ...] | None = None) -> list[int] | None:
    """For a voxel-to-voxel matrix with one non-zero per row and column, the source axis of each target axis.

    Entries that move no target voxel of ``shape`` by more than 1e-4 voxel count as zero: NIfTI headers store
    affines in float32, so a reoriented, resampled scan's matrix has off-diagonal entries around 1e-8.
    """
    extent = np.asarray(shape if shape is not None else [1] * lin.shape[1], dtype=np.float64)
    nz = np.abs(lin) * np.maximum(extent - 1, 1)[None, :] > 1e-4
    if not (np.all(nz.sum(0) == 1) and np.all(nz.sum(1) == 1)):
        return None
    return [int(np.argmax(nz[:, j])) for j in range(lin.shape[1])]


def _sample_separable(probs: torch.Tensor, m: np.ndarray, perm: list[int], src_shape: tuple[int, ...], x0: int,
                      x1: int, rest: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear samples ``(K, x1 - x0, *rest)`` (float32) and the inside mask, one axis at a time."""
    nd = len(perm)
    targets = [torch.arange(x0, x1, dtype=torch.float64), *(torch.arange(n, dtype=torch.float64) for n in rest)]
    coords = [targets[j] * float(m[perm[j], j]) + float(m[perm[j], nd]) for j in range(nd)]
    lo, hi = [0] * nd, [0] * nd
    for j, c in enumerate(coords):
        n = src_shape[perm[j]]
        lo[j] = int(min(n - 1, max(0, np.floor(float(c.min())))))
        hi[j] = int(max(lo[j] + 1, min(n, np.ceil(float(c.max())) + 1)))
    region = [slice(None)] * (nd + 1)
    for j in range(nd):
        region[perm[j] + 1] = slice(lo[j], hi[j])
    block = probs[tuple(region)].permute(0, *(p + 1 for p in perm)).float().contiguous()  # target axis order
    inside = torch.ones((x1 - x0, *rest), dtype=torch.bool)
    for j, c in enumerate(coords):
        n = src_shape[perm[j]]
        view = [1] * nd
        view[j] = -1
        inside &= ((c > -0.5) & (c < n - 0.5)).view(view)
        local = (c.clamp(0, n - 1) - lo[j]).clamp(0, hi[j] - lo[j] - 1)  # border padding, in the block
        i0 = local.floor().long()
        i1 = (i0 + 1).clamp(max=hi[j] - lo[j] - 1)
        w = (local - i0).float().view([1, *view])
        block = torch.lerp(block.index_select(j + 1, i0), block.index_select(j + 1, i1), w)
    return block, inside


def _sample_general(probs: torch.Tensor, m: torch.Tensor, src_shape: tuple[int, ...], x0: int, x1: int,
                    rest: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear samples ``(K, x1 - x0, *rest)`` (float32) and the inside mask through any affine."""
    nd = len(src_shape)
    axes = [torch.arange(n, dtype=torch.float64) for n in rest]
    idx = torch.meshgrid(torch.arange(x0, x1, dtype=torch.float64), *axes, indexing="ij")
    coords = torch.einsum("ij,j...->i...", m[:, :nd], torch.stack(idx)) + m[:, nd].reshape(-1, *[1] * nd)
    inside = torch.ones(coords.shape[1:], dtype=torch.bool)
    lo, hi = [], []
    for d in range(nd):
        c = coords[d]
        inside &= (c > -0.5) & (c < src_shape[d] - 0.5)
        lo.append(int(max(0, min(src_shape[d] - 1, np.floor(float(c.min()))))))
        hi.append(int(max(lo[-1] + 1, min(src_shape[d], np.ceil(float(c.max())) + 1))))
    block = probs[(slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))].float()
    grid = []
    for d in reversed(range(nd)):  # grid_sample wants the last axis first
        size = hi[d] - lo[d]
        c = coords[d] - lo[d]
        grid.append(c * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(c))
    sampled = torch.nn.functional.grid_sample(
        block[None], torch.stack(grid, -1)[None].float(), mode="bilinear", padding_mode="border",
        align_corners=True)[0]
    return sampled, inside
