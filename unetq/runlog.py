"""The run folder and what goes into it: the paper-style text log, the per-epoch metrics CSV and
a small ``summary.json`` saying how far the run got (read by the results table and the sweep)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

LOG_NAME, METRICS_NAME, SUMMARY_NAME, CONFIG_NAME = "log.txt", "metrics.csv", "summary.json", "config.yaml"


def timestamp() -> str:
    """Local time as YYYYmmdd-HHMMSS (used in backup and sub-run folder names)."""
    return time.strftime("%Y%m%d-%H%M%S")


def fresh_folder(folder: Path) -> tuple[Path, str | None]:
    """Make ``folder`` empty and ready for a new training run. An earlier run there is never
    overwritten: it is renamed to ``<name>_backup_<time>`` first. Returns (folder, notice)."""
    folder = Path(folder)
    notice = None
    if folder.exists() and any(folder.iterdir()):
        backup = _unique(folder.with_name(f"{folder.name}_backup_{timestamp()}"))
        folder.rename(backup)
        notice = f"an earlier run was in {folder}; kept it as {backup}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder, notice


def sub_folder(parent: Path, prefix: str) -> Path:
    """A new, unique ``<parent>/<prefix>_<time>`` folder (for inference and visualize outputs)."""
    folder = _unique(Path(parent) / f"{prefix}_{timestamp()}")
    folder.mkdir(parents=True)
    return folder


def _unique(path: Path) -> Path:
    candidate, k = path, 1
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.name}_{k}")
    return candidate


def default_mode() -> int:
    """The permission bits a newly created file gets (0o666 less the umask): mkstemp's private 0o600
    would leave results unreadable to the rest of a group."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (temporary file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:      # a full disk or an interrupt: no stray temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLog:
    """Writes the text log (also echoed to the terminal), the metrics CSV and the summary.
    A disabled log (the other ranks of a multi-process run) keeps the summary in memory only."""

    def __init__(self, folder: Path, echo: bool = True, enabled: bool = True):
        self.folder = Path(folder)
        self.echo = echo
        self.enabled = enabled
        self._columns: list[str] | None = None
        self.summary: dict[str, Any] = {}

    def line(self, text: str = "") -> None:
        """One line in log.txt and on the terminal (above any progress bar)."""
        if not self.enabled:
            return
        with open(self.folder / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        if self.echo:
            tqdm.write(text)

    def metrics_row(self, row: Mapping[str, Any]) -> None:
        """Append one epoch's row to metrics.csv (the columns are fixed by the first row)."""
        if not self.enabled:
            return
        path = self.folder / METRICS_NAME
        if self._columns is None:
            self._columns = list(row)
            if not path.exists() or path.stat().st_size == 0:
                with open(path, "w", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerow(self._columns)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([_cell(row.get(c)) for c in self._columns])

    def update_summary(self, **fields: Any) -> None:
        """Merge ``fields`` into summary.json (rewritten atomically)."""
        self.summary.update(fields)
        if self.enabled:
            write_text_atomic(self.folder / SUMMARY_NAME, json.dumps(self.summary, indent=2, default=str) + "\n")


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv back as a list of dicts with numbers parsed (empty cells -> None)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            rows.append({k: _number(v) for k, v in raw.items()})
    return rows


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
