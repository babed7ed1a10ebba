"""From a network's output to an instance label map (0 background, ids 1..N, uint16, or uint32 past 65535
objects), one decoder per ``instances.method``:

* ``components``: connected components of the predicted foreground (touching nuclei merge);
* ``watershed``: the foreground split by a watershed of its distance transform seeded at the transform's local
  maxima (the classic post-hoc split; it over-splits elongated or irregular nuclei);
* ``three_class``: seeds are the connected components of the predicted *interior* class, grown over the
  predicted foreground (interior + boundary) by a watershed on the interior probability; foreground pieces no
  seed reaches (a small nucleus predicted all boundary) are objects of their own;
* ``distance``: seeds are the connected regions where the predicted normalised distance exceeds
  ``seed_threshold`` (each nucleus' core), grown over the predicted foreground by a watershed on the distance.

Objects smaller than ``min_size_px`` pixels are dropped in every method. Decoders take class probabilities
``(K, *spatial)`` (for ``distance`` the last channel is the distance, the others the classes) on the image's grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["DECODERS", "MASK_DECODERS", "decode", "relabel", "semantic_foreground"]


def _structure(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, dtype=bool)


def relabel(instances: np.ndarray, min_size_px: int = 0) -> np.ndarray:
    """Drop objects under ``min_size_px`` voxels and number the rest 1..N in order of first appearance
    (raster order), as uint16 (uint32 past 65535 objects)."""
    inst = np.asarray(instances)
    flat = inst.ravel()
    ids, first, counts = np.unique(flat, return_index=True, return_counts=True)
    keep = (ids > 0) & (counts >= max(1, min_size_px))
    kept_ids = ids[keep][np.argsort(first[keep], kind="stable")]
    dtype = np.uint16 if len(kept_ids) <= np.iinfo(np.uint16).max else np.uint32
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=dtype)
    lut[kept_ids] = np.arange(1, len(kept_ids) + 1, dtype=dtype)
    return lut[inst]


def semantic_foreground(probs: np.ndarray, classes: int) -> np.ndarray:
    """Foreground: where a class other than 0 has the largest probability among the first ``classes`` channels."""
    p = np.asarray(probs[:classes], dtype=np.float32)
    return np.argmax(p, axis=0) > 0


def _watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    grown = watershed(surface, markers, mask=mask)
    # Foreground no seed reached (its own connected piece): an object of its own.
    orphan = mask & (grown == 0)
    if orphan.any():
        pieces, n = ndimage.label(orphan, structure=_structure(mask.ndim))
        grown = np.where(orphan, pieces + (int(grown.max()) if n else 0), grown)
    return grown


def components(fg: np.ndarray, min_size_px: int = 10, **_: Any) -> np.ndarray:
    """Connected components (full connectivity) of a foreground mask."""
    inst, _n = ndimage.label(fg, structure=_structure(fg.ndim))
    return relabel(inst, min_size_px)


def watershed_split(fg: np.ndarray, min_size_px: int = 10, min_distance_px: int = 3, **_: Any) -> np.ndarray:
    """A foreground mask split by the watershed of its distance transform, seeded at the transform's maxima at
    least ``min_distance_px`` apart."""
    from skimage.feature import peak_local_max

    if not fg.any():
        return relabel(np.zeros(fg.shape, np.int32))
    dist = ndimage.distance_transform_edt(fg)
    regions, _n = ndimage.label(fg, structure=_structure(fg.ndim))
    peaks = peak_local_max(dist, min_distance=min_distance_px, labels=regions, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return relabel(_watershed(-dist, markers, fg), min_size_px)


def three_class(probs: np.ndarray, classes: int = 3, min_size_px: int = 10, **_: Any) -> np.ndarray:
    p = np.asarray(probs[:3], dtype=np.float32)
    winner = np.argmax(p, axis=0)
    fg = winner > 0
    markers, _n = ndimage.label(winner == 1, structure=_structure(fg.ndim))
    return relabel(_watershed(-p[1], markers, fg), min_size_px)


def distance(probs: np.ndarray, classes: int, min_size_px: int = 10, seed_threshold: float = 0.5,
             **_: Any) -> np.ndarray:
    fg = semantic_foreground(probs, classes)
    dist = np.asarray(probs[classes], dtype=np.float32)
    cores = fg & (dist > seed_threshold)
    markers, _n = ndimage.label(cores, structure=_structure(fg.ndim))
    return relabel(_watershed(-dist, markers, fg), min_size_px)


MASK_DECODERS: dict[str, Callable[..., np.ndarray]] = {"components": components, "watershed": watershed_split}
DECODERS: dict[str, Callable[..., np.ndarray]] = {"three_class": three_class, "distance": distance}


def decode(method: str, probs: np.ndarray | None, classes: int, labels: np.ndarray | None = None,
           **settings: Any) -> np.ndarray:
    """The instance map by ``method``: from the output probabilities ``probs`` (``classes`` leading class
    channels: the semantic classes, 3 for ``three_class``), or for the mask methods (``components``,
    ``watershed``) from the foreground of ``labels`` when given."""
    if method in MASK_DECODERS:
        fg = np.asarray(labels) > 0 if labels is not None else semantic_foreground(probs, classes)
        return MASK_DECODERS[method](fg, **settings)
    if probs is None:
        raise ValueError(f"instances.method {method} decodes the output probabilities")
    return DECODERS[method](probs, classes, **settings)
