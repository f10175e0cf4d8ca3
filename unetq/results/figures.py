"""The results figures: Dice against bits, training curves, prediction overlays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import checkpoint
from ..config import Config, ConfigError, validate
from ..data import DataError
from ..engine import overlay_indices
from ..figures import new_figure, overlay_rgb, panel_grid, save_figure
from ..models import build_model
from ..paths import BASES, base_module
from ..runlog import CONFIG_NAME
from .runs import NOT_PAPER, ResultsError, options_of, read_run, setting_label


def plot_dice_vs_bits(labels, datasets, cells, path: Path) -> None:
    """Best Dice against weight bits, one panel per dataset: filled dots at the paper's count, a
    grey bar to the exact count, crosses for Dice at 0.5."""
    fig = new_figure((5.5 * len(datasets), 4.2))
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for label in labels:
            cell = cells.get((label, d))
            if not cell or "w_bits_paper" not in cell:
                continue
            x = cell["w_bits_paper"]
            exact = float(str(cell["w_bits_exact"]).split("-")[-1]) if cell["w_bits_exact"] != "" else x
            if cell["dice"] != "":
                ax.plot([x, exact], [cell["dice"]] * 2, color="0.7", lw=2, zorder=1)
                ax.scatter([x], [cell["dice"]], zorder=2)
                ax.annotate(label + (f" {NOT_PAPER}" if cell["paper_protocol"] != "yes" else ""), (x, cell["dice"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
            if cell["dice_05"] != "":
                ax.scatter([x], [cell["dice_05"]], marker="x", color="k", zorder=2)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
        ax.set_xlabel("weight bits (dot: paper count; grey bar: to the exact count)")
        ax.set_ylabel("best validation Dice (x100)")
        ax.set_title(f"{d.upper()}: dots Dice@threshold, crosses Dice@0.5", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(labels, dataset: str, cells, entries_by_run: dict, path: Path) -> None:
    """Validation Dice (threshold and 0.5) and validation loss per epoch, one line per run."""
    fig = new_figure((15, 4))
    axes = fig.subplots(1, 3)
    for label in labels:
        cell = cells.get((label, dataset))
        entry = entries_by_run.get(cell["run"]) if cell else None
        if not entry or not entry.rows:
            continue
        epochs = [r["epoch"] for r in entry.rows]
        for ax, key in zip(axes, ("dice", "dice_05", "val_loss")):
            ax.plot(epochs, [r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in entry.rows],
                    label=label, lw=1.2)
    for ax, name in zip(axes, ("Dice @ run threshold (x100)", "Dice @ 0.5 (x100)", "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{dataset.upper()}: training curves", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


@dataclass
class OverlayData:
    """What overlays.png shows: validation slices and each run's prediction on them."""

    dataset: str
    source: str
    images: list
    gts: list
    predictions: list                 # (title, binary masks) per run


def overlay_data(run_folders: Sequence[Path], n_slices: int = 3, threshold: float | None = None) -> OverlayData:
    """Load every run's best.pt (else last.pt; or the checkpoint file given instead of the folder),
    predict ``n_slices`` validation slices of the first run's data (all runs must be of that
    dataset). Raises ResultsError with one line."""
    chosen = {}                                   # run folder -> checkpoint file named explicitly
    for f in map(Path, run_folders):
        if f.is_file():
            chosen[f.parent] = f
    entries = [read_run(Path(f).parent if Path(f).is_file() else Path(f)) for f in run_folders]
    datasets = {e.dataset for e in entries}
    if len(datasets) != 1:
        raise ResultsError(f"--overlays: the runs are of different datasets ({', '.join(sorted(datasets))}); give runs of one")
    dataset = datasets.pop()
    if dataset not in BASES:
        raise ResultsError(f"--overlays: no BASE folder for dataset {dataset!r} (allowed: {', '.join(BASES)})")
    module = base_module(dataset)
    data, items, predictions = None, [], []
    for e in entries:
        ckpt_path = chosen.get(e.folder) or next((p for p in (e.folder / "best.pt", e.folder / "last.pt")
                                                  if p.is_file()), None)
        if ckpt_path is None or not e.config:
            raise ResultsError(f"--overlays: {e.folder}: needs config.yaml and best.pt (or last.pt)")
        try:
            cfg = validate(e.config, source=e.folder / CONFIG_NAME, extra_fields=module.FIELDS, dataset=dataset)
            if data is None:
                data = module.build_datasets(_with_data_path(cfg, e.folder))
                items = [data.val[i] for i in overlay_indices(len(data.val))[:max(1, n_slices)]]
            model = build_model(cfg)
            checkpoint.load_into(model, checkpoint.load(ckpt_path)["model"], ckpt_path)
        except (ConfigError, DataError, checkpoint.CheckpointError) as err:
            raise ResultsError(f"--overlays: {e.folder}: {err}") from None
        with torch.no_grad():
            logits = model.eval()(torch.stack([it["image"] for it in items]))
        thr = threshold if threshold is not None else cfg.threshold
        title = f"{setting_label(options_of(e), dataset, e.name)}\n{e.name} ({ckpt_path.stem}), thr {thr:g}"
        predictions.append((title, (torch.sigmoid(logits)[:, 0] >= thr).numpy()))
    return OverlayData(dataset, data.source, [it["image"][0].numpy() for it in items],
                       [it["mask"][0].numpy() > 0.5 for it in items], predictions)


def plot_overlays(od: OverlayData, path: Path) -> None:
    """Rows = slices; columns = input, ground truth, then one overlay per run in the paper's colours
    (:func:`unetq.figures.overlay_rgb`: orange overlap, red ground truth only, blue prediction only)."""
    rows = [[(image, "input", "gray"), (gt, "ground truth", "gray")]
            + [(overlay_rgb(image, gt, preds[r]), title, None) for title, preds in od.predictions]
            for r, (image, gt) in enumerate(zip(od.images, od.gts))]
    panel_grid(rows, path, suptitle=f"{od.dataset.upper()} validation ({od.source}): orange overlap, "
                                    f"red ground truth only, blue prediction only")


def _with_data_path(cfg, run_folder: Path):
    """A run's resolved config keeps data_path as written, relative to the experiment folder; try the
    run folder, then the experiment folder two levels up (<experiment>/runs/<name>)."""
    value = cfg.get("data_path")
    if value is None or Path(value).is_absolute():
        return cfg
    for folder in (run_folder, run_folder.parent.parent):
        if (folder / value).exists():
            return Config({**cfg.to_dict(), "data_path": str((folder / value).resolve())}, cfg.source, cfg.section)
    return cfg


