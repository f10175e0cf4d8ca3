"""One process per run folder: an exclusive OS-level lock (``fcntl.flock``) on a small file beside the
run folder, ``<log_output_dir>/.<experiment_name>.lock`` (see docs/running.md, "Reliability").

The lock file lives beside the folder, not inside it, because a new run renames an earlier run's
folder to a backup: a lock inside would move with it. The kernel releases a flock when its process
dies, however it dies (kill -9 included), so a killed run never blocks the next one; a stale lock
file on disk means nothing by itself. The file records who holds it (pid, start time, mode, command)
so that a refused run can name the running one.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from .config import ConfigError


class RunFolderBusy(ConfigError):
    """Another live process holds the run folder; the message names it."""


def lock_path(run_dir: Path) -> Path:
    """The lock file of ``run_dir``: hidden, beside it, under the same name."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


class RunLock:
    """An exclusive lock on one run folder, held until :meth:`release` or the process ends."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir = Path(run_dir)
        self.path = lock_path(run_dir)
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the folder up (the file stays: removing it would let two processes lock two inodes)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: Path, mode: str) -> RunLock:
    """Lock ``run_dir`` for this process (``mode``: what it will do, recorded for the refusal message).
    Never waits: when another live process holds it, raises :class:`RunFolderBusy` naming it."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunFolderBusy(f"{run_dir}: the run folder is in use by another process ({holder}); wait for it to "
                            f"finish or stop it, or give this run another experiment_name or log_output_dir") from None
    except BaseException:
        os.close(fd)
        raise
    _write_holder(fd, mode)
    return RunLock(run_dir, fd)


def _write_holder(fd: int, mode: str) -> None:
    """Record this process in the lock file (only the lock's holder writes it)."""
    command = " ".join(sys.argv)[:300]
    text = f"pid {os.getpid()}, mode {mode}, started {time.strftime('%Y-%m-%d %H:%M:%S')}, command: {command}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8", "replace"), 0)


def _read_holder(fd: int) -> str:
    """What the holder wrote about itself (bounded), or a plain word when it has not written yet."""
    try:
        text = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "a process that has not recorded itself yet"
