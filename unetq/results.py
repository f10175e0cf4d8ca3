"""The paper's results table, rebuilt from run folders, and its figures.

    python -m unetq.results em/ gm/ nih/ --out results/ [--latex] [--readme README.md]
    python -m unetq.results em/ --out results/ --overlays em/full_precision/runs/full_precision em/a6_0_w0_4/runs/a6_0_w0_4

Each FOLDER is searched (recursively) for run folders (holding summary.json or metrics.csv) and
experiment folders (holding a config.yaml and no run outputs). An experiment whose run is nowhere
among the folders given is a row with empty cells ("no run"), not an error; so is a run whose files
are unreadable. Backups (``*_backup_*``) and inference / visualize sub-folders are skipped.

A row is a setting, named from the run's resolved config: ``full precision``, ``a6.0/w0.4`` (FIXED
activations Q6.0, weights Q0.4), ``INT a4/w4``, ``BNN``, ``Ternary``; `` [mode]`` is added when the
fixed-point mode is not the dataset's usual one (EM: pow2, GM and NIH: paper, docs/method.md section 1),
`` + dropout`` and `` (activation)`` when those differ from the usual. Two runs with the same setting
in the same dataset get two rows: the preferred one (paper protocol, complete, most epochs, newest)
keeps the plain name, the other is suffixed with its experiment name.

Each dataset (config key ``dataset``) is a column group: best validation Dice at the run's threshold
(and its epoch), its change against that dataset's full-precision row, best Dice at 0.5 (and epoch),
HD95 at the best epoch, weight and activation bits (paper / honest / exact, see unetq.memory) and
the model's memory, and the protocol: data source, epochs done / planned, base width, status. A run
that is not the paper protocol (real data, base width 64, 200 epochs) is marked with a dagger
wherever its Dice appears. Outputs in --out: results.md, results.csv (+ results.tex), dice_vs_bits.png,
curves_<dataset>.png and, with --overlays, overlays.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from . import memory
from .config import ConfigError
from .models import formats, model_options
from .runlog import CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, read_metrics, write_text_atomic

DATASETS = ("em", "gm", "nih")
USUAL_MODE = {"em": "pow2", "gm": "paper", "nih": "paper"}
HD_UNIT = {"em": "px"}
ORDER = ("full precision", "a8.8/w8.8", "a8.0/w0.8", "a6.0/w0.4", "a6.0/w0.2", "a4.0/w0.2", "a2.0/w0.2",
         "BNN", "Ternary")
PAPER_PROTOCOL = {"data_source": "real", "base_width": 64, "num_epochs": 200}
NOT_PAPER, OTHER_PROTOCOL = "†", "‡"
SKIP_PREFIXES = ("inference_", "visualize_", ".", "__")
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


class ResultsError(ValueError):
    """Bad command-line input; one line."""


# --------------------------------------------------------------------------------------------
# Finding and reading runs
# --------------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One run folder, or an experiment folder without a run (``missing``)."""

    folder: Path
    config: dict                      # the config section (resolved for a run, raw for an experiment)
    summary: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    missing: bool = False
    notes: list = field(default_factory=list)

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset") or self.summary.get("dataset") or "unknown").lower()

    @property
    def name(self) -> str:
        return str(self.config.get("experiment_name") or self.summary.get("experiment_name") or self.folder.name)


def _is_skipped(name: str) -> bool:
    return "_backup_" in name or name.startswith(SKIP_PREFIXES) or name in ("overlays", "runs_tmp")


def _read_section(path: Path) -> dict:
    """The UNET section (or the only section) of a config.yaml; {} when unreadable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict):
        return {}
    section = data.get("UNET", next(iter(data.values())) if len(data) == 1 else None)
    return dict(section) if isinstance(section, dict) else {}


def read_run(folder: Path) -> Entry:
    """A run folder's config, summary and training rows; problems become notes, never errors."""
    entry = Entry(folder, _read_section(folder / CONFIG_NAME))
    if not entry.config:
        entry.notes.append("no readable config.yaml")
    try:
        entry.summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        entry.notes.append("no summary.json")
    except (OSError, ValueError):
        entry.notes.append("summary.json unreadable")
    if (folder / METRICS_NAME).exists():
        try:
            entry.rows = [r for r in read_metrics(folder / METRICS_NAME) if isinstance(r.get("epoch"), int)]
        except (OSError, ValueError, TypeError, csv.Error):
            entry.notes.append("metrics.csv unreadable (being written?)")
    return entry


