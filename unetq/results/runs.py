"""Finding run folders and reading what each contributes to its dataset's column group (one cell
per run); the per-run table :func:`build_table`. See :mod:`unetq.results` for the rules."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from .. import checkpoint, memory
from ..config import COMMON_FIELDS, RUN_ONLY_KEYS, ConfigError
from ..models import build_model, formats, model_options, validate_model_keys
from ..paths import BASES, base_module
from ..runlog import CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, read_metrics

DATASETS = ("em", "gm", "nih")
USUAL_MODE = {"em": "pow2", "gm": "paper", "nih": "paper"}
HD_UNIT = {"em": "px"}
ORDER = ("full precision", "a8.8/w8.8", "a8.0/w0.8", "a6.0/w0.4", "a6.0/w0.2", "a4.0/w0.2", "a2.0/w0.2",
         "BNN", "Ternary")
PAPER_PROTOCOL = {"data_source": "real", "base_width": 64, "num_epochs": 200}
PROTOCOL_KEYS = ("data_source", "base_width", "num_epochs")
# keys in which the seeds of one setting may differ
NOT_COMPARED = RUN_ONLY_KEYS | {"seed", "experiment_name", "trained_model"}
# keys that make the setting itself (the row name), not the protocol around it
SETTING_KEYS = ("quantization", "activation_i_width", "activation_f_width", "weight_i_width", "weight_f_width",
                "fixed_mode", "activation")
# EM's "sample" source is the complete real ISBI 2012 training set, i.e. the paper's data; GM's and NIH's
# samples are one scan each, not their data sets (docs/datasets.md)
PAPER_DATA = {"em": ("real", "sample"), "gm": ("real",), "nih": ("real",)}
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
        return model_options(validate_model_keys(entry.config))
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
    # the other class (EM: membrane) of the same predictions, at each threshold's best epoch
    bg = best_row.get("dice_bg") if best_row else None
    bg05 = d05_row.get("dice_bg_05") if d05_row else None
    source = s.get("data_source") or cfg.get("data_source") or (entry.rows[-1].get("data_source") if entry.rows else "")
    num_epochs = s.get("num_epochs") or cfg.get("num_epochs") or ""
    epochs_done = s.get("epochs_done", len(entry.rows)) if not entry.missing else 0
    base_width = opts["base_width"] if opts else s.get("base_width", "")
    status = "no run" if entry.missing else s.get("status", "unknown")
    protocol = {"data_source": "real" if source in PAPER_DATA.get(entry.dataset, ("real",)) else source,
                "base_width": base_width, "num_epochs": num_epochs}
    cell = {
        "run": str(entry.folder), "experiment": entry.name, "status": status,
        "dice": _round(dice), "dice_epoch": dice_epoch or "", "threshold": cfg.get("threshold", s.get("threshold", "")),
        "delta": "", "dice_05": _round(d05), "dice_05_epoch": d05_epoch or "", "delta_05": "",
        "hd95": _round(hd95), "hd95_05": _round(d05_row.get("hd95_05") if d05_row else None),
        "dice_bg": _round(bg), "dice_bg_05": _round(bg05),
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


@functools.lru_cache(maxsize=None)
def _defaults(dataset: str) -> dict:
    """Every config key of ``dataset`` at its default (the common keys and its BASE's)."""
    fields = list(COMMON_FIELDS)
    if dataset in BASES:
        fields += list(getattr(base_module(dataset), "FIELDS", ()))
    return {f.name: f.default for f in fields}


def comparable_config(entry: Entry) -> dict:
    """The run's config without the keys seeds of one setting may differ in; a key it lacks (older
    code: added since) at its default; ``num_epochs`` as the summary records it (a resume may
    have extended the run)."""
    cfg = {**_defaults(entry.dataset), **entry.config}
    cfg = {k: v for k, v in cfg.items() if k not in NOT_COMPARED}
    if "num_epochs" in entry.summary:
        cfg["num_epochs"] = entry.summary["num_epochs"]
    return cfg


def differing_keys(a: dict, b: dict, skip: Sequence[str] = ()) -> list[str]:
    """Keys whose values differ between two configs (protocol keys first), ``skip`` aside."""
    return [k for k in sorted(set(a) | set(b), key=lambda k: (k not in PROTOCOL_KEYS, k))
            if k not in skip and a.get(k) != b.get(k)]


def differs_text(a: dict, b: dict) -> str:
    """The first three keys in which config ``a`` differs from ``b``, with ``a``'s values
    (``base_width 16, num_epochs 100``); empty when none differ."""
    keys = differing_keys(a, b)
    return ", ".join(f"{k} {a.get(k, '—')}" for k in keys[:3]) + (" …" if len(keys) > 3 else "")


def _later_row_name(label: str, entry: Entry, first: Entry, taken) -> str:
    """The row name of a run that is not its setting's preferred one: what its config differs in from
    the preferred run's, seed included (``full precision — base_width 16, num_epochs 100, seed 1``),
    else its folder name; the folder name and then a number are added until the name is free, so
    that no run is dropped."""
    parts = [p for p in [differs_text(comparable_config(entry), comparable_config(first))] if p]
    if entry.config.get("seed") != first.config.get("seed"):
        parts.append(f"seed {entry.config.get('seed')}")
    text = ", ".join(parts) or entry.name
    name = f"{label} — {text}"
    if name in taken and parts:
        text = f"{text}, {entry.name}"
        name = f"{label} — {text}"
    n = 1
    while name in taken:
        n += 1
        name = f"{label} — {text}, {n}"
    return name


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
        taken = {label}
        for k, (cell, entry) in enumerate(items):
            row = label if k == 0 else _later_row_name(label, entry, items[0][1], taken)
            taken.add(row)
            cells[(row, dataset)] = cell
    datasets = [d for d in DATASETS if any(k[1] == d for k in cells)]
    datasets += sorted({k[1] for k in cells} - set(datasets))
    for dataset in datasets:
        ref = cells.get(("full precision", dataset))
        for (label, d), cell in cells.items():
            if d != dataset or not ref:
                continue
            for key, delta in (("dice", "delta"), ("dice_05", "delta_05")):
                if isinstance(cell[key], float) and isinstance(ref[key], float):
                    cell[delta] = round(cell[key] - ref[key], 2)
            same = all(cell[k] == ref[k] for k in ("data_source", "base_width", "num_epochs"))
            cell["delta_same_protocol"] = "yes" if same else "no"
    labels = sorted({k[0] for k in cells}, key=_order_key)
    return labels, datasets, cells


