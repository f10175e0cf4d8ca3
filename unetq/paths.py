"""Where things live: the project root and the optional shared sample data beside it."""

from __future__ import annotations

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