def discover(folders: Sequence[Path]) -> list[Entry]:
    """Every run under ``folders``, plus every experiment folder whose run is not among them."""
    runs, experiments = [], []
    for root in folders:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not _is_skipped(d))
            if SUMMARY_NAME in filenames or METRICS_NAME in filenames:
                runs.append(read_run(here))
                dirnames[:] = []
            elif CONFIG_NAME in filenames:
                experiments.append(Entry(here, _read_section(here / CONFIG_NAME), missing=True))
    found = {(r.dataset, r.name) for r in runs}
    entries = list(runs)
    for exp in experiments:
        if not exp.config:
            continue                                  # not an experiment (or unreadable): nothing to show
        below = any(exp.folder.resolve() in r.folder.resolve().parents for r in runs)
        if not below and (exp.dataset, exp.name) not in found:
            exp.notes.append("no run")
            entries.append(exp)
    return entries


# --------------------------------------------------------------------------------------------
# One cell: what a run contributes to its dataset's column group
# --------------------------------------------------------------------------------------------

def options_of(entry: Entry) -> dict | None:
    """Validated model keys of the entry's config (None when the config is missing or invalid)."""
    if not entry.config:
        return None
    try:
        return model_options(entry.config)
    except ConfigError as err:
        entry.notes.append(f"config invalid ({err})")
        return None


def setting_label(opts: dict | None, dataset: str, fallback: str) -> str:
    """The row name of a setting (see the module docstring)."""
    if opts is None:
        return fallback
    kind = opts["quantization"]
    if kind == "normal":
        label = "full precision"
    elif kind == "fixed":
        label = (f"a{opts['activation_i_width']}.{opts['activation_f_width']}/"
                 f"w{opts['weight_i_width']}.{opts['weight_f_width']}")
        if opts["fixed_mode"] != USUAL_MODE.get(dataset):
            label += f" [{opts['fixed_mode']}]"
    elif kind == "int":
        label = f"INT a{opts['activation_i_width']}/w{opts['weight_i_width']}"
    else:
        label = {"bnn": "BNN", "ternary": "Ternary"}[kind]
    usual_activation = "ternarytanh" if kind == "ternary" else "relu"
    if opts["activation"] != usual_activation:
        label += f" ({opts['activation']})"
    if opts["dropout"]:
        label += " + dropout"
    return label


def _order_key(label: str) -> tuple:
    base = label.split(" [")[0].split(" (")[0].split(" + ")[0].split(" — ")[0]
    return ("+ dropout" in label, ORDER.index(base) if base in ORDER else len(ORDER), label)


def _best(rows: list, key: str) -> tuple[float | None, int | None, dict | None]:
    """(value, epoch, row) of the first row with the largest finite ``key``."""
    best = None
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and (best is None or v > best[0]):
            best = (float(v), r["epoch"], r)
    return best if best else (None, None, None)


_MEMORY_CACHE: dict = {}


