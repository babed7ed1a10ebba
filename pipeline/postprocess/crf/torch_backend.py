"""Pure PyTorch backend: the mean-field algorithm of ``pydensecrf``'s ``DenseCRF`` on CPU or CUDA.

The algorithm is the one of ``DenseCRF::inference`` with Potts compatibility, ``DIAG_KERNEL`` and
``NORMALIZE_SYMMETRIC`` (``densecrf.cpp`` / ``pairwise.cpp``)::

    norm_k = 1 / sqrt(lattice_k(1) + 1e-20)                 # per voxel, computed once per kernel
    Q = softmax(-U)
    repeat iterations:
        Q = softmax(-U + sum_k w_k * norm_k * lattice_k(norm_k * Q))

``lattice_k`` is the permutohedral approximation of Gaussian filtering (which includes the voxel's own
contribution, as in pydensecrf); the Potts term ``-w * Q`` of pydensecrf equals ``w * [l != l']`` up to a per-voxel
constant, so nothing else enters. Each lattice is built once and reused for all iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.postprocess.crf.params import CRFParams
from pipeline.postprocess.crf.permutohedral import PermutohedralLattice


def _grid_features(shape: Sequence[int], spacing: Sequence[float], sigma_mm: float, extra: int,
                   device: torch.device) -> torch.Tensor:
    """``(d + extra, N)`` float32 tensor with scaled positions in the first ``d`` rows (C order)."""
    n = int(np.prod(shape))
    d = len(shape)
    feats = torch.empty((d + extra, n), dtype=torch.float32, device=device)
    for ax, (size, sp) in enumerate(zip(shape, spacing, strict=True)):
        # Same float32 product as the pydensecrf backend's features: index * float32(spacing / sigma).
        coord = torch.arange(size, dtype=torch.float32, device=device) * float(np.float32(float(sp) / sigma_mm))
        view_shape = [1] * d
        view_shape[ax] = size
        feats[ax].view(*shape).copy_(coord.view(*view_shape).expand(*shape))
    return feats


def _normaliser(lattice: PermutohedralLattice) -> torch.Tensor:
    """``1 / sqrt(lattice(ones) + 1e-20)`` computed in double then stored in float32, as pydensecrf does."""
    ones = torch.ones((1, lattice.n), dtype=torch.float32, device=lattice.device)
    norm = lattice.compute(ones)
    return (1.0 / torch.sqrt(norm.double() + 1e-20)).to(torch.float32)


def crf_torch(probs: np.ndarray, image: np.ndarray, spacing: Sequence[float], params: CRFParams,
              device: str | torch.device = "cpu") -> np.ndarray:
    """Mean-field inference of the dense CRF with PyTorch tensor ops.

    Args:
        probs: validated ``(K, *spatial)`` float32 probabilities.
        image: validated ``(C, *spatial)`` float32 image.
        spacing: voxel spacing per spatial axis (mm).
        params: CRF parameters.
        device: torch device to compute on (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

    Returns:
        ``(*spatial)`` uint8 labels (on the host).
    """
    dev = torch.device(device)
    k = probs.shape[0]
    shape = tuple(probs.shape[1:])
    n = int(np.prod(shape))
    with torch.no_grad():
        kernels: list[tuple[float, PermutohedralLattice, torch.Tensor]] = []
        if params.smooth_weight > 0:
            feats = _grid_features(shape, spacing, params.smooth_sigma_mm, 0, dev)
            lat = PermutohedralLattice(feats)
            del feats
            kernels.append((float(params.smooth_weight), lat, _normaliser(lat)))
        if params.bilateral_weight > 0:
            c = image.shape[0]
            feats = _grid_features(shape, spacing, params.bilateral_sigma_mm, c, dev)
            inv = float(np.float32(1.0 / params.bilateral_sigma_intensity))
            for ch in range(c):
                col = torch.from_numpy(np.ascontiguousarray(image[ch].reshape(-1), dtype=np.float32))
                feats[len(shape) + ch] = col.to(dev) * inv
            lat = PermutohedralLattice(feats)
            del feats
            kernels.append((float(params.bilateral_weight), lat, _normaliser(lat)))

        # -U (K, N) = log(max(p, 1e-8)).
        p = torch.from_numpy(np.ascontiguousarray(probs.reshape(k, n), dtype=np.float32)).to(dev)
        neg_unary = torch.clamp(p, min=1e-8)
        del p
        torch.log_(neg_unary)
        q = torch.softmax(neg_unary, dim=0)
        for _ in range(params.iterations):
            logits = neg_unary.clone()
            for w, lat, norm in kernels:
                msg = lat.compute(q * norm)
                msg *= norm
                logits.add_(msg, alpha=w)
                del msg
            q = torch.softmax(logits, dim=0)
            del logits
        # argmax over classes (first maximum wins, like numpy), without a strided reduction.
        best = q[0].clone()
        labels = torch.zeros(n, dtype=torch.uint8, device=dev)
        for c in range(1, k):
            better = q[c] > best
            labels[better] = c
            torch.maximum(best, q[c], out=best)
        return labels.cpu().numpy().reshape(shape)
