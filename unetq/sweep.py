"""Run many experiment folders (a whole paper table) with one command, then build the results table.

    python -m unetq.sweep em gm/a6_0_w0_4 [--only 'a6_*,BNN'] [--jobs N] [-o key=value ...]
                          [--force] [--results results/] [--slurm job.sh [--python PY]]

FOLDERS are experiment folders (holding config.yaml and a BASE script link) or folders of them
(em/, gm/, nih/). Each runs its own script as a separate process, as a user would
(``python em_unet.py -f config.yaml -t UNET -o ...``), sequentially or ``--jobs`` at a time; with
several GPUs each job gets its own (CUDA_VISIBLE_DEVICES, taken from the inherited list under
SLURM); on the CPU each of N parallel jobs gets cores / N threads (OMP_NUM_THREADS, unless set).
A folder whose run is already complete with the same settings (its recorded config.yaml against the
config after ``-o`` overrides) is skipped; with other settings it runs again, and ``--force`` reruns
it anyway (the engine keeps the earlier run as a backup). Two folders that would write to the same
run folder are refused before anything runs. A failing folder does not stop the sweep: failures are
listed at the end and the exit status is 1. SIGTERM or Ctrl-C stops the sweep as it stops a run:
the running children get SIGTERM and are waited for (each marks its run interrupted, resumable), the
queued folders are not started, the sweep lists what finished, what was interrupted and what never
started, and exits with status 130. ``--results DIR`` then builds the results table of every
selected folder (a folder without a run is a "no run" row). ``--slurm FILE`` writes a SLURM
job-array script for the selected folders instead of running them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .config import RUN_ONLY_KEYS, ConfigError, load, parse_overrides, read_yaml
from .paths import BASES, base_of, broken_links
from .runlog import CONFIG_NAME, SUMMARY_NAME
from .sweep_runner import Outcome, report_stop, run_all


@dataclass
class Job:
    """One experiment folder to run."""

    folder: Path
    script: str
    run_dir: Path
    settings: dict | None = None      # the resolved config after overrides; None if it does not validate
    override_args: list = field(default_factory=list)    # this job's own KEY=VALUE, after the sweep's

    @property
    def name(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    @property
    def log(self) -> Path:
        """The child process's output, beside its run folder (inside the git-ignored output folder)."""
        return self.run_dir.parent / f"sweep_{self.run_dir.name}.log"


def find_experiments(paths: Sequence[Path], only: str | None = None) -> list[Path]:
    """Experiment folders under ``paths`` (a folder with a config.yaml and a ``*_unet.py`` script),
    optionally filtered by comma-separated glob patterns on the folder name. A folder given twice
    (``em em/a6_0_w0_4``) is kept once."""
    found, seen = [], set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"{path}: not a folder")
        candidates = [path] if (path / "config.yaml").is_file() else sorted(p for p in path.iterdir() if p.is_dir())
        for c in [n for c in candidates for n in (c, *_nested(c))]:
            if (c / "config.yaml").is_file() and _script(c) and c.resolve() not in seen:
                seen.add(c.resolve())
                found.append(c)
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        found = [f for f in found if any(fnmatch.fnmatch(f.name, p) for p in patterns)]
    return found


def _nested(folder: Path, depth: int = 3) -> list[Path]:
    """Experiment folders inside an experiment folder (the original repository nests them, e.g.
    a4_0_w0_2/a6_0_w0_2), down to ``depth`` levels; run folders have no script and are passed over."""
    if depth == 0 or not (folder / "config.yaml").is_file():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        if (sub / "config.yaml").is_file() and _script(sub):
            found += [sub, *_nested(sub, depth - 1)]
    return found


def _script(folder: Path) -> str | None:
    """The folder's entry script: the one file named like a BASE's script (em_unet.py,
    gmchallenge_unet.py, nih_unet.py; unetq.paths.BASES), None without one. A link that points nowhere
    counts: the sweep then names it instead of running the folder."""
    return next((b.script for b in BASES.values() if os.path.lexists(folder / b.script)), None)


