"""The headline table: the paper's shape, one row per setting, one Dice per dataset and its change
against full precision, with seeds pooled and the threshold chosen once per dataset.

Rules (stated again under the table it writes):

- Only finished runs count (summary status ``complete`` and every planned epoch done); the others
  are listed under the table as not finished, experiments without a run as not run.
- Runs whose configs are equal except ``seed``, ``experiment_name`` and the run-only keys
  (:data:`unetq.config.RUN_ONLY_KEYS`) are seeds of one row: mean +- sample sd (n).
- The change against full precision is the difference of the means against the full-precision
  row of the same protocol (data source, base width, epochs; the closest config otherwise, marked
  ‡), with Welch's 95 % t interval when both rows have 2 or more seeds (:mod:`.stats`); an interval
  that holds 0 is marked °.
- Threshold, per dataset: the runs' configured one, unless some run's outputs never reach it
  (:func:`never_saturated`: its best epoch there is an accident, not a result) or the runs disagree
  on it; then every cell of that dataset uses 0.5, and the note says so and why.
- Per cell: the best-epoch Dice (the paper's way: chosen on the sections it is scored on), the mean
  Dice of the last 10 epochs (not chosen on them) and, for EM, the membrane Dice (``dice_bg``: the
  other class of the same predictions, at the best epoch; "—" for runs that predate it).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .runs import (DATASETS, NOT_PAPER, OTHER_PROTOCOL, PROTOCOL_KEYS, SETTING_KEYS, Entry, _best, _order_key,
                   canonical_name, cell_of, comparable_config, differing_keys, differs_text, options_of,
                   setting_label)
from .stats import Difference, pooled_sd, summarize, welch

LAST_EPOCHS = 10
# a run "never saturated" at its threshold when its last epoch scores less than this share of its
# Dice at 0.5, and at least MIN_LEARNED at 0.5 (a run that learned nothing at 0.5 either is a failed
# run, shown as it is, not a threshold accident)
SATURATION_SHARE, MIN_LEARNED = 0.5, 10.0
INSIDE = "°"
DASH = "—"


@dataclass
class Group:
    """Finished runs of one setting under one config (seeds of one row)."""

    dataset: str
    label: str
    entries: list
    config: dict
    cell: dict                       # cell_of() of the first run: protocol, bits, memory
    row: str = ""
    reference: "Group | None" = None
    same_protocol: bool = True

    @property
    def is_reference(self) -> bool:
        return self.label.split(" — ")[0].split(" + ")[0] == "full precision"


@dataclass(frozen=True)
class Threshold:
    """Which numbers a dataset's cells show."""

    value: float
    dice_key: str
    bg_key: str
    note: str


@dataclass
class Headline:
    rows: list
    datasets: list
    groups: dict                     # (row, dataset) -> Group
    thresholds: dict                 # dataset -> Threshold
    numbers: dict                    # (row, dataset) -> {"best": [...], "epochs": [...], "last": [...], "bg": [...]}
    not_finished: list = field(default_factory=list)
    not_run: list = field(default_factory=list)

    def rows_of(self, dataset: str) -> list:
        """The rows with a cell in ``dataset``, in the table's order."""
        return [r for r in self.rows if (r, dataset) in self.groups]


# --------------------------------------------------------------------------------------------
# Which runs, grouped how
# --------------------------------------------------------------------------------------------

def finished(entry: Entry) -> bool:
    """The run completed every planned epoch (summary.json says complete, metrics.csv has rows)."""
    s = entry.summary
    planned = s.get("num_epochs")
    return (not entry.missing and s.get("status") == "complete" and bool(entry.rows)
            and isinstance(planned, int) and s.get("epochs_done", 0) >= planned)


