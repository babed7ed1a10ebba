"""The learning curve: training loss, validation Dice and learning rate per epoch, as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline.io.atomic import atomic_path  # noqa: E402


def learning_curve_png(history: Sequence[dict[str, float]], target: Path, best_epoch: int | None = None) -> None:
    """Draw loss (left axis, log scale when it spans a decade), validation Dice (right axis, 0-1) and the learning
    rate (lower panel) against the epoch; the best epoch is marked. Written atomically."""
    epochs = [int(r["epoch"]) for r in history]
    loss = [r["train_loss"] for r in history]
    val = [(int(r["epoch"]), v) for r in history if (v := r.get("val_dice")) is not None and v == v]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True, height_ratios=(3, 1))
    ax.plot(epochs, loss, color="tab:blue", label="train loss")
    if loss and min(loss) > 0 and max(loss) / min(loss) > 10:
        ax.set_yscale("log")
    ax.set_ylabel("train loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [d for _, d in val], "o-", color="tab:orange", ms=3, label="validation Dice")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation Dice", color="tab:orange")
    if best_epoch and best_epoch > 0:
        ax.axvline(best_epoch, color="grey", ls="--", lw=1)
        ax.text(best_epoch, 0.98, f"best epoch {best_epoch} ", transform=ax.get_xaxis_transform(), va="top",
                ha="right", fontsize=8, color="grey")
    ax_lr.plot(epochs, [r["lr"] for r in history], color="tab:green")
    ax_lr.set_ylabel("learning rate", fontsize=8)
    ax_lr.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("learning curve")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