def make_job(folder: Path, overrides: dict, section: str = "UNET") -> Job:
    """Where the folder's run will write (its experiment_name / log_output_dir, after overrides) and
    the settings it will run with, resolved as its script resolves them."""
    script = _script(folder)
    try:
        cfg = resolve(folder, script, overrides, section)
    except ConfigError:     # the run itself will report it (and fail) like any other failing folder
        cfg = None
    if cfg is not None:
        return Job(folder, script, cfg.path("log_output_dir") / cfg.experiment_name, cfg.to_dict())
    try:
        data = read_yaml(folder / "config.yaml")
    except ConfigError:     # e.g. a YAML syntax error: this folder fails when it runs, the others still run
        data = None
    found = data.get(section) if isinstance(data, dict) else None
    keys = dict(found) if isinstance(found, dict) else {}     # a section that is a list or a string: no keys
    keys.update(overrides)
    name = keys.get("experiment_name") or folder.resolve().name
    out = Path(str(keys.get("log_output_dir") or "runs")).expanduser()
    run_dir = (out if out.is_absolute() else folder / out) / str(name)
    return Job(folder, script, run_dir)


def resolve(folder: Path, script: str, overrides: Mapping, section: str = "UNET"):
    """The folder's config after ``overrides``, validated as the run's own script validates it: with
    the recipe and keys of the dataset its script trains (unetq.paths.BASES); raises ConfigError."""
    return load(folder / "config.yaml", section, overrides, dataset=base_of(script).dataset)


def is_complete(job: Job) -> bool:
    """True when the folder's run finished all its epochs (summary.json says so)."""
    summary = _summary(job)
    return summary.get("status") == "complete" and summary.get("mode") in ("normal", "retrain", "resume")


