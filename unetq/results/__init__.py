"""The paper's results table, rebuilt from run folders, and its figures.

    python -m unetq.results em/ gm/ nih/ --out results/ [--latex] [--readme README.md]
    python -m unetq.results em/ --out results/ --overlays em/full_precision/runs/full_precision em/a6_0_w0_4/runs/a6_0_w0_4

Each FOLDER is searched (recursively) for run folders (holding summary.json or metrics.csv) and
experiment folders (holding a config.yaml and no run outputs). An experiment whose run is nowhere
among the folders given is a row with empty cells ("no run"), not an error; so is a run whose files
are unreadable. Backups (``*_backup_*``) and inference / visualize sub-folders are skipped.

A row is a setting, named from the run's resolved config: ``full precision``, ``a6.0/w0.4`` (FIXED
activations Q6.0, weights Q0.4), ``INT a4/w4``, ``BNN``, ``Ternary``; `` [mode]`` is added when the
fixed-point mode is not the dataset's usual one (EM: pow2, GM and NIH: paper, METHOD.md section 1),
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
import sys
from pathlib import Path
from typing import Sequence

from ..runlog import write_text_atomic
from .figures import overlay_data, plot_curves, plot_dice_vs_bits, plot_overlays
from .runs import README_BEGIN, README_END, Entry, ResultsError, build_table, discover, read_run
from .tables import latex, markdown, write_csv

__all__ = ["Entry", "README_BEGIN", "README_END", "ResultsError", "build_table", "discover", "main", "read_run", "run"]


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

