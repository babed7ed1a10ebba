"""An overview figure: image, reference and prediction for a few test cases."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from pipeline.io.atomic import atomic_path  # noqa: E402



def class_colors(n: int) -> list[tuple[float, float, float, float]]:
    """Transparent background, then distinct colours (tab10, then tab20) for ``n - 1`` foreground classes."""
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
    return [(0.0, 0.0, 0.0, 0.0)] + [(*palette[i % len(palette)], 1.0) for i in range(max(n - 1, 1))]


def _ras(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.load(path)
    if len(img.shape) == 2:  # a 2D image: one "slice"
        return np.asarray(img.dataobj)[:, :, None], (*map(float, img.header.get_zooms()[:2]), 1.0)
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj)
    return data, tuple(float(z) for z in img.header.get_zooms()[:3])


def overview_png(cases: list[dict[str, str]], labels: dict[str, str], target: Path) -> None:
    """Draw one row per case (axial slice with the most reference foreground): image, reference, prediction.

    Args:
        cases: dicts with ``id``, ``image``, ``label`` and ``pred`` paths.
        labels: class index (str) → name, for the legend.
        target: PNG path, written atomically.
    """
    rows = max(len(cases), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    colors = class_colors(max(int(k) for k in labels) + 1)
    cmap = ListedColormap(colors)
    for row, case in zip(axes, cases, strict=False):
        image, zooms = _ras(case["image"])
        truth, _ = _ras(case["label"])
        pred, _ = _ras(case["pred"])
        image = image[..., 0] if image.ndim == 4 else image
        z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
        aspect = zooms[1] / zooms[0]
        for ax, overlay, title in zip(row, (None, truth, pred), ("image", "reference", "prediction"), strict=True):
            ax.imshow(np.rot90(image[:, :, z]), cmap="gray", aspect=aspect)
            if overlay is not None:
                ax.imshow(np.rot90(overlay[:, :, z]), cmap=cmap, vmin=0, vmax=len(colors) - 1,
                          alpha=0.45, interpolation="nearest", aspect=aspect)
            ax.set_title(f"{case['id']} z={z}: {title}", fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[int(k)]) for k in labels if int(k) > 0]
    fig.legend(handles, [v for k, v in labels.items() if int(k) > 0], loc="lower center", ncol=max(len(handles), 1))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _slices(truth: np.ndarray, pred: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` axial slices spread over the foreground (reference or prediction); the middle without any."""
    depth = truth.shape[2]
    fg = np.flatnonzero(((truth > 0) | (pred > 0)).sum(axis=(0, 1)))
    if depth == 1:
        return [0]
    if fg.size == 0:
        return [depth // 2]
    picks = np.quantile(fg, np.linspace(0.2, 0.8, n) if n > 1 else [0.5]).round().astype(int)
    return sorted(set(int(z) for z in picks))


def case_overlay_png(case: dict[str, str], labels: dict[str, str], target: Path, slices: int = 3,
                     title: str = "") -> None:
    """One test case: image, reference and prediction on up to ``slices`` axial slices across the foreground.

    Args:
        case: ``id``, ``image``, ``label`` and ``pred`` paths.
        labels: class index (str) → name, for the legend.
        target: PNG path, written atomically.
        title: a line above the panels (e.g. the case's Dice).
    """
    image, zooms = _ras(case["image"])
    truth, _ = _ras(case["label"])
    pred, _ = _ras(case["pred"])
    image = image[..., 0] if image.ndim == 4 else image
    zs = _slices(truth, pred, slices)
    colors = class_colors(max(int(k) for k in labels) + 1)
    cmap = ListedColormap(colors)
    aspect = zooms[1] / zooms[0]
    fig, axes = plt.subplots(len(zs), 3, figsize=(8, 2.8 * len(zs) + 0.6), squeeze=False)
    for row, z in zip(axes, zs, strict=True):
        for ax, overlay, name in zip(row, (None, truth, pred), ("image", "reference", "prediction"), strict=True):
            ax.imshow(np.rot90(image[:, :, z]), cmap="gray", aspect=aspect)
            if overlay is not None:
                ax.imshow(np.rot90(overlay[:, :, z]), cmap=cmap, vmin=0, vmax=len(colors) - 1, alpha=0.45,
                          interpolation="nearest", aspect=aspect)
            ax.set_title(f"{name}" + (f", z={z}" if image.shape[2] > 1 else ""), fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[int(k)]) for k in labels if int(k) > 0]
    fig.legend(handles, [v for k, v in labels.items() if int(k) > 0], loc="lower center", ncol=max(len(handles), 1))
    fig.suptitle(f"{case['id']}" + (f": {title}" if title else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