def group_runs(entries: Sequence[Entry]) -> tuple[list[Group], list[Entry], list[Entry]]:
    """(groups of finished runs, runs not finished, experiments without a run)."""
    groups: list[Group] = []
    not_finished, not_run = [], []
    for entry in entries:
        if entry.missing:
            not_run.append(entry)
            continue
        if not finished(entry):
            not_finished.append(entry)
            continue
        cfg = comparable_config(entry)
        same = next((g for g in groups if g.dataset == entry.dataset and not differing_keys(g.config, cfg)), None)
        if same is not None:
            same.entries.append(entry)
        else:
            opts = options_of(entry)
            groups.append(Group(entry.dataset, setting_label(opts, entry.dataset, entry.name), [entry], cfg,
                                cell_of(entry, opts)))
    return groups, not_finished, not_run


def _preference(group: Group) -> tuple:
    """Which group of a setting keeps the plain row name: paper protocol, then most seeds, then the
    folder named after the setting."""
    return (group.cell["paper_protocol"] == "yes", len(group.entries),
            any(e.name.lower() == canonical_name(group.label) for e in group.entries))


def name_rows(groups: Sequence[Group]) -> None:
    """Set each group's row name: the setting, and for the second and later groups of a setting in a
    dataset, what differs from the first (``full precision — base_width 16, num_epochs 100``)."""
    by_label: dict = {}
    for g in groups:
        by_label.setdefault((g.dataset, g.label), []).append(g)
    for items in by_label.values():
        items.sort(key=_preference, reverse=True)
        items[0].row = items[0].label
        for g in items[1:]:
            g.row = f"{g.label} — {differs_text(g.config, items[0].config) or g.entries[0].name}"


def link_references(groups: Sequence[Group]) -> None:
    """Each group's full-precision reference: itself for a full-precision group, else the one of the
    same protocol whose other keys differ least (the most seeds on a tie)."""
    for g in groups:
        refs = [r for r in groups if r.dataset == g.dataset and r.is_reference]
        if g.is_reference or not refs:
            g.reference = g if g.is_reference else None
            continue

        def distance(r: Group) -> tuple:
            protocol = any(g.config.get(k) != r.config.get(k) for k in PROTOCOL_KEYS)
            return protocol, len(differing_keys(g.config, r.config, SETTING_KEYS)), -len(r.entries)

        g.reference = min(refs, key=distance)
        g.same_protocol = not distance(g.reference)[0]


# --------------------------------------------------------------------------------------------
# The threshold and the numbers
# --------------------------------------------------------------------------------------------

def never_saturated(entry: Entry) -> str | None:
    """Why the run's Dice at its configured threshold is no result (None when it is one): its
    outputs do not reach that threshold by the end of training, so its best epoch there is an early
    accident: the last epoch scores less than SATURATION_SHARE of its Dice at 0.5 (which is at least
    MIN_LEARNED; with every slice predicted empty at the threshold, it scores 0)."""
    last = entry.rows[-1]
    at_thr, at_half = last.get("dice"), last.get("dice_05")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (at_thr, at_half)):
        return None
    if at_half < MIN_LEARNED or at_thr >= SATURATION_SHARE * at_half:
        return None
    best, epoch, _ = _best(entry.rows, "dice")
    empty = f", no prediction on {last.get('n_empty_pred')} of {last.get('n_slices')} slices" \
        if last.get("n_empty_pred") else ""
    return (f"last epoch {at_thr:.2f} against {at_half:.2f} at 0.5{empty}; its best there, "
            f"{best:.2f}, is epoch {epoch}")


