"""Figures a run writes: training curves, prediction overlays in the paper's colours, and the
per-layer weight distributions of the visualize mode. Drawn with matplotlib's object-oriented API
(a ``Figure`` on its own Agg canvas, never pyplot), so importing this module leaves the backend of
the user's session (a notebook, say) as it was."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .layers import QuantConv2d
from .runlog import replacing

# The paper's overlay colours: overlap orange, ground truth only red, prediction only blue.
OVERLAP, GT_ONLY, PRED_ONLY = (1.0, 0.6, 0.0), (0.9, 0.1, 0.1), (0.1, 0.3, 1.0)


def overlay_rgb(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """An RGB picture of ``image`` (any range) with ground truth and prediction painted on it:
    orange where both agree on foreground, red for ground truth only, blue for prediction only."""
    lo, hi = float(np.min(image)), float(np.max(image))
    gray = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image, dtype=float)
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(float)
    gt, pred = gt.astype(bool), pred.astype(bool)
    for region, colour in ((gt & pred, OVERLAP), (gt & ~pred, GT_ONLY), (~gt & pred, PRED_ONLY)):
        rgb[region] = (1 - alpha) * rgb[region] + alpha * np.asarray(colour)
    return rgb


def save_overlays(images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                  path: Path, titles: Sequence[str] = (), suptitle: str = "") -> None:
    """One row per slice: input, ground truth, prediction, overlay (PNG)."""
    rows = [[(image, "input", "gray"), (gt, "ground truth", "gray"), (pred, "prediction", "gray"),
             (overlay_rgb(image, gt, pred), "overlay", None)] for image, gt, pred in zip(images, gts, preds)]
    legend = "orange: overlap   red: ground truth only   blue: prediction only"
    panel_grid(rows, path, titles, f"{suptitle}\n{legend}" if suptitle else legend)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure drawn by the Agg renderer (file output only), outside pyplot: nothing to close, no
    backend switched."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def panel_grid(rows: Sequence[Sequence[tuple]], path: Path, row_labels: Sequence[str] = (), suptitle: str = "",
               cell: float = 2.6) -> None:
    """A grid of images without axes: ``rows`` of (array, column title, colormap or None for RGB);
    the titles of the first row head the columns (PNG)."""
    n, cols = len(rows), max(len(r) for r in rows)
    fig = new_figure((cell * cols, cell * n))
    axes = fig.subplots(n, cols, squeeze=False)
    for r, panels in enumerate(rows):
        for c, (data, name, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(data, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        if r < len(row_labels):
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(rows: Sequence[dict], path: Path, title: str = "") -> None:
    """Training curves from the per-epoch metric rows: losses, Dice, learning rate."""
    epochs = [r["epoch"] for r in rows]
    fig = new_figure((13, 3.6))
    ax_loss, ax_dice, ax_lr = fig.subplots(1, 3)
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        ax_loss.plot(epochs, [r.get(key, np.nan) for r in rows], label=label)
    for key, label in (("dice", "Dice @ threshold"), ("dice_05", "Dice @ 0.5"), ("dice_nonempty", "Dice, non-empty GT")):
        ax_dice.plot(epochs, [r.get(key, np.nan) for r in rows], label=label)
    ax_lr.semilogy(epochs, [r["lr"] for r in rows])
    for ax, name in ((ax_loss, "loss"), (ax_dice, "Dice (x100)"), (ax_lr, "learning rate")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_dice.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    save_figure(fig, path)


def plot_weight_distributions(model: torch.nn.Module, paths: Sequence[Path], title: str = "") -> None:
    """Histogram of every conv layer's weights, float ("shadow") and as the layer uses them
    (quantized), one panel per layer; saved to each of ``paths`` (e.g. a PNG and a PDF)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    cols = 4
    rows = (len(convs) + cols - 1) // cols
    fig = new_figure((4 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, conv) in zip(axes.flat, convs):
        with torch.no_grad():
            w = conv.weight.detach().float().cpu().numpy().ravel()
            used = conv.quantized_weight() if isinstance(conv, QuantConv2d) else conv.weight
            q = used.detach().float().cpu().numpy().ravel()
        bins = np.linspace(min(w.min(), q.min()), max(w.max(), q.max()), 81)
        if bins[0] == bins[-1]:
            bins = 81
        ax.hist(w, bins=bins, alpha=0.6, label="float", color="tab:gray")
        ax.hist(q, bins=bins, alpha=0.6, label="quantized", color="tab:orange")
        fmt = conv.fmt.describe() if isinstance(conv, QuantConv2d) else "float32"
        ax.set_title(f"{name}  [{fmt}]  {len(np.unique(q))} values", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(convs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    for path in paths:
        save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` (creating the folder). The file is replaced atomically: a full disk leaves the
    previous figure (or none), never an empty one, and the error names the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # a one-epoch curve has identical y limits: harmless
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
