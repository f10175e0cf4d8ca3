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
from .headline import Headline
from .runs import NOT_PAPER, ResultsError, options_of, read_run, setting_label


def _marker_style(group) -> dict:
    """Filled blue for the paper protocol, hollow grey for a reduced one (the tables' dagger)."""
    paper = group.cell.get("paper_protocol") == "yes"
    color = "C0" if paper else "0.45"
    return {"color": color, "markerfacecolor": color if paper else "white", "markeredgecolor": color}


def plot_dice_vs_bits(h: Headline, path: Path) -> None:
    """The headline table as a dot plot, one panel per dataset: one line per row (in the table's order,
    so by bits), the best-epoch Dice (dot, +- sd over seeds) and the last-10-epoch mean (diamond) at
    the threshold the table uses; filled for the paper protocol, hollow for a reduced one."""
    n_rows = max(len(h.rows_of(d)) for d in h.datasets)
    fig = new_figure((9 * len(h.datasets), 1.4 + 0.36 * n_rows))
    axes = fig.subplots(1, len(h.datasets), squeeze=False)
    for ax, d in zip(axes[0], h.datasets):
        rows = h.rows_of(d)
        for y, row in enumerate(rows):
            g, nums = h.groups[(row, d)], h.numbers[(row, d)]
            style = _marker_style(g)
            if nums["best"]:
                sd = float(np.std(nums["best"], ddof=1)) if len(nums["best"]) > 1 else 0.0
                ax.errorbar([np.mean(nums["best"])], [y], xerr=[sd], fmt="o", capsize=3, **style)
            if nums["last"]:
                ax.plot([np.mean(nums["last"])], [y], "D", ms=5, alpha=0.8, **style)
        bits = [f"{row}  ({h.groups[(row, d)].cell.get('w_bits_paper', '?')}/"
                f"{h.groups[(row, d)].cell.get('a_bits_paper', '?')} bits)".replace(" — ", "\n— ") for row in rows]
        ax.set_yticks(range(len(rows)), bits, fontsize=6.5)
        ax.invert_yaxis()
        ax.set_xlabel(f"Dice x100 at threshold {h.thresholds[d].value:g}")
        ax.set_title(f"{d.upper()}: dot = best epoch (+- sd over seeds), diamond = last 10 epochs\n"
                     f"filled = paper protocol, hollow = reduced ({NOT_PAPER})", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)


def _zoom(ax, values: list) -> None:
    """Y limits on where the curves settle (from the 5th percentile of the values after the first
    tenth of training), so that early epochs do not flatten the differences."""
    values = [v for v in values if np.isfinite(v)]
    if values:
        lo, hi = np.percentile(values, 5), max(values)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1), hi + 0.1 * (hi - lo + 1))


def plot_curves(h: Headline, dataset: str, path: Path) -> None:
    """Per epoch, every finished run of ``dataset``: the Dice at the threshold the table uses (zoomed),
    the Dice at the run's own threshold, and the validation loss (log scale). One colour per headline
    row (its seeds share it); solid for the paper protocol, thin for a reduced one."""
    thr = h.thresholds[dataset]
    panels = [(thr.dice_key, f"Dice @ {thr.value:g} (x100, the table's)"), ("dice", "Dice @ run threshold (x100)"),
              ("val_loss", "validation loss")]
    rows = h.rows_of(dataset)
    fig = new_figure((15, 4.2 + 0.2 * ((len(rows) + 2) // 3)))
    axes = fig.subplots(1, 3)
    settled = []
    for k, row in enumerate(rows):
        g = h.groups[(row, dataset)]
        paper = g.cell.get("paper_protocol") == "yes"
        name = row + (f" ({len(g.entries)} seeds)" if len(g.entries) > 1 else "") + ("" if paper else f" {NOT_PAPER}")
        for i, entry in enumerate(g.entries):
            epochs = [r["epoch"] for r in entry.rows]
            for ax, (key, _) in zip(axes, panels):
                ys = [float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in entry.rows]
                ax.plot(epochs, ys, color=f"C{k % 10}", lw=1.4 if paper else 0.7, ls="-" if k < 10 else "--",
                        label=name if i == 0 and ax is axes[0] else None)    # one legend entry per row
            settled += [float(r[thr.dice_key]) for r in entry.rows[len(entry.rows) // 10:]
                        if isinstance(r.get(thr.dice_key), (int, float))]
    _zoom(axes[0], settled)
    axes[2].set_yscale("log")
    for ax, (_, name) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{dataset.upper()}: training curves", fontsize=10)
    fig.tight_layout(rect=(0, 0.02 + 0.033 * ((len(rows) + 2) // 3), 1, 1))
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