def choose_threshold(dataset: str, groups: Sequence[Group]) -> Threshold:
    """The threshold of a dataset's cells (see the module docstring)."""
    entries = [e for g in groups if g.dataset == dataset for e in g.entries]
    configured = sorted({float(e.config.get("threshold", e.summary.get("threshold", 0.5))) for e in entries})
    if configured == [0.5]:
        return Threshold(0.5, "dice", "dice_bg", "threshold 0.5 (the runs' own)")
    if len(configured) > 1:
        return Threshold(0.5, "dice_05", "dice_bg_05",
                         f"threshold 0.5: the runs' thresholds differ ({', '.join(f'{t:g}' for t in configured)})")
    thr = configured[0]
    # named by its table row (build() names rows first), so that the example says which protocol it ran
    accidents = [(g.row, g.is_reference, why) for g in groups if g.dataset == dataset
                 for e in g.entries for why in [never_saturated(e)] if why]
    if not accidents:
        return Threshold(thr, "dice", "dice_bg", f"threshold {thr:g} (the runs' own)")
    label, _, why = min(accidents, key=lambda a: not a[1])                  # the reference's, if it is one
    return Threshold(0.5, "dice_05", "dice_bg_05",
                     f"threshold 0.5, not the runs' {thr:g}: the outputs of {len(accidents)} of {len(entries)} "
                     f"runs never reach {thr:g}, so their best epoch at {thr:g} is an early accident, not a "
                     f"result (e.g. {label}: {why})")


def run_numbers(entry: Entry, thr: Threshold) -> dict:
    """One run's best-epoch Dice and epoch, mean of the last LAST_EPOCHS epochs, and the other class's
    Dice at the best epoch (None where the run predates it)."""
    best, epoch, row = _best(entry.rows, thr.dice_key)
    tail = [r.get(thr.dice_key) for r in entry.rows[-LAST_EPOCHS:]]
    tail = [float(v) for v in tail if isinstance(v, (int, float)) and math.isfinite(v)]
    bg = row.get(thr.bg_key) if row else None
    return {"best": best, "epoch": epoch, "last": sum(tail) / len(tail) if tail else None,
            "bg": float(bg) if isinstance(bg, (int, float)) and math.isfinite(bg) else None}


def build(entries: Sequence[Entry]) -> Headline:
    """The headline table of ``entries`` (every run and experiment found)."""
    groups, not_finished, not_run = group_runs(entries)
    name_rows(groups)
    link_references(groups)
    datasets = [d for d in DATASETS if any(g.dataset == d for g in groups)]
    datasets += sorted({g.dataset for g in groups} - set(datasets))
    thresholds = {d: choose_threshold(d, groups) for d in datasets}
    by_cell, numbers = {}, {}
    for g in groups:
        by_cell[(g.row, g.dataset)] = g
        per_run = [run_numbers(e, thresholds[g.dataset]) for e in g.entries]
        numbers[(g.row, g.dataset)] = {k: [r[k] for r in per_run if r[k] is not None]
                                       for k in ("best", "epoch", "last", "bg")}
    rows = sorted({g.row for g in groups}, key=_order_key)
    return Headline(rows, datasets, by_cell, thresholds, numbers, not_finished, not_run)


def difference(h: Headline, row: str, dataset: str, key: str) -> Difference | None:
    """The change of a cell's ``key`` values against its full-precision reference (None when there
    is no reference, it is the reference, or a side lacks values)."""
    g = h.groups[(row, dataset)]
    if g.reference is None or g.reference is g:
        return None
    x, y = h.numbers[(row, dataset)][key], h.numbers[(g.reference.row, dataset)][key]
    return welch(x, y) if x and y else None


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _value_text(values: list) -> str:
    if not values:
        return DASH
    s = summarize(values)
    return f"{s.mean:.2f}" if s.sd is None else f"{s.mean:.2f} ± {s.sd:.2f} ({s.n})"


def _delta_text(d: Difference | None, reference: bool, same_protocol: bool) -> str:
    if reference:
        return "ref."
    if d is None:
        return DASH
    text = f"{d.delta:+.2f}"
    if d.low is not None:
        text += f" [{d.low:+.2f}, {d.high:+.2f}]" + (INSIDE if d.contains_zero else "")
    return text + ("" if same_protocol else f" {OTHER_PROTOCOL}")


