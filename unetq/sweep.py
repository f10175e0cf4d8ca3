"""Run many experiment folders (a whole paper table) with one command, then build the results table.

    python -m unetq.sweep em gm/a6_0_w0_4 [--only 'a6_*,BNN'] [--jobs N] [-o key=value ...]
                          [--force] [--results results/] [--slurm job.sh]

FOLDERS are experiment folders (holding config.yaml and a BASE script link) or folders of them
(em/, gm/, nih/). Each runs its own script as a separate process, as a user would
(``python em_unet.py -f config.yaml -t UNET -o ...``), sequentially or ``--jobs`` at a time; with
several GPUs each job gets its own (CUDA_VISIBLE_DEVICES). A folder whose run is already complete
is skipped (``--force`` reruns it; an earlier run is then kept as a backup by the engine). A failing
folder does not stop the sweep: failures are listed at the end and the exit status is 1.
``--slurm FILE`` writes a SLURM job-array script for the selected folders instead of running them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import ConfigError, parse_overrides, read_yaml
from .runlog import SUMMARY_NAME

@dataclass
class Job:
    """One experiment folder to run."""

    folder: Path
    script: str
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    @property
    def log(self) -> Path:
        """The child process's output, beside its run folder (inside the git-ignored output folder)."""
        return self.run_dir.parent / f"sweep_{self.run_dir.name}.log"


def find_experiments(paths: Sequence[Path], only: str | None = None) -> list[Path]:
    """Experiment folders under ``paths`` (a folder with a config.yaml and a ``*_unet.py`` script),
    optionally filtered by comma-separated glob patterns on the folder name."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"{path}: not a folder")
        candidates = [path] if (path / "config.yaml").is_file() else sorted(p for p in path.iterdir() if p.is_dir())
        found += [c for c in candidates if (c / "config.yaml").is_file() and _script(c)]
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        found = [f for f in found if any(fnmatch.fnmatch(f.name, p) for p in patterns)]
    return found


def _script(folder: Path) -> str | None:
    scripts = sorted(p.name for p in folder.glob("*.py") if p.name != "datasets.py")
    return scripts[0] if scripts else None


def make_job(folder: Path, overrides: dict, section: str = "UNET") -> Job:
    """Where the folder's run will write (its experiment_name / log_output_dir, after overrides)."""
    data = read_yaml(folder / "config.yaml")
    keys = dict(data.get(section) or {}) if isinstance(data, dict) else {}
    keys.update(overrides)
    name = keys.get("experiment_name") or folder.resolve().name
    out = Path(str(keys.get("log_output_dir") or "runs")).expanduser()
    run_dir = (out if out.is_absolute() else folder / out) / str(name)
    return Job(folder, _script(folder), run_dir)


