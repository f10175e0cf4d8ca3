"""Rendering the per-run tables: results.csv, the detail tables of results.md, results.tex."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .. import memory
from .runs import NOT_PAPER, OTHER_PROTOCOL, HD_UNIT

CSV_FIELDS = ("run", "experiment", "status", "dice", "dice_epoch", "threshold", "delta", "delta_same_protocol",
              "dice_05", "dice_05_epoch", "delta_05", "hd95", "hd95_05", "dice_bg", "dice_bg_05", "hd95_unit", "weights",
              "w_bits_paper", "w_bits_honest", "w_bits_exact", "a_bits_paper", "a_bits_honest", "a_bits_exact",
              "mem_float32_mib", "mem_paper_mib", "mem_honest_mib", "mem_exact_mib", "exact_bits_from", "data_source", "epochs_done", "num_epochs",
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


def details_markdown(labels, datasets, cells) -> str:
    """One detail table per dataset, one line per run (every seed and protocol its own line)."""
    out = ["### Per run", "", _footnotes(), ""]
    for d in datasets:
        out += [f"#### {d.upper()}: details", ""]
        unit = f" ({HD_UNIT[d]})" if d in HD_UNIT else ""
        head = ["setting", "Dice@thr (ep)", "thr", "ΔDice", f"HD95@thr{unit}", "Dice@0.5 (ep)", "ΔDice@0.5",
                f"HD95@0.5{unit}", *(["membrane Dice@thr / @0.5"] if d == "em" else []),
                "weights", "W bits paper / honest / exact", "A bits paper / honest / exact",
                "model MiB paper / honest / exact", "data · protocol", "run"]
        detail = []
        for label in labels:
            cell = cells.get((label, d))
            if not cell:
                continue
            detail.append([label, _dice_text(cell), cell["threshold"], _delta_text(cell),
                           cell["hd95"] if cell["hd95"] != "" else "—",
                           _dice_text(cell, "dice_05", "dice_05_epoch"), _delta_text(cell, "delta_05"),
                           cell["hd95_05"] if cell["hd95_05"] != "" else "—",
                           *([_pair(cell, "dice_bg", "dice_bg_05")] if d == "em" else []),
                           cell.get("weights", ""),
                           _triple(cell, "w_bits"), _triple(cell, "a_bits"), _triple(cell, "mem", "_mib", ".3f"),
                           _protocol_text(cell), f"`{cell['run']}`" + (f" ({cell['notes']})" if cell["notes"] else "")])
        out += _md_table(head, detail) + [""]
    return "\n".join(out).strip() + "\n"


def _pair(cell: dict, a: str, b: str) -> str:
    return " / ".join(f"{cell[k]:.2f}" if isinstance(cell.get(k), float) else "—" for k in (a, b))


def _triple(cell: dict, prefix: str, suffix: str = "", fmt: str = "") -> str:
    values = [cell.get(f"{prefix}_{c}{suffix}", "") for c in memory.COUNTS]
    if all(v == "" for v in values):
        return ""
    return " / ".join(format(v, fmt) if fmt and isinstance(v, float) else str(v if v != "" else "?") for v in values)


def _footnotes() -> str:
    return (f"Every run, finished or not, one line each. Dice x100, best validation epoch in brackets; Dice@thr uses each run's threshold (the paper's 0.999; "
            f"see the details), Dice@0.5 is the best epoch at 0.5. ΔDice, ΔDice@0.5: against the same dataset's "
            f"preferred full-precision run, in Dice points ({OTHER_PROTOCOL}: that row ran another protocol). {NOT_PAPER}: not the paper protocol (real data, "
            f"base width 64, 200 epochs), not a paper number. Bits: paper = i + f; honest = 1 + i + f (sign-magnitude), "
            f"n + 1 for INTn, + a float alpha per filter for Ternary; exact = what `unetq.export` packs (paper mode's "
            f"carry needs 2 + i + f; pow2 depends on the weights). HD95@thr / HD95@0.5: at the epoch of the best "
            f"Dice at that threshold (empty where the run predates HD95@0.5), in pixels for EM, in mm where the "
            f"dataset gives a voxel spacing. EM membrane: the other class's Dice at each threshold's best epoch. A "
            f"run still running or interrupted is never a paper number.")


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