def _summary(job: Job) -> dict:
    try:
        summary = json.loads((job.run_dir / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def changed_settings(job: Job) -> list[str]:
    """What differs between the settings the complete run recorded (its config.yaml) and the ones
    the sweep would run it with, as ``key old -> new`` (keys in :data:`unetq.config.RUN_ONLY_KEYS` aside; a key
    the recorded config lacks, from older code, is not compared)."""
    if job.settings is None:
        return ["the config does not validate now"]
    try:
        data = read_yaml(job.run_dir / CONFIG_NAME)
    except ConfigError:
        return [f"no readable {CONFIG_NAME} in the run folder"]
    recorded = next(iter(data.values()), None) if isinstance(data, dict) and len(data) == 1 else None
    if not isinstance(recorded, dict):
        return [f"{CONFIG_NAME} of the run holds no config section"]
    # a resume may have extended the run: summary.json records the epochs it last trained to
    recorded = {**recorded, "num_epochs": _summary(job).get("num_epochs", recorded.get("num_epochs"))}
    return [f"{key} {recorded[key]!r} -> {value!r}" for key, value in job.settings.items()
            if key not in RUN_ONLY_KEYS and key in recorded and recorded[key] != value]


def check_distinct(jobs: Sequence[Job]) -> None:
    """Refuse (ConfigError) two experiments that would write to the same run folder or sweep log:
    they would overwrite each other's outputs (e.g. ``-o log_output_dir=/abs`` over em/ and gm/)."""
    seen: dict[tuple[str, Path], Job] = {}
    for job in jobs:
        for what, path in (("run folder", job.run_dir), ("sweep log", job.log)):
            other = seen.setdefault((what, path.resolve()), job)
            if other is not job:
                raise ConfigError(f"{other.name} and {job.name} would both write to the {what} {path}; give "
                                  f"them distinct experiment_name or log_output_dir (a relative one, e.g. -o "
                                  f"log_output_dir=runs_w16, stays inside each experiment folder), or sweep "
                                  f"them separately")


def unrunnable(jobs: Sequence[Job]) -> list[tuple[Job, str]]:
    """The jobs whose folder has a broken link, with its one line (they are not started: Python would
    only say "can't open file"); the sweep reports them with the other failures."""
    found = []
    for job in jobs:
        lines = broken_links(job.folder)
        if lines:
            print(f"[sweep] {job.name}: not run: {lines[0]}", flush=True)
            found.append((job, lines[0]))
    return found


def plan(jobs: Sequence[Job], force: bool) -> list[Job]:
    """The jobs to run, saying why each complete run is skipped or run again."""
    todo = []
    for job in jobs:
        if not is_complete(job):
            todo.append(job)
            continue
        changes = [] if force else changed_settings(job)
        if not force and not changes:
            print(f"[sweep] {job.name}: complete, skipped ({job.run_dir})")
            continue
        why = "--force" if force else f"its complete run has other settings ({'; '.join(changes)})"
        print(f"[sweep] {job.name}: {why}: running again (the earlier run is kept as a backup)")
        todo.append(job)
    return todo


def results_folders(jobs: Sequence[Job]) -> list[str]:
    """What ``unetq.results`` reads for these jobs: every experiment folder (it finds the runs inside;
    a folder without one becomes a "no run" row), plus each existing run folder that lies outside
    its experiment folder (an absolute log_output_dir)."""
    folders = [str(j.folder) for j in jobs]
    for j in jobs:
        outside = j.folder.resolve() not in j.run_dir.resolve().parents
        if outside and j.run_dir.is_dir() and str(j.run_dir) not in folders:
            folders.append(str(j.run_dir))
    return folders


def write_results(jobs: Sequence[Job], out: str) -> bool:
    """Build the results table of ``jobs`` in ``out`` (python -m unetq.results); False when it failed."""
    code = subprocess.call([sys.executable, "-m", "unetq.results", *results_folders(jobs), "--out", out])
    if code != 0:
        print(f"[sweep] the results table was not built (python -m unetq.results: exit {code}, see its error "
              f"above)", file=sys.stderr)
    return code == 0


def slurm_script(jobs: list[Job], override_args: list[str], section: str, python: str | None = None) -> str:
    """A SLURM job-array script running one selected folder per array task (one GPU each), with
    ``python`` (default: the interpreter running the sweep, so the same environment)."""
    q = shlex.quote
    folders = "\n".join(f"  {q(str(j.folder.resolve()))}" for j in jobs)
    scripts = "\n".join(f"  {q(j.script)}" for j in jobs)
    extra = (" -o " + " ".join(q(a) for a in override_args)) if override_args else ""
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
{q(python or sys.executable)} "${{SCRIPTS[$SLURM_ARRAY_TASK_ID]}}" -f config.yaml -t {q(section)} -q{extra}
"""


def main(argv: Sequence[str] | None = None) -> int:
    """The sweep command (see the module docstring); returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:     # Ctrl-C while the folders were being read: nothing had started
        print("[sweep] interrupted before any run started", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
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
    parser.add_argument("--python", metavar="PY", help="with --slurm: the Python the array tasks run "
                                                       "(default: the one running the sweep)")
    args = parser.parse_intermixed_args(argv)
    try:
        overrides = parse_overrides(args.override)
        jobs = [make_job(f, overrides, args.type) for f in find_experiments(args.folders, args.only)]
        check_distinct(jobs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: no experiment folders found (a folder with config.yaml and its *_unet.py link)", file=sys.stderr)
        return 2
    if args.slurm:
        Path(args.slurm).write_text(slurm_script(jobs, args.override, args.type, args.python), encoding="utf-8")
        print(f"wrote {args.slurm}: a job array of {len(jobs)} runs (submit with: sbatch {args.slurm})")
        return 0
    todo = plan(jobs, args.force)
    broken = unrunnable(todo)
    skipped = {id(job) for job, _ in broken}
    todo = [job for job in todo if id(job) not in skipped]
    outcome = run_all(todo, args.override, args.jobs, args.type) if todo else Outcome()
    if outcome.signal is not None:
        report_stop(outcome)
        return 130
    failures = broken + outcome.failures
    todo += [job for job, _ in broken]
    table_ok = write_results(jobs, args.results) if args.results else True
    if failures:
        print(f"[sweep] {len(failures)} of {len(todo)} runs failed:", file=sys.stderr)
        for job, reason in failures:
            log = f"  (log: {job.log})" if job.log.exists() else ""
            print(f"  {job.name}: {reason}{log}", file=sys.stderr)
        return 1
    print(f"[sweep] {len(todo)} run(s) done, {len(jobs) - len(todo)} skipped")
    return 0 if table_ok else 1


if __name__ == "__main__":
    sys.exit(main())
