"""Where things live: the project root and the optional shared sample data beside it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """The git commit of the code (``+dirty`` with uncommitted changes), or "unknown" outside a
    checkout: a run records it so that its numbers can be traced to the code that made them."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty=+dirty"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def broken_links(folder: Path) -> list[str]:
    """One line per symbolic link in ``folder`` that points nowhere (e.g. an experiment folder copied one
    level deeper with ``cp -r``: its relative links keep their old depth): which link, where it points,
    and the command that recreates the folder's links."""
    folder = Path(folder)
    try:
        links = sorted(p for p in folder.iterdir() if p.is_symlink() and not p.exists())
    except OSError:
        return []
    lines = []
    for link in links:
        base = _base_of(link)
        lines.append(f"{link}: a link to {os.readlink(link)}, which does not exist (was the folder moved or "
                     f"copied to another depth?); recreate the links with: python -m unetq.newexp "
                     f"{_shown(folder)} --base {base} --relink")
    return lines


def _base_of(link: Path) -> str:
    """The BASE a broken link meant: the ``*_BASE`` folder its target names, else the BASE whose entry
    script the folder links (``em_unet.py`` -> EM_BASE)."""
    named = [part for part in Path(os.readlink(link)).parts if part.endswith("_BASE")]
    if named:
        return named[-1]
    return next((b.folder.name for b in BASES.values() if (link.parent / b.script).is_symlink()), "BASE")


def _shown(folder: Path) -> str:
    """``folder`` relative to the current folder when it lies below it (a shorter command to copy)."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(folder)


def shared_data_dir() -> Path:
    """The folder of real sample data (``../shared/data`` beside the project root).

    It exists on the developers' machines only; callers must handle its absence.
    """
    return PROJECT_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Base:
    """One BASE folder: the dataset it trains, its entry script and its data module."""

    dataset: str        # em | gm | nih
    folder: Path        # PROJECT_ROOT / "EM_BASE"
    script: str         # the entry script an experiment folder links to: em_unet.py
    data: str           # the module with FIELDS and build_datasets(cfg): em_data


# The one rule that ties a dataset to its BASE, script and data module. Every module of a BASE has a
# name no other BASE uses (em_data, gm_data, nih_data, ...), so the three folders can share sys.path.
BASES = {b.dataset: b for b in (Base("em", PROJECT_ROOT / "EM_BASE", "em_unet.py", "em_data"),
                                Base("gm", PROJECT_ROOT / "GM_BASE", "gmchallenge_unet.py", "gm_data"),
                                Base("nih", PROJECT_ROOT / "NIH_BASE", "nih_unet.py", "nih_data"))}


def base_of(name: str | Path) -> Base | None:
    """The BASE that ``name`` means: a dataset (``em``), a BASE folder (``EM_BASE`` or its path), or an
    entry script (``em_unet.py``, a link to it, or its path). None when it names none of them."""
    text = Path(str(name)).name
    for base in BASES.values():
        if text.lower() in (base.dataset, base.folder.name.lower(), base.script) or \
                Path(name).resolve() == base.folder.resolve():
            return base
    return None


def base_module(base: str | Path, name: str | None = None):
    """Import module ``name`` (default: the data module, e.g. ``em_data``) of a BASE folder the way its
    script does: by its plain name, with the BASE folder on ``sys.path`` (Python puts a script's
    resolved folder there when the script runs; tests and tools add it here)."""
    found = base_of(base)
    if found is None:
        raise ValueError(f"{base}: not a BASE folder (allowed: {', '.join(b.folder.name for b in BASES.values())})")
    folder = str(found.folder)
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name or found.data)
