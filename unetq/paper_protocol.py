"""The paper's EM table at the paper's protocol, the seed noise band, and the table, in one command.

    python -m unetq.paper_protocol --out paper_runs [--jobs N] [--em-data PATH] [--gm-data PATH]
                                   [--nih-data PATH] [--rows a,b] [--seeds 0-4] [--noise-band-only]
                                   [--protocol paper|tiny] [--dry-run] [--force] [-o KEY=VALUE ...]

What it runs (each an em/, gm/ or nih/ experiment folder run by its own script, as a user would, through
:mod:`unetq.sweep`; a run already complete with the same settings is skipped, so a stopped command
continues where it stopped):

- the EM table: the rows of :data:`EM_ROWS` at the paper's protocol (real ISBI 2012 sections, base
  width 64, 200 epochs, the EM recipe), into ``OUT/em_w64_e200/<row>``;
- the noise band: full precision and a6.0/w0.4 (pow2) at the reduced protocol (base width 16,
  100 epochs) with seeds 0-4, into ``OUT/em_w16_e100_seeds/seed<k>/<row>``;
- GM and NIH, every shipped row at the paper's protocol on their real data sets, when ``--gm-data``
  / ``--nih-data`` give them (docs/datasets.md), into ``OUT/gm_w64_e200/`` and ``OUT/nih_w64_e200/``;
- then the results table of all of them: ``python -m unetq.results ... --out OUT/table``.

EM reads the real ISBI training set: ``--em-data PATH`` (train-volume.tif + train-labels.tif), else
the developers' sample copy (``data_source: sample``) when it is present. Before anything runs, the
command prints a time estimate, from a measured warm-up (a few training steps of each distinct model
on the device the runs will use), and every command line it will run. On one GPU the runs go side by
side (``--jobs``, default: all of them at once on a GPU, one on the CPU). ``--noise-band-only``
runs just the noise band (the way to run the seeds on a CPU, a few at a time: ``--seeds 0-1``);
``--protocol tiny`` is the same plan at base width 4 for 1-2 epochs on the EM phantom, a check that
the command works end to end (the test suite runs it); ``--dry-run`` prints the plan and the
estimate and runs nothing.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import engine
from .bench import measure
from .config import ConfigError, parse_overrides
from .losses import build_loss
from .models import build_model, model_options
from .paths import PROJECT_ROOT, shared_data_dir
from .sweep import Job, check_distinct, find_experiments, make_job, plan
from .sweep_runner import Outcome, report_stop, run_all, shell_line

EM_ROWS = ("full_precision", "a6_0_w0_4", "a6_0_w0_4_saturating", "a6_0_w0_4_paper", "a8_8_w8_8", "a8_0_w0_8",
           "a6_0_w0_2", "a4_0_w0_2", "BNN", "Ternary")
NOISE_ROWS = ("full_precision", "a6_0_w0_4")
PROTOCOLS = {      # (base_width, num_epochs) of the table and of the noise band
    "paper": {"table": (64, 200), "noise": (16, 100)},
    "tiny": {"table": (4, 1), "noise": (4, 2)},
}
TINY_EM_DATA = ["data_source=phantom", "phantom_images=6", "val_sections=2", "batch_size=2", "val_batch_size=2"]
ISBI_SECTIONS = 30
VALIDATION_STEP_SHARE = 1 / 3          # a forward pass without backward: about a third of a training step
START_S = 15.0                         # starting one run's process (imports, data, model) at the estimate
PREFIX = "[paper_protocol]"


class PlanError(ValueError):
    """Bad command-line input; one line."""


@dataclass
class Part:
    """One group of jobs: the table of a dataset, or one seed of the noise band."""

    name: str
    dataset: str
    rows: Sequence[str]
    args: list                         # KEY=VALUE overrides of every job of the part
    out: Path


def _seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,3`` -> [0, 1, 2, 3, 4] / [0, 2, 3]."""
    try:
        if "-" in text:
            low, high = (int(v) for v in text.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise PlanError(f"--seeds {text!r}: give a range (0-4) or a list (0,2,3) of seeds >= 0")
    return seeds


def _em_data(path: str | None, tiny: bool) -> list[str]:
    """The EM data overrides: the phantom for --protocol tiny, --em-data, else the sample copy."""
    if path:
        if not Path(path).exists():
            raise PlanError(f"--em-data {path}: no such file or folder (the ISBI 2012 training set)")
        return ["data_source=real", f"data_path={Path(path).resolve()}"]
    if tiny:
        return list(TINY_EM_DATA)
    if not (shared_data_dir() / "isbi2012").is_dir():
        raise PlanError("EM needs the real ISBI 2012 training set: give --em-data PATH (train-volume.tif and "
                        "train-labels.tif, see docs/datasets.md); the developers' sample copy is not here")
    return ["data_source=sample"]


def parts(args: argparse.Namespace) -> list[Part]:
    """The plan: which rows of which dataset, with which overrides, into which folder."""
    protocol = PROTOCOLS[args.protocol]
    out = Path(args.out).resolve()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else list(EM_ROWS)
    unknown = [r for r in rows if not (PROJECT_ROOT / "em" / r / "config.yaml").is_file()]
    if unknown:
        raise PlanError(f"--rows: no em/ experiment folder {', '.join(unknown)}; allowed: {', '.join(EM_ROWS)}")
    em = _em_data(args.em_data, args.protocol == "tiny")
    (width, epochs), (nwidth, nepochs) = protocol["table"], protocol["noise"]
    todo = []
    if not args.noise_band_only:
        todo.append(Part("EM table", "em", rows, [*em, f"base_width={width}", f"num_epochs={epochs}"],
                         out / f"em_w{width}_e{epochs}"))
    for seed in _seeds(args.seeds):
        todo.append(Part(f"noise band, seed {seed}", "em", NOISE_ROWS,
                         [*em, f"base_width={nwidth}", f"num_epochs={nepochs}", f"seed={seed}"],
                         out / f"em_w{nwidth}_e{nepochs}_seeds" / f"seed{seed}"))
    for dataset, path in (("gm", args.gm_data), ("nih", args.nih_data)):
        if path and not args.noise_band_only:
            if not Path(path).exists():
                raise PlanError(f"--{dataset}-data {path}: no such file or folder")
            todo.append(Part(f"{dataset.upper()} table", dataset, (), [
                "data_source=real", f"data_path={Path(path).resolve()}", f"base_width={width}",
                f"num_epochs={epochs}"], out / f"{dataset}_w{width}_e{epochs}"))
    return todo


def jobs_of(part: Part, extra: Sequence[str]) -> list[Job]:
    """The sweep jobs of a part: its rows (every shipped row for GM / NIH), with its overrides, then
    the user's ``-o``, writing under the part's folder."""
    args = [*part.args, *extra, f"log_output_dir={part.out}"]
    overrides = parse_overrides(args)
    folders = [f for f in find_experiments([PROJECT_ROOT / part.dataset], ",".join(part.rows) or None)
               if f.name != "demo"]
    if part.rows:                      # in the table's order: on a CPU the first rows run first
        folders.sort(key=lambda f: list(part.rows).index(f.name))
    jobs = []
    for folder in folders:
        job = make_job(folder, overrides)
        job.override_args = args
        jobs.append(job)
    return jobs


# --------------------------------------------------------------------------------------------
# The time estimate
# --------------------------------------------------------------------------------------------

def step_seconds(jobs: Sequence[Job], device: torch.device) -> dict:
    """Seconds of one training step (batch_size images at the dataset's size) of every distinct model
    among ``jobs``, measured on ``device``: one warm-up step, then the median of two."""
    compute = engine.compute_for("off", device)
    seconds = {}
    for job in jobs:
        cfg = job.settings or {}
        key = _model_key(cfg)
        if key is None or key in seconds:
            continue
        torch.manual_seed(0)
        model = build_model(cfg).to(device, memory_format=compute.memory_format).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        size = int(cfg.get("crop_size") or 200)
        x = torch.rand(int(cfg.get("batch_size", 5)), 1, size, size).to(device, memory_format=compute.memory_format)
        y = (torch.rand_like(x) > 0.5).float()
        loss = build_loss(cfg.get("loss", "bce_dice"))
        timing = measure({"step": lambda: engine.train_step(model, x, y, loss, opt, compute)}, device, reps=2, warmup=1)
        seconds[key] = timing["step"]["s"]
    return seconds


def _model_key(cfg: dict) -> tuple | None:
    try:
        return tuple(sorted(model_options(cfg).items())) + (cfg.get("batch_size"), cfg.get("crop_size"))
    except ConfigError:
        return None


def run_seconds(job: Job, step_s: float) -> float | None:
    """Estimated seconds of one EM run: epochs x (training steps + validation passes at a third of a
    step) + the process start; None where the data set's size is not known before loading it (GM, NIH)."""
    cfg = job.settings or {}
    if cfg.get("dataset") != "em":
        return None
    sections = ISBI_SECTIONS if cfg.get("data_source") in ("sample", "real") else int(cfg.get("phantom_images", 30))
    n_val = int(cfg.get("val_sections", 5))
    steps = math.ceil((sections - n_val) / int(cfg.get("batch_size", 5)))
    val = math.ceil(n_val / int(cfg.get("val_batch_size", 4))) * VALIDATION_STEP_SHARE
    return int(cfg.get("num_epochs", 200)) * (steps + val) * step_s + START_S


def estimate(jobs: Sequence[Job], n_parallel: int, device: torch.device) -> str:
    """The estimate printed first: measured step times, then the total."""
    steps = step_seconds(jobs, device)
    times = [run_seconds(j, steps[_model_key(j.settings or {})]) if _model_key(j.settings or {}) in steps else None
             for j in jobs]
    known = [t for t in times if t is not None]
    serial = sum(known)
    lines = [f"{PREFIX} time estimate, from {len(steps)} model(s) measured on {device} (a training step of "
             f"{min(steps.values(), default=0):.3g}-{max(steps.values(), default=0):.3g} s; validation at "
             f"{VALIDATION_STEP_SHARE:.2f} of a step; {START_S:.0f} s to start each run):"]
    if n_parallel > 1 and device.type == "cuda":
        lines.append(f"{PREFIX}   {len(known)} run(s): {_minutes(serial)} one after another; side by side "
                     f"({n_parallel} at a time on one GPU) between {_minutes(serial / n_parallel)} (if they "
                     f"overlap perfectly) and {_minutes(serial)}")
    else:
        lines.append(f"{PREFIX}   {len(known)} run(s): about {_minutes(serial)} ({n_parallel} at a time share "
                     f"the {device.type.upper()}: no faster in total)")
    if len(known) < len(jobs):
        lines.append(f"{PREFIX}   + {len(jobs) - len(known)} GM / NIH run(s), not estimated (their step count "
                     f"depends on the data set's size)")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m unetq.paper_protocol", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of every run and of the table (OUT/table)")
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="runs at a time (default: all at once on a GPU, 1 on the CPU)")
    parser.add_argument("--em-data", help="the ISBI 2012 training set (default: the developers' sample copy)")
    parser.add_argument("--gm-data", help="the Spinal Cord Gray Matter Challenge data set: also run GM")
    parser.add_argument("--nih-data", help="the NIH Pancreas-CT data set: also run NIH")
    parser.add_argument("--rows", help=f"EM table rows, comma-separated (default all: {','.join(EM_ROWS)})")
    parser.add_argument("--seeds", default="0-4", help="noise-band seeds (default 0-4)")
    parser.add_argument("--noise-band-only", action="store_true", help="run only the noise band (e.g. on a CPU)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper",
                        help="paper (default), or tiny: base width 4, 1-2 epochs, the EM phantom (a check)")
    parser.add_argument("-o", "--override", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, after the protocol's (e.g. -o amp=bf16)")
    parser.add_argument("--force", action="store_true", help="rerun runs that are already complete")
    parser.add_argument("--dry-run", action="store_true", help="print the estimate and the commands, run nothing")
    return parser.parse_intermixed_args(argv)


def table_command(plan_parts: Sequence[Part], out: Path, existing_only: bool = True) -> list[str]:
    """The results-table command over the parts' folders (those that exist, unless told otherwise)."""
    folders = sorted({str(p.out.parent if p.name.startswith("noise") else p.out) for p in plan_parts})
    return [sys.executable, "-m", "unetq.results", *[f for f in folders if Path(f).is_dir() or not existing_only],
            "--out", str(out / "table")]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        todo = parts(args)
        jobs = [job for part in todo for job in jobs_of(part, args.override)]
        check_distinct(jobs)
    except (PlanError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = torch.cuda.is_available()
    n_parallel = max(1, args.jobs or (len(jobs) if gpu else 1))
    device = torch.device("cuda") if gpu else torch.device("cpu")
    print(estimate(jobs, n_parallel, device), flush=True)
    for part in todo:
        print(f"{PREFIX} {part.name}: {len(jobs_of(part, args.override))} run(s) into {part.out}")
    for job in jobs:
        print(f"{PREFIX}   {shell_line(job, [])}")
    out = Path(args.out).resolve()
    if args.dry_run:
        print(f"{PREFIX} then: {' '.join(map(shlex.quote, table_command(todo, out, existing_only=False)))}")
        return 0
    pending = plan(jobs, args.force)
    outcome = run_all(pending, [], n_parallel, "UNET") if pending else Outcome()
    if outcome.signal is not None:      # stopped (SIGTERM / Ctrl-C): the sweep's account, no table
        report_stop(outcome)
        return 130
    failures = outcome.failures
    command = table_command(todo, out)
    print(f"{PREFIX} the table: {' '.join(map(shlex.quote, command))}", flush=True)
    table_ok = subprocess.call(command) == 0
    for job, reason in failures:
        print(f"{PREFIX} FAILED {job.name} ({job.run_dir}): {reason} (log: {job.log})", file=sys.stderr)
    print(f"{PREFIX} {len(pending) - len(failures)} of {len(pending)} run(s) done, {len(jobs) - len(pending)} "
          f"already complete; table in {out / 'table'}" + ("" if table_ok else " NOT built (see above)"))
    return 1 if failures or not table_ok else 0


if __name__ == "__main__":
    sys.exit(main())
