"""The run folder and what goes into it: the paper-style text log, the per-epoch metrics CSV and
a small ``summary.json`` saying how far the run got (read by the results table and the sweep)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

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


# Every file a run rewrites goes through a temporary ``.<name>.<random>.tmp`` in the same folder that
# is renamed over the target: a kill at any moment leaves the old file or the new one, never a half.
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is flushed to disk and renamed over
    ``path``, on any error (a full disk, an interrupt) it is removed and ``path`` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, default_mode())
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (temporary file + rename)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files a killed write left in ``folder`` (see :func:`replacing`; checkpoint.save uses
    the same names). Only a process holding the run's lock may remove them (another one may be
    writing them right now)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)
                  and p.is_file())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``folder``; returns what was removed."""
    removed = stale_temporaries(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def strict_json(value: Any) -> Any:
    """``value`` with NaN / inf floats as None (recursively): JSON has no NaN, and strict parsers
    refuse the ``NaN`` that Python's json writes by default."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def read_summary(folder: Path) -> dict:
    """The run's summary.json as a dict ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def csv_text(rows: list[list]) -> str:
    """Rows as CSV text (the dialect metrics.csv is written in)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


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
            text = json.dumps(strict_json(self.summary), indent=2, default=str, allow_nan=False)
            write_text_atomic(self.folder / SUMMARY_NAME, text + "\n")


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