def cell_text(h: Headline, row: str, dataset: str, key: str) -> str:
    """``value · change``: e.g. ``93.71 · +0.32`` or ``93.50 ± 0.20 (5) · -0.10 [-0.40, +0.20]°``."""
    g = h.groups.get((row, dataset))
    if g is None:
        return ""
    values = h.numbers[(row, dataset)][key]
    if not values:
        return DASH
    mark = "" if g.cell["paper_protocol"] == "yes" else f" {NOT_PAPER}"
    change = _delta_text(difference(h, row, dataset, key), g.reference is g, g.same_protocol)
    return f"{_value_text(values)}{mark} · {change}"


def _row_common(h: Headline, row: str) -> tuple[str, str]:
    """(W / A bits (paper count), model MiB (paper count), per dataset when they differ)."""
    cells = [(d, h.groups[(row, d)].cell) for d in h.datasets if (row, d) in h.groups]
    bits = cells[0][1].get("w_bits_paper", "?"), cells[0][1].get("a_bits_paper", "?")
    mem = {d: c.get("mem_paper_mib") for d, c in cells}
    mem_text = " · ".join(f"{d.upper()} {v:.3f}" for d, v in mem.items() if isinstance(v, float)) \
        if len(set(mem.values())) > 1 else (f"{cells[0][1]['mem_paper_mib']:.3f}"
                                             if isinstance(cells[0][1].get("mem_paper_mib"), float) else "?")
    return f"{bits[0]} / {bits[1]}", mem_text


def _columns(dataset: str) -> list[tuple[str, str]]:
    cols = [("best", f"{dataset.upper()} Dice, best epoch"), ("last", f"{dataset.upper()} Dice, last {LAST_EPOCHS} ep")]
    if dataset == "em":
        cols.append(("bg", "EM membrane Dice"))
    return cols


def _protocols(h: Headline, dataset: str) -> str:
    """The protocols of a dataset's rows: ``sample · w64 · 200 ep (4 rows)``."""
    counts: dict = {}
    for (row, d), g in h.groups.items():
        if d == dataset:
            c = g.cell
            key = f"{c['data_source']} · w{c['base_width']} · {c['num_epochs']} ep"
            counts[key] = counts.get(key, 0) + len(g.entries)
    return "; ".join(f"{k} ({n} run{'s' if n > 1 else ''})" for k, n in counts.items())


def noise_note(h: Headline, dataset: str) -> str:
    """How large a difference one seed can show, from the rows of ``dataset`` with several seeds."""
    multi = [(row, h.numbers[(row, d)]["best"]) for (row, d) in h.groups if d == dataset
             and len(h.numbers[(row, d)]["best"]) >= 2]
    pooled = pooled_sd([v for _, v in multi])
    if pooled is None:
        return ""
    sd, dof = pooled
    return (f"{dataset.upper()} seed noise: over its {len(multi)} row(s) with several seeds "
            f"({', '.join(r for r, _ in multi)}), the seed-to-seed sd of the best-epoch Dice is {sd:.2f} "
            f"(pooled, {dof} df), so two one-seed rows differing by less than about {1.96 * math.sqrt(2) * sd:.2f} "
            f"(1.96 · √2 · sd) cannot be told apart at that protocol.")


def _listing(entries: Sequence[Entry], what: str) -> str:
    items = []
    for e in sorted(entries, key=lambda e: (e.dataset, e.name)):
        s = e.summary
        state = "" if e.missing else f": {s.get('status', 'unknown')}, {s.get('epochs_done', len(e.rows))}/" \
                                     f"{s.get('num_epochs', '?')} epochs"
        items.append(f"{e.dataset.upper()} {setting_label(options_of(e), e.dataset, e.name)} (`{e.name}`{state})")
    return f"**{what}** (nothing shown for them): " + "; ".join(items) + "." if items else ""


