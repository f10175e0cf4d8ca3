"""Where a run's weights come from and where its best model also goes.

* :func:`sha256` fingerprints a checkpoint, so that a run records exactly which file it started from.
* :func:`source_record` is that record: the source's path (where the file is once the run's folder
  is set up: a retrain under its own experiment name moves the earlier run, source included, to a
  backup folder) and its hash.
* :func:`check_target` / :func:`keep_existing` prepare ``trained_model`` in ``normal`` mode, the
  paper README's "path to save best model while training": refused early when it cannot be
  written, an existing file there moved aside first (never silently overwritten).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .checkpoint import CheckpointError
from .runlog import timestamp


def sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_record(path: Path, digest: str, moved: tuple[Path, Path] | None = None) -> dict:
    """``{"path", "sha256"}`` of a run's source checkpoint. ``moved`` = (folder, backup): the run's
    folder was renamed to ``backup`` after the source was read; a source inside it now lies there."""
    path = Path(path).resolve()
    if moved is not None:
        folder, backup = (Path(p).resolve() for p in moved)
        if folder in path.parents:
            path = backup / path.relative_to(folder)
    return {"path": str(path), "sha256": digest}


def check_target(path: Path, key: str = "trained_model") -> None:
    """Refuse (CheckpointError, one line) a best-model path that cannot be written: a folder, a
    parent that is a file, or a folder without write permission."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: key {key!r} names a folder; give a file path for the best model "
                              f"(e.g. {path / 'best.pt'})")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"{path}: key {key!r}: cannot create its folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"{path}: key {key!r}: cannot write the best model there ({existing} is not "
                              f"writable); set {key} to a writable path, or to null")


def keep_existing(path: Path) -> str | None:
    """Move a file already at ``path`` to ``<stem>_backup_<time><suffix>`` beside it; returns the
    notice for the log (None when there was nothing)."""
    path = Path(path)
    if not path.exists():
        return None
    backup = path.with_name(f"{path.stem}_backup_{timestamp()}{path.suffix}")
    k = 1
    while backup.exists():
        k += 1
        backup = path.with_name(f"{path.stem}_backup_{timestamp()}_{k}{path.suffix}")
    path.rename(backup)
    return f"notice: trained_model {path} existed; kept it as {backup}"