def memory_of(entry: Entry, opts: dict) -> dict:
    """Weight/activation bits and model memory (MiB) of the run's model, per count. Formats whose
    exact width depends on the weights (pow2, BNN's zeros) use the run's best.pt when present."""
    from .models import build_model

    wf, af = formats(opts)
    data_dependent = wf.kind == "bnn" or (wf.kind == "fixed" and wf.mode == "pow2")
    ckpt = next((p for p in (entry.folder / "best.pt", entry.folder / "last.pt") if p.is_file()), None)
    key = (tuple(sorted(opts.items())), str(ckpt) if data_dependent else None)
    if key not in _MEMORY_CACHE:
        torch.manual_seed(0)
        model = build_model(opts)
        weights_from = "init"
        if data_dependent and ckpt is not None and not entry.missing:
            try:
                from . import checkpoint

                checkpoint.load_into(model, checkpoint.load(ckpt)["model"], ckpt)
                weights_from = ckpt.name
            except (checkpoint.CheckpointError, RuntimeError) as err:
                entry.notes.append(f"exact bits from initial weights ({str(err)[:80]})")
        rows, totals = memory.account(model)
        q = [r for r in rows if r.role == "quantized weight"]
        exact = sorted({r.exact_bits for r in q}) or [32]
        a = memory.activation_bits(af)
        known = not data_dependent or weights_from != "init"     # no guessing from untrained weights
        _MEMORY_CACHE[key] = {
            "weights": wf.describe() if q else "float32",
            "w_bits_paper": q[0].paper_bits if q else 32, "w_bits_honest": q[0].honest_bits if q else 32,
            "w_bits_exact": "" if not known else str(exact[0]) if len(exact) == 1 else f"{exact[0]}-{exact[-1]}",
            "a_bits_paper": a[0], "a_bits_honest": a[1], "a_bits_exact": "" if a[2] is None else a[2],
            **{f"mem_{c}_mib": round(memory.mib(totals["model"][c]), 4) for c in ("float32", *memory.COUNTS)},
            "exact_bits_from": weights_from if data_dependent else "format",
        }
        if not known:
            _MEMORY_CACHE[key]["mem_exact_mib"] = ""
    return dict(_MEMORY_CACHE[key])


def cell_of(entry: Entry, opts: dict | None) -> dict:
    """Every column of a dataset group for one entry with model keys ``opts`` (plain values; ''
    where unknown)."""
    s, cfg = entry.summary, entry.config
    dice, dice_epoch, best_row = _best(entry.rows, "dice")
    if dice is None and isinstance(s.get("best_dice"), (int, float)) and s.get("best_epoch"):
        dice, dice_epoch = float(s["best_dice"]), s["best_epoch"]
    d05, d05_epoch, d05_row = _best(entry.rows, "dice_05")
    hd95 = best_row.get("hd95") if best_row else None
    source = s.get("data_source") or cfg.get("data_source") or (entry.rows[-1].get("data_source") if entry.rows else "")
    num_epochs = s.get("num_epochs") or cfg.get("num_epochs") or ""
    epochs_done = s.get("epochs_done", len(entry.rows)) if not entry.missing else 0
    base_width = opts["base_width"] if opts else s.get("base_width", "")
    status = "no run" if entry.missing else s.get("status", "unknown")
    protocol = {"data_source": source, "base_width": base_width, "num_epochs": num_epochs}
    cell = {
        "run": str(entry.folder), "experiment": entry.name, "status": status,
        "dice": _round(dice), "dice_epoch": dice_epoch or "", "threshold": cfg.get("threshold", s.get("threshold", "")),
        "delta": "", "dice05": _round(d05), "dice05_epoch": d05_epoch or "", "delta05": "",
        "hd95": _round(hd95), "hd95_05": _round(d05_row.get("hd95_05") if d05_row else None),
        "hd95_unit": HD_UNIT.get(entry.dataset, ""),
        "data_source": source or "", "epochs_done": epochs_done, "num_epochs": num_epochs, "base_width": base_width,
        # an interrupted or still running run at the paper's settings is not a paper number either
        "paper_protocol": "yes" if protocol == PAPER_PROTOCOL and status == "complete"
                          and isinstance(epochs_done, int) and epochs_done >= num_epochs else "no",
    }
    if opts is not None:
        cell.update(memory_of(entry, opts))
    cell["notes"] = "; ".join(entry.notes)
    return cell


def _round(v: Any, digits: int = 2) -> Any:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), digits)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