def is_complete(job: Job) -> bool:
    """True when the folder's run finished all its epochs (summary.json says so)."""
    try:
        summary = json.loads((job.run_dir / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return False
    return summary.get("status") == "complete" and summary.get("mode") in ("normal", "retrain", "resume")


def run_job(job: Job, override_args: list[str], gpus: queue.Queue | None, section: str) -> tuple[Job, int, float]:
    """Run one experiment as a child process (on a GPU of its own taken from ``gpus``, if given);
    its output goes to :attr:`Job.log`."""
    env = dict(os.environ)
    gpu = gpus.get() if gpus is not None else None
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    cmd = [sys.executable, job.script, "-f", "config.yaml", "-t", section, "-q"]
    if override_args:
        cmd += ["-o", *override_args]
    started = time.perf_counter()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    try:
        return job, _call(cmd, job, env), time.perf_counter() - started
    finally:
        if gpu is not None:
            gpus.put(gpu)


def _call(cmd: list[str], job: Job, env: dict) -> int:
    with open(job.log, "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        return subprocess.call(cmd, cwd=job.folder, stdout=log, stderr=subprocess.STDOUT, env=env)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:       # torch without CUDA support
        return 0


def run_all(jobs: list[Job], override_args: list[str], n_parallel: int, section: str) -> list[tuple[Job, str]]:
    """Run ``jobs`` n at a time (one GPU each when several are present); returns the failures."""
    n_parallel = max(1, n_parallel)
    gpus = None
    if _gpu_count() > 1:
        gpus = queue.Queue()
        for index in range(_gpu_count()):
            gpus.put(index)
        n_parallel = min(n_parallel, _gpu_count())
    failures = []
    with ThreadPoolExecutor(max_workers=n_parallel) as pool:
        futures = [pool.submit(run_job, job, override_args, gpus, section) for job in jobs]
        for future in futures:
            job, code, seconds = future.result()
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"[sweep] {job.name}: {status} in {seconds:.0f} s", flush=True)
            if code != 0:
                failures.append((job, _last_line(job.log)))
    return failures


def slurm_script(jobs: list[Job], override_args: list[str], section: str, python: str = "python") -> str:
    """A SLURM job-array script running one selected folder per array task (one GPU each)."""
    folders = "\n".join(f"  {str(j.folder.resolve())!r}" for j in jobs)
    scripts = "\n".join(f"  {j.script!r}" for j in jobs)
    extra = (" -o " + " ".join(repr(a) for a in override_args)) if override_args else ""
    return f"""#!/bin/bash
# Written by `python -m unetq.sweep --slurm`: one array task per experiment folder.
#SBATCH --job-name=unetq-sweep
#SBATCH --array=0-{len(jobs) - 1}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --output=unetq-sweep-%A_%a.out
set -euo pipefail
FOLDERS=(
{folders}
)
SCRIPTS=(
{scripts}
)
cd "${{FOLDERS[$SLURM_ARRAY_TASK_ID]}}"
{python} "${{SCRIPTS[$SLURM_ARRAY_TASK_ID]}}" -f config.yaml -t {section} -q{extra}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="experiment folders, or folders of them (em/, gm/, nih/)")
    parser.add_argument("--only", help="comma-separated glob patterns on folder names, e.g. 'a6_*,BNN'")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("-o", "--override", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides passed to every run, e.g. -o base_width=16 num_epochs=50")
    parser.add_argument("-t", "--type", default="UNET", help="YAML section (default UNET)")
    parser.add_argument("--force", action="store_true", help="rerun folders whose run is complete")
    parser.add_argument("--results", metavar="DIR", help="write the results table here afterwards")
    parser.add_argument("--slurm", metavar="FILE", help="write a SLURM job-array script instead of running")
    args = parser.parse_intermixed_args(argv)
    try:
        overrides = parse_overrides(args.override)
        jobs = [make_job(f, overrides, args.type) for f in find_experiments(args.folders, args.only)]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: no experiment folders found (a folder with config.yaml and its *_unet.py link)", file=sys.stderr)
        return 2
    if args.slurm:
        Path(args.slurm).write_text(slurm_script(jobs, args.override, args.type), encoding="utf-8")
        print(f"wrote {args.slurm}: a job array of {len(jobs)} runs (submit with: sbatch {args.slurm})")
        return 0
    todo = [j for j in jobs if args.force or not is_complete(j)]
    for job in jobs:
        if job not in todo:
            print(f"[sweep] {job.name}: complete, skipped ({job.run_dir})")
    failures = run_all(todo, args.override, args.jobs, args.type)
    if args.results:
        subprocess.call([sys.executable, "-m", "unetq.results", *[str(j.run_dir) for j in jobs], "--out", args.results])
    if failures:
        print(f"[sweep] {len(failures)} of {len(todo)} runs failed:", file=sys.stderr)
        for job, reason in failures:
            print(f"  {job.name}: {reason}  (log: {job.log})", file=sys.stderr)
        return 1
    print(f"[sweep] {len(todo)} run(s) done, {len(jobs) - len(todo)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