def markdown(h: Headline) -> str:
    """The headline table, the per-dataset threshold and protocol notes, and the method."""
    header = ["setting", "W / A bits", "model MiB"]
    for d in h.datasets:
        header += [name for _, name in _columns(d)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] if h.rows else ["No finished run yet."]
    for row in h.rows:
        cells = [row, *_row_common(h, row)]
        for d in h.datasets:
            cells += [cell_text(h, row, d, key) for key, _ in _columns(d)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{d.upper()}**: {h.thresholds[d].note}. Protocol: {_protocols(h, d)}." for d in h.datasets]
    notes += [f"- {n}" for n in (noise_note(h, d) for d in h.datasets) if n]
    notes += [f"- {t}" for t in (_listing(h.not_finished, "Not finished"), _listing(h.not_run, "Not run")) if t]
    method = (f"Dice x100, each cell `value · change against the full-precision row` (ref.). Rows with several "
              f"seeds (configs equal but for the seed): mean ± sample sd (n), the change a difference of means "
              f"with Welch's 95 % t interval [low, high] (Welch-Satterthwaite degrees of freedom); {INSIDE}: the "
              f"interval holds 0, no difference can be told at this n; a one-seed change has no interval. "
              f"Best epoch: the best validation epoch, chosen on the sections it is scored on (the paper's way, "
              f"which flatters every row); last {LAST_EPOCHS} ep: the mean over the last {LAST_EPOCHS} epochs, "
              f"not chosen on them. EM membrane: the Dice of the other class (membrane) of the same predictions "
              f"at the best epoch; its floor is ~33 where the cell class's is ~89, so differences show better "
              f"({DASH}: the run predates it). {NOT_PAPER}: not the paper protocol (real data, base width 64, "
              f"200 epochs); {OTHER_PROTOCOL}: the full-precision row compared against ran another protocol. "
              f"Bits and MiB: the paper's count (i + f bits); every count, HD95, protocol and status per run are "
              f"in the detail tables and the CSV.")
    return "\n".join(lines + [""] + notes + ["", method]) + "\n"


CSV_FIELDS = ("setting", "dataset", "threshold", "n", "experiments", "paper_protocol", "best_mean", "best_sd",
              "best_epochs", "delta", "delta_low", "delta_high", "last_mean", "last_sd", "last_delta",
              "last_delta_low", "last_delta_high", "bg_mean", "bg_sd", "bg_delta", "bg_delta_low", "bg_delta_high",
              "reference", "same_protocol")


def _stat_fields(h: Headline, row: str, d: str, key: str) -> list:
    values = h.numbers[(row, d)][key]
    s = summarize(values) if values else None
    diff = difference(h, row, d, key)
    return [_num(s.mean if s else None), _num(s.sd if s else None),
            *(_num(v) for v in ((diff.delta, diff.low, diff.high) if diff else (None, None, None)))]


def _num(v) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.4f}"


def write_csv(path: Path, h: Headline) -> None:
    """One line per row and dataset: the headline numbers unrounded (4 decimals)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_FIELDS)
        for row in h.rows:
            for d in h.datasets:
                g = h.groups.get((row, d))
                if g is None:
                    continue
                best = _stat_fields(h, row, d, "best")
                w.writerow([row, d, h.thresholds[d].value, len(g.entries), " ".join(e.name for e in g.entries),
                            g.cell["paper_protocol"], best[0], best[1],
                            " ".join(str(e) for e in h.numbers[(row, d)]["epoch"]), *best[2:],
                            *_stat_fields(h, row, d, "last"), *_stat_fields(h, row, d, "bg"),
                            g.reference.row if g.reference else "", "yes" if g.same_protocol else "no"])


def readme_text(h: Headline, details: Path, readme: Path, command: str) -> str:
    """What ``--readme`` puts between the markers: the headline and a link to the details."""
    link = os.path.relpath(details, readme.parent).replace(os.sep, "/")
    return (f"Generated by `{command}`.\n\n" + markdown(h)
            + f"\nPer run (HD95, every bit count, memory, protocol, status): [{link}]({link}) and its CSV.\n")