def canonical_name(label: str) -> str:
    """The experiment folder name a setting usually has: ``a6.0/w0.4 [paper]`` -> ``a6_0_w0_4_paper``,
    ``full precision + dropout`` -> ``full_precision_dropout``."""
    for old, new in ((" + ", "_"), (" [", "_"), (" (", "_"), ("]", ""), (")", ""), (".", "_"), ("/", "_"), (" ", "_")):
        label = label.replace(old, new)
    return label.lower()


def _preference(label: str, cell: dict, entry: Entry) -> tuple:
    """Which of several entries with the same setting keeps the plain row name: the paper protocol,
    then the folder named after the setting, then one with a run, complete, most epochs, newest."""
    status_rank = {"complete": 3, "running": 2, "interrupted": 1}.get(cell["status"], 0)
    mtime = max((p.stat().st_mtime for p in entry.folder.iterdir()), default=0) if entry.folder.is_dir() else 0
    return (cell["paper_protocol"] == "yes", entry.name.lower() == canonical_name(label), not entry.missing,
            status_rank, cell["epochs_done"] if isinstance(cell["epochs_done"], int) else 0, mtime)


def build_table(entries: Sequence[Entry]) -> tuple[list[str], list[str], dict]:
    """(row labels in the paper's order, datasets present, {(label, dataset): cell})."""
    cells: dict = {}
    by_key: dict = {}
    for entry in entries:
        opts = options_of(entry)
        cell = cell_of(entry, opts)
        label = setting_label(opts, entry.dataset, entry.name)
        by_key.setdefault((label, entry.dataset), []).append((cell, entry))
    for (label, dataset), items in by_key.items():
        items.sort(key=lambda item: _preference(label, *item), reverse=True)
        for k, (cell, entry) in enumerate(items):
            cells[(label if k == 0 else f"{label} — {entry.name}", dataset)] = cell
    datasets = [d for d in DATASETS if any(k[1] == d for k in cells)]
    datasets += sorted({k[1] for k in cells} - set(datasets))
    for dataset in datasets:
        ref = cells.get(("full precision", dataset))
        for (label, d), cell in cells.items():
            if d != dataset or not ref:
                continue
            for key, delta in (("dice", "delta"), ("dice05", "delta05")):
                if isinstance(cell[key], float) and isinstance(ref[key], float):
                    cell[delta] = round(cell[key] - ref[key], 2)
            same = all(cell[k] == ref[k] for k in ("data_source", "base_width", "num_epochs"))
            cell["delta_same_protocol"] = "yes" if same else "no"
    labels = sorted({k[0] for k in cells}, key=_order_key)
    return labels, datasets, cells


CSV_FIELDS = ("run", "experiment", "status", "dice", "dice_epoch", "threshold", "delta", "delta_same_protocol",
              "dice05", "dice05_epoch", "delta05", "hd95", "hd95_05", "hd95_unit", "weights", "w_bits_paper", "w_bits_honest",
              "w_bits_exact", "a_bits_paper", "a_bits_honest", "a_bits_exact", "mem_float32_mib", "mem_paper_mib",
              "mem_honest_mib", "mem_exact_mib", "exact_bits_from", "data_source", "epochs_done", "num_epochs",
              "base_width", "paper_protocol", "notes")


