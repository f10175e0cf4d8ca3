"""How a sweep runs its jobs (unetq/sweep.py decides which): each as a child process in its experiment
folder, n at a time, one GPU each when several are present or a share of the CPU cores each, and a
stop (SIGTERM / Ctrl-C) passed on to the running children so that every run stays resumable.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

if TYPE_CHECKING:                       # sweep.py imports this module: the type only, to avoid a cycle
    from .sweep import Job


def gpu_ids(count: int, inherited: str | None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value for each GPU slot: slot k is the k-th GPU this process sees,
    i.e. the k-th entry of an inherited CUDA_VISIBLE_DEVICES (SLURM gives e.g. "4,5": slot 0 is
    GPU 4, not the machine's GPU 0), or plain k when none is set."""
    if not inherited or not inherited.strip():
        return [str(k) for k in range(count)]
    visible = [v.strip() for v in inherited.split(",") if v.strip()]
    return visible[:count]


def cpu_threads(cores: int, n_parallel: int, env: Mapping[str, str]) -> str | None:
    """OMP_NUM_THREADS for each of ``n_parallel`` CPU runs sharing ``cores``: its share, so that the
    runs do not each start one thread per core and slow each other down. None when one run goes
    at a time or the user chose OMP_NUM_THREADS."""
    if n_parallel <= 1 or env.get("OMP_NUM_THREADS"):
        return None
    return str(max(1, cores // n_parallel))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))      # the cores this job may use (SLURM, taskset)
    except AttributeError:
        return os.cpu_count() or 1


class Stopper:
    """The sweep's stop: the first SIGTERM or SIGINT is recorded and passed on, as SIGTERM, to every
    child started so far (a run stops on it as on Ctrl-C: last.pt stays resumable); no child starts
    afterwards. A child started while the signal arrives is registered under the same lock that
    :meth:`forward` takes, so none is missed."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._forwarded = False
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()

    @property
    def stopping(self) -> bool:
        return self.signal is not None

    def start(self, cmd: list[str], **popen) -> subprocess.Popen | None:
        """Start a child unless the sweep is stopping (then None: the job never starts)."""
        with self._lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(cmd, **popen)
            self._running.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def forward(self) -> None:
        """Once stopping, send SIGTERM to the running children (once)."""
        if not self.stopping or self._forwarded:
            return
        with self._lock:
            self._forwarded = True
            for proc in self._running:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    def handler(self, signum, frame) -> None:
        """The signal handler of the sweep's main thread (no exception: the threads finish cleanly)."""
        name = signal.Signals(signum).name
        if self.stopping:
            print(f"[sweep] {name}: already stopping, waiting for the running runs to stop", file=sys.stderr,
                  flush=True)
            return
        self.signal = signum
        print(f"[sweep] {name}: stopping: the running runs get SIGTERM, nothing else starts", file=sys.stderr,
              flush=True)

    @contextlib.contextmanager
    def handling_signals(self):
        """Install :meth:`handler` for SIGTERM and SIGINT for the duration (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def run_job(job: Job, override_args: list[str], gpus: queue.Queue | None, section: str,
            extra_env: Mapping[str, str] | None = None,
            stopper: Stopper | None = None) -> tuple[Job, int | None, float]:
    """Run one experiment as a child process (on a GPU of its own taken from ``gpus``, if given,
    with ``extra_env`` added to its environment); its output goes to :attr:`Job.log`. The exit
    status is None when the sweep was stopped before the job started."""
    stopper = stopper or Stopper()
    if stopper.stopping:
        return job, None, 0.0
    env = {**os.environ, **(extra_env or {})}
    gpu = gpus.get() if gpus is not None else None
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    cmd = job_command(job, override_args, section)
    started = time.perf_counter()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    try:
        return job, _call(cmd, job, env, stopper), time.perf_counter() - started
    finally:
        if gpu is not None:
            gpus.put(gpu)


def job_command(job: Job, override_args: Sequence[str], section: str = "UNET") -> list[str]:
    """The command a job runs in its experiment folder: its script, as a user would run it, with the
    sweep's overrides and then the job's own."""
    cmd = [sys.executable, job.script, "-f", "config.yaml", "-t", section, "-q"]
    args = [*override_args, *job.override_args]
    return cmd + ["-o", *args] if args else cmd


def shell_line(job: Job, override_args: Sequence[str], section: str = "UNET") -> str:
    """:func:`job_command` as one line to paste into a shell (``cd FOLDER && python ...``)."""
    command = " ".join(map(shlex.quote, job_command(job, override_args, section)))
    return f"cd {shlex.quote(str(job.folder))} && {command}"


def _call(cmd: list[str], job: Job, env: dict, stopper: Stopper) -> int | None:
    """Run ``cmd`` in the job's folder, its output in :attr:`Job.log`; None if the sweep is stopping."""
    with open(job.log, "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = stopper.start(cmd, cwd=job.folder, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc is None:
            return None
        try:
            return proc.wait()
        finally:
            stopper.done(proc)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def _gpu_count() -> int:
    try:
        return torch.cuda.device_count()
    except Exception:       # torch without CUDA support
        return 0


@dataclass
class Outcome:
    """What :func:`run_all` did: failed jobs with their last line, and, when the sweep was stopped,
    which jobs finished, were interrupted or never started."""

    failures: list = field(default_factory=list)
    finished: list = field(default_factory=list)
    interrupted: list = field(default_factory=list)
    not_started: list = field(default_factory=list)
    signal: int | None = None


def run_all(jobs: list[Job], override_args: list[str], n_parallel: int, section: str) -> Outcome:
    """Run ``jobs`` n at a time (one GPU each when several are present), until done or stopped by
    SIGTERM / SIGINT (see :class:`Stopper`)."""
    n_parallel = max(1, min(n_parallel, len(jobs)))
    gpus, extra_env = None, {}
    count = _gpu_count()
    if count > 1:
        gpus = queue.Queue()
        for gpu in gpu_ids(count, os.environ.get("CUDA_VISIBLE_DEVICES")):
            gpus.put(gpu)
        n_parallel = min(n_parallel, gpus.qsize())
    elif count == 0:
        threads = cpu_threads(_cores(), n_parallel, os.environ)
        if threads:
            extra_env["OMP_NUM_THREADS"] = threads
            print(f"[sweep] {n_parallel} runs at a time on the CPU: {threads} thread(s) each "
                  f"(OMP_NUM_THREADS; set it to choose)", flush=True)
    outcome = Outcome()
    with Stopper().handling_signals() as stopper, ThreadPoolExecutor(max_workers=n_parallel) as pool:
        futures = [pool.submit(run_job, job, override_args, gpus, section, extra_env, stopper) for job in jobs]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2)
            stopper.forward()
        for future in futures:
            _record(outcome, *future.result(), stopper.stopping)
        outcome.signal = stopper.signal
    return outcome


def _record(outcome: Outcome, job: Job, code: int | None, seconds: float, stopping: bool) -> None:
    """File one job's exit status under finished / interrupted / never started / failed."""
    if code is None:
        outcome.not_started.append(job)
        return
    if stopping and (code == 130 or code < 0):     # stopped by the forwarded SIGTERM (or before its handler)
        print(f"[sweep] {job.name}: interrupted after {seconds:.0f} s", flush=True)
        outcome.interrupted.append(job)
        return
    print(f"[sweep] {job.name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s", flush=True)
    if code == 0:
        outcome.finished.append(job)
    else:
        outcome.failures.append((job, _last_line(job.log)))


def _names(jobs: Sequence[Job]) -> str:
    return ", ".join(j.name for j in jobs) or "none"


def report_stop(outcome: Outcome) -> None:
    """The stopped sweep's account: what finished, what was interrupted (resumable) and what never ran."""
    print(f"[sweep] stopped by {signal.Signals(outcome.signal).name}:", file=sys.stderr)
    print(f"  finished: {_names(outcome.finished)}", file=sys.stderr)
    print(f"  interrupted: {_names(outcome.interrupted)}" + (" (each can go on with -o operation_mode=resume)"
                                                           if outcome.interrupted else ""), file=sys.stderr)
    print(f"  never started: {_names(outcome.not_started)}", file=sys.stderr)
    if outcome.failures:
        print(f"  failed: {', '.join(f'{j.name} ({why})' for j, why in outcome.failures)}", file=sys.stderr)
