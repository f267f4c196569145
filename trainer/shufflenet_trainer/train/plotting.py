"""curves.png: training loss, top-1 and throughput per epoch, in one picture."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Draw the per-epoch records of `history` into a PNG at `path` (written atomically).

    Uses the Agg canvas directly instead of pyplot, so no global backend is switched and no
    display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(13, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_top1, ax_fps = fig.subplots(1, 3)

    ax_loss.plot(epochs, [r.get("loss") for r in history], "o-", label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), "s--", label="val")
    ax_loss.set_title("loss")
    ax_loss.legend()

    ax_top1.plot(epochs, [r.get("top1") for r in history], "o-", label="train (batches)")
    val = [(r["epoch"], r["val_top1"]) for r in history if r.get("val_top1") is not None]
    if val:
        ax_top1.plot(*zip(*val, strict=True), "s--", label="val")
    ax_top1.set_title("top-1 accuracy (%)")
    ax_top1.legend()

    ax_fps.plot(epochs, [r.get("images_per_sec") for r in history], "o-")
    ax_fps.set_title("throughput (images/s, FPS@all)")

    for ax in (ax_loss, ax_top1, ax_fps):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()

    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
