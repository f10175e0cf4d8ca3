"""Helpers of the fault-injection tests (tests/test_faults*.py): tiny EM experiment folders and real
child processes that get a signal at a chosen moment.

The moment is chosen with a Python audit hook in the child: ``UNETQ_TEST_SIGNALS="SIGTERM=metrics.csv"``
sends SIGTERM to the child itself when it next opens for writing a path whose name contains
``metrics.csv`` (several ``SIGNAL=pattern`` triggers, comma-separated, fire one after the other).
The code under test is not patched: the hook only watches the ``open`` audit event.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from unetq.newexp import create
from unetq.paths import PROJECT_ROOT

TINY = {"num_epochs": 2, "base_width": 4, "phantom_images": 4, "val_sections": 2, "overlay_every": 0,
        "batch_size": 2, "val_batch_size": 2, "lr_schedule": "constant"}

CHILD = r"""
import os, runpy, signal, sys
triggers = [t.split("=", 1) for t in os.environ.get("UNETQ_TEST_SIGNALS", "").split(",") if t]

def hook(event, args):
    if event != "open" or not triggers:
        return
    path, mode, flags = args
    writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
               else isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR)))
    if writing and triggers[0][1] in str(path):
        name = triggers.pop(0)[0]
        os.kill(os.getpid(), getattr(signal, name))

sys.addaudithook(hook)
script = os.path.realpath("em_unet.py")
sys.path.insert(0, os.path.dirname(script))
sys.argv = ["em_unet.py", *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
"""


def experiment(root: Path, name: str = "x", **keys) -> Path:
    """A tiny EM experiment folder ``root/em/name`` (config.yaml + script links)."""
    return create(Path(root) / "em" / name, PROJECT_ROOT / "EM_BASE", {**TINY, **keys})


def child_env(**extra) -> dict:
    """The environment of a child run: this checkout's unetq, one thread (the test machine is shared)."""
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **extra}


def start(folder: Path, *overrides: str, signals: str = "", section: str = "UNET") -> subprocess.Popen:
    """Start the folder's run as a real process (``python em_unet.py -f config.yaml -q -o ...``)."""
    args = ["-f", "config.yaml", "-t", section, "-q"] + (["-o", *overrides] if overrides else [])
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=folder, env=child_env(UNETQ_TEST_SIGNALS=signals),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Wait for ``proc``; (exit status, stderr)."""
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def run(folder: Path, *overrides: str, signals: str = "", timeout: float = 600) -> tuple[int, str]:
    """Run the folder's run to its end; (exit status, stderr)."""
    return finish(start(folder, *overrides, signals=signals), timeout)


def wait_for(predicate, timeout: float = 300, what: str = "") -> None:
    """Poll ``predicate`` until true (or fail after ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def summary(run_dir: Path) -> dict:
    """summary.json, parsed strictly (JSON has no NaN)."""
    def refuse(name):
        raise ValueError(f"summary.json holds {name}, which is not JSON")
    return json.loads((run_dir / "summary.json").read_text(), parse_constant=refuse)


def one_line(err: str) -> str:
    """The single error line of a refused or stopped run (asserting there is exactly one)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (a child this test started) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