def write_csv(path: Path, labels, datasets, cells) -> None:
    """One row per setting, one column group (prefixed ``<dataset>_``) per dataset."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["setting"] + [f"{d}_{f}" for d in datasets for f in CSV_FIELDS])
        for label in labels:
            row = [label]
            for d in datasets:
                cell = cells.get((label, d), {})
                row += [cell.get(f, "") for f in CSV_FIELDS]
            writer.writerow(row)


def _dice_text(cell: dict, key: str = "dice", epoch_key: str = "dice_epoch") -> str:
    if not cell or cell.get(key) in ("", None):
        return "—"
    text = f"{cell[key]:.2f} ({cell[epoch_key]})"
    if cell["paper_protocol"] != "yes":
        text += f" {NOT_PAPER}"
    return text


def _delta_text(cell: dict, key: str = "delta") -> str:
    if not cell or cell.get(key) in ("", None):
        return "—"
    mark = f" {OTHER_PROTOCOL}" if cell.get("delta_same_protocol") == "no" else ""
    return f"{cell[key]:+.2f}{mark}"


def _protocol_text(cell: dict) -> str:
    if not cell:
        return ""
    if cell["status"] == "no run":
        return f"no run ({cell['experiment']})"
    parts = [cell["data_source"] or "source?", f"{cell['epochs_done']}/{cell['num_epochs']} ep", f"w{cell['base_width']}"]
    if cell["status"] != "complete":
        parts.append(cell["status"])
    return " · ".join(str(p) for p in parts)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def markdown(labels, datasets, cells, command: str = "") -> str:
    """The paper-style table (Dice per dataset) followed by one detail table per dataset."""
    header = ["setting", "W bits (paper)", "A bits (paper)"]
    for d in datasets:
        header += [f"{d.upper()} Dice@thr (ep)", f"{d.upper()} ΔDice", f"{d.upper()} Dice@0.5 (ep)",
                   f"{d.upper()} ΔDice@0.5", f"{d.upper()} data · protocol"]
    rows = []
    for label in labels:
        any_cell = next((cells[(label, d)] for d in datasets if (label, d) in cells), {})
        row = [label, any_cell.get("w_bits_paper", ""), any_cell.get("a_bits_paper", "")]
        for d in datasets:
            cell = cells.get((label, d), {})
            row += [_dice_text(cell), _delta_text(cell), _dice_text(cell, "dice05", "dice05_epoch"),
                    _delta_text(cell, "delta05"), _protocol_text(cell)]
        rows.append(row)
    out = [f"Generated by `{command}`." if command else "", ""] + _md_table(header, rows) + ["", _footnotes(), ""]
    for d in datasets:
        out += [f"#### {d.upper()}: details", ""]
        unit = f" ({HD_UNIT[d]})" if d in HD_UNIT else ""
        head = ["setting", "Dice@thr (ep)", "thr", "ΔDice", f"HD95@thr{unit}", "Dice@0.5 (ep)", "ΔDice@0.5",
                f"HD95@0.5{unit}",
                "weights", "W bits paper / honest / exact", "A bits paper / honest / exact",
                "model MiB paper / honest / exact", "data · protocol", "run"]
        detail = []
        for label in labels:
            cell = cells.get((label, d))
            if not cell:
                continue
            detail.append([label, _dice_text(cell), cell["threshold"], _delta_text(cell),
                           cell["hd95"] if cell["hd95"] != "" else "—",
                           _dice_text(cell, "dice05", "dice05_epoch"), _delta_text(cell, "delta05"),
                           cell["hd95_05"] if cell["hd95_05"] != "" else "—",
                           cell.get("weights", ""),
                           _triple(cell, "w_bits"), _triple(cell, "a_bits"), _triple(cell, "mem", "_mib", ".3f"),
                           _protocol_text(cell), f"`{cell['run']}`" + (f" ({cell['notes']})" if cell["notes"] else "")])
        out += _md_table(head, detail) + [""]
    return "\n".join(out).strip() + "\n"


def _triple(cell: dict, prefix: str, suffix: str = "", fmt: str = "") -> str:
    values = [cell.get(f"{prefix}_{c}{suffix}", "") for c in memory.COUNTS]
    if all(v == "" for v in values):
        return ""
    return " / ".join(format(v, fmt) if fmt and isinstance(v, float) else str(v if v != "" else "?") for v in values)


def _footnotes() -> str:
    return (f"Dice x100, best validation epoch in brackets; Dice@thr uses each run's threshold (the paper's 0.999; "
            f"see the details), Dice@0.5 is the best epoch at 0.5. ΔDice, ΔDice@0.5: against the same dataset's "
            f"full-precision row, in Dice points ({OTHER_PROTOCOL}: that row ran another protocol). {NOT_PAPER}: not the paper protocol (real data, "
            f"base width 64, 200 epochs), not a paper number. Bits: paper = i + f; honest = 1 + i + f (sign-magnitude), "
            f"n + 1 for INTn, + a float alpha per filter for Ternary; exact = what `unetq.export` packs (paper mode's "
            f"carry needs 2 + i + f; pow2 depends on the weights). HD95@thr / HD95@0.5: at the epoch of the best "
            f"Dice at that threshold (empty where the run predates HD95@0.5), in pixels for EM, in mm where the "
            f"dataset gives a voxel spacing. Per dataset, the detail tables below and the CSV carry HD95, every bit "
            f"count and the model memory; a run still running or interrupted is never a paper number.")


def latex(labels, datasets, cells) -> str:
    """The paper-style table as a LaTeX tabular (Dice and ΔDice per dataset)."""
    cols = "l" + "rr" + "rr" * len(datasets)
    lines = [f"\\begin{{tabular}}{{{cols}}}", "\\hline",
             "Setting & W bits & A bits & " + " & ".join(f"{d.upper()} Dice & $\\Delta$" for d in datasets) + " \\\\",
             "\\hline"]
    for label in labels:
        any_cell = next((cells[(label, d)] for d in datasets if (label, d) in cells), {})
        parts = [label.replace("_", "\\_").replace("—", "--"), str(any_cell.get("w_bits_paper", "")),
                 str(any_cell.get("a_bits_paper", ""))]
        for d in datasets:
            cell = cells.get((label, d), {})
            dice = _dice_text(cell).replace(NOT_PAPER, "$^\\dagger$").replace("—", "--")
            parts += [dice, _delta_text(cell).replace(OTHER_PROTOCOL, "$^\\ddagger$").replace("—", "--")]
        lines.append(" & ".join(parts) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def plot_dice_vs_bits(labels, datasets, cells, path: Path) -> None:
    """Best Dice against weight bits, one panel per dataset: filled dots at the paper's count, a
    grey bar to the exact count, crosses for Dice at 0.5."""
    from .figures import plt, save_figure

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
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
            if cell["dice05"] != "":
                ax.scatter([x], [cell["dice05"]], marker="x", color="k", zorder=2)
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
    from .figures import plt, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
    from . import checkpoint
    from .config import validate
    from .data import DataError
    from .engine import overlay_indices
    from .models import build_model
    from .paths import PROJECT_ROOT, base_module

    chosen = {}                                   # run folder -> checkpoint file named explicitly
    for f in map(Path, run_folders):
        if f.is_file():
            chosen[f.parent] = f
    entries = [read_run(Path(f).parent if Path(f).is_file() else Path(f)) for f in run_folders]
    datasets = {e.dataset for e in entries}
    if len(datasets) != 1:
        raise ResultsError(f"--overlays: the runs are of different datasets ({', '.join(sorted(datasets))}); give runs of one")
    dataset = datasets.pop()
    base = PROJECT_ROOT / f"{dataset.upper()}_BASE"
    if not (base / "datasets.py").is_file():
        raise ResultsError(f"--overlays: no {base.name}/datasets.py for dataset {dataset!r}")
    module = base_module(base)
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
    from .figures import overlay_rgb, panel_grid

    rows = [[(image, "input", "gray"), (gt, "ground truth", "gray")]
            + [(overlay_rgb(image, gt, preds[r]), title, None) for title, preds in od.predictions]
            for r, (image, gt) in enumerate(zip(od.images, od.gts))]
    panel_grid(rows, path, suptitle=f"{od.dataset.upper()} validation ({od.source}): orange overlap, "
                                    f"red ground truth only, blue prediction only")


def _with_data_path(cfg, run_folder: Path):
    """A run's resolved config keeps data_path as written, relative to the experiment folder; try the
    run folder, then the experiment folder two levels up (<experiment>/runs/<name>)."""
    from .config import Config

    value = cfg.get("data_path")
    if value is None or Path(value).is_absolute():
        return cfg
    for folder in (run_folder, run_folder.parent.parent):
        if (folder / value).exists():
            return Config({**cfg.to_dict(), "data_path": str((folder / value).resolve())}, cfg.source, cfg.section)
    return cfg


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _readme_markers(readme: Path) -> tuple[str, int, int]:
    try:
        content = readme.read_text(encoding="utf-8")
    except OSError as err:
        raise ResultsError(f"{readme}: cannot read ({err.strerror or err})") from None
    start, end = content.find(README_BEGIN), content.find(README_END)
    if start < 0 or end < start:
        raise ResultsError(f"{readme}: no '{README_BEGIN}' ... '{README_END}' markers to replace between")
    return content, start, end


def replace_readme_section(readme: Path, text: str) -> None:
    """Put ``text`` between the results markers of ``readme`` (both must be present)."""
    content, start, end = _readme_markers(readme)
    write_text_atomic(readme, content[:start + len(README_BEGIN)] + "\n" + text + content[end:])


def run(folders: Sequence[str], out: str, latex_too: bool = False, overlays: Sequence[str] = (),
        readme: str | None = None, plots: bool = True, n_slices: int = 3, threshold: float | None = None,
        command: str = "") -> dict:
    """Everything the command does; returns {"labels", "datasets", "cells", "written"}."""
    paths = [Path(f) for f in folders]
    for p in paths:
        if not p.is_dir():
            raise ResultsError(f"{p}: no such folder")
    if readme:
        _readme_markers(Path(readme))                 # checked before anything is written
    entries = discover(paths)
    od = overlay_data([Path(o) for o in overlays], n_slices, threshold) if overlays else None
    if not entries:
        raise ResultsError(f"no run folders or experiment folders found under {', '.join(map(str, paths))}")
    labels, datasets, cells = build_table(entries)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(labels, datasets, cells, command)
    written = [out_dir / "results.md", out_dir / "results.csv"]
    write_text_atomic(out_dir / "results.md", text)
    write_csv(out_dir / "results.csv", labels, datasets, cells)
    if latex_too:
        write_text_atomic(out_dir / "results.tex", latex(labels, datasets, cells))
        written.append(out_dir / "results.tex")
    if plots:
        plot_dice_vs_bits(labels, datasets, cells, out_dir / "dice_vs_bits.png")
        written.append(out_dir / "dice_vs_bits.png")
        by_run = {str(e.folder): e for e in entries}
        for d in datasets:
            plot_curves(labels, d, cells, by_run, out_dir / f"curves_{d}.png")
            written.append(out_dir / f"curves_{d}.png")
    if od is not None:
        plot_overlays(od, out_dir / "overlays.png")
        written.append(out_dir / "overlays.png")
    if readme:
        replace_readme_section(Path(readme), text)
    return {"labels": labels, "datasets": datasets, "cells": cells, "written": written}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.results",
                                     description="Rebuild the paper's results table and figures from run folders.")
    parser.add_argument("folders", nargs="+", help="experiment folders (em/, gm/, nih/), run folders, log_output_dirs")
    parser.add_argument("--out", required=True, help="output folder (results.md, results.csv, figures)")
    parser.add_argument("--latex", action="store_true", help="also write results.tex")
    parser.add_argument("--no-plots", action="store_true", help="skip dice_vs_bits.png and curves_<dataset>.png")
    parser.add_argument("--overlays", nargs="+", default=[], metavar="RUN",
                        help="run folders (their best.pt) or checkpoint files to show side by side on validation slices (overlays.png)")
    parser.add_argument("--slices", type=int, default=3, help="validation slices in overlays.png (default 3)")
    parser.add_argument("--threshold", type=float, default=None, help="overlay threshold (default: each run's)")
    parser.add_argument("--readme", help="also replace the README's results section (between the markers)")
    args = parser.parse_args(argv)
    command = "python -m unetq.results " + " ".join(args.folders) + f" --out {args.out}"
    try:
        result = run(args.folders, args.out, args.latex, args.overlays, args.readme, not args.no_plots,
                     args.slices, args.threshold, command)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_runs = sum(1 for c in result["cells"].values() if c["status"] != "no run")
    print(f"{len(result['labels'])} settings, {n_runs} runs, datasets {', '.join(result['datasets'])}; wrote "
          + ", ".join(str(p) for p in result["written"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
