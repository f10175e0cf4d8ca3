"""Where things live: the project root and the optional shared sample data beside it."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """The git commit of the code (``+dirty`` with uncommitted changes), or "unknown" outside a
    checkout: a run records it so that its numbers can be traced to the code that made them."""
    import subprocess

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
    """The BASE a broken link meant: the ``*_BASE`` folder its target names, else the BASE holding the
    folder's entry script (``em_unet.py`` -> EM_BASE)."""
    named = [part for part in Path(os.readlink(link)).parts if part.endswith("_BASE")]
    if named:
        return named[-1]
    scripts = {p.name for p in link.parent.glob("*_unet.py")}
    return next((b.name for b in sorted(PROJECT_ROOT.glob("*_BASE")) if scripts & {p.name for p in b.glob("*_unet.py")}),
                "BASE")


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


def load_module(path: Path, name: str):
    """Import the Python file at ``path`` under the module name ``name`` (BASE folders are not
    packages, and every BASE has a ``datasets.py``: importing them by path keeps them apart).
    A module already loaded from the same file is returned as is."""
    import importlib.util
    import sys

    path = Path(path)
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered first: dataclasses look their module up while loading
    spec.loader.exec_module(module)
    return module


def base_module(base: str | Path, name: str = "datasets"):
    """``<base>/<name>.py`` of a BASE folder (e.g. EM_BASE/datasets.py), imported as
    ``<prefix>_<name>`` (``em_datasets``). ``base`` is a folder name under the project root or a path."""
    base = Path(base)
    folder = (base if base.is_absolute() or base.exists() else PROJECT_ROOT / base).resolve()
    prefix = folder.name.split("_")[0].lower()
    return load_module(folder / f"{name}.py", f"{prefix}_{name}")
