"""The command line every BASE training script shares:

    python em_unet.py -f config.yaml -t UNET [-o key=value ...]

It validates everything (config, checkpoint, data) before writing anything, then runs the mode the
config asks for. Errors the user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import shutil
import signal
import threading
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Mapping, Sequence

import torch
import yaml

from . import __version__, checkpoint, distributed, engine, original, runlock, weights
from .checkpoint import CheckpointError
from .config import RUN_ONLY_KEYS, Config, ConfigError, load, parse_overrides, shown
from .data import DataError
from .engine import Run, TrainingError
from .models import build_model, model_options
from .paths import broken_links, code_version
from .runlog import (CONFIG_NAME, METRICS_NAME, RunLog, csv_text, fresh_folder, read_metrics, read_summary,
                     remove_stale_temporaries, stale_temporaries, sub_folder, write_text_atomic)

USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError)


def parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    """The command line of every BASE script: -f config.yaml, -t section, -o key=value ..., -q."""
    parser = argparse.ArgumentParser(prog=prog, description="Train / evaluate / visualize a quantized U-Net.")
    parser.add_argument("-f", "--file", required=True, help="the experiment's config.yaml")
    parser.add_argument("-t", "--type", default="UNET", help="section of the YAML to use (default UNET)")
    parser.add_argument("-o", "--override", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. -o num_epochs=2 base_width=16")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the log to the terminal")
    return parser.parse_args(argv)


def run_script(dataset: str, base: ModuleType, recipe: Mapping, argv: Sequence[str] | None = None) -> int:
    """Entry point of a BASE script: ``dataset`` (em | gm | nih), its ``datasets`` module (FIELDS,
    build_datasets) and its recipe (defaults for the common keys). Returns the exit status."""
    args = parse_args(argv, prog=Path(sys.argv[0]).name)
    try:
        overrides = parse_overrides(args.override)
        cfg = load(args.file, args.type, overrides, extra_fields=getattr(base, "FIELDS", ()),
                   recipe=recipe, dataset=dataset)
        with interrupts_from_signals():
            return _run(cfg, base, echo=not args.quiet, asked=frozenset(str(k).lower() for k in overrides))
    except KeyboardInterrupt:   # before the run folder was claimed; later ones are handled in _run_in
        print("error: interrupted while the run was starting: nothing was trained, and any last.pt is unchanged",
              file=sys.stderr)
        return 130
    except (*USER_ERRORS, OSError) as err:      # OSError: e.g. a data file that exists but cannot be read
        print(f"error: {_reason(err)}", file=sys.stderr)
        return 2


def _run(cfg: Config, base: ModuleType, echo: bool, asked: frozenset = frozenset()) -> int:
    """Run ``cfg`` (``asked``: the keys given with -o, lower case)."""
    device, notice = engine.select_device(cfg)
    _check_sync_bn(cfg, device)
    world = distributed.setup(use_cuda=device.type == "cuda")
    try:
        code = _run_in(cfg, base, echo, device, notice, world, asked)
        if code == 0:
            # rank 0 is still writing its figures when the others finish: leaving the group before
            # every rank is done can take a busy peer's connections down with it
            distributed.barrier(world)
        return code
    finally:
        distributed.teardown(world)


def _run_in(cfg: Config, base: ModuleType, echo: bool, device: torch.device, notice: str | None,
            world: distributed.World, asked: frozenset = frozenset()) -> int:
    if world.active:
        _check_world(cfg, world)
        if device.type == "cuda":
            device = torch.device(f"cuda:{world.local_rank}")     # one GPU per process
    engine.seed_everything(cfg.seed)
    run_dir = cfg.path("log_output_dir") / cfg.experiment_name
    check_run_dir(cfg, run_dir, Path(base.__file__).parent)
    mode = cfg.operation_mode
    notes = ([notice] if notice else []) + _folder_notices(cfg) + cfg.notices
    ckpt = _checkpoint_for(cfg, run_dir)
    if mode == "resume":
        cfg, note = resume_epochs(cfg, ckpt, asked)
        notes += [note] if note else []
    model = build_model(cfg)
    source = None
    if ckpt is not None:
        path = _ckpt_path(cfg, run_dir)
        state = _own_names(ckpt["model"], model, cfg, path, notes)
        notes += checkpoint.load_into(model, state, path, ckpt["config"], cfg.to_dict())
        notes += _dataset_note(ckpt["config"], cfg, path)
        notes.append(f"checkpoint: {path.resolve()} (epoch {ckpt.get('epoch', '?')}, best dice "
                     f"{ckpt.get('best_dice', '?')} at epoch {ckpt.get('best_epoch', '?')})")
        source = (path, weights.sha256(path))
        if mode == "resume":    # everything a resume reads is checked before anything is written
            _check_optimizer_and_rng(model, ckpt, path)
            kept_metric_rows(run_dir / METRICS_NAME, int(ckpt["epoch"]))
    best_copy = _best_copy(cfg, ckpt)
    compute = engine.compute_for(cfg.amp, device)
    model.to(device, memory_format=compute.memory_format)
    data = None if mode == "visualize" else base.build_datasets(cfg)
    folder = failure = lock = moved = None
    if world.is_main:
        try:
            if best_copy is not None:
                weights.check_target(best_copy)
            earlier = _backups(run_dir)
            lock, folder = _claim(cfg, run_dir, _space_needed(model, mode), notes)
            moved = _backups(run_dir) - earlier
            moved = (run_dir, moved.pop()) if moved else None
            kept = weights.keep_existing(best_copy) if best_copy is not None and mode == "normal" else None
            notes += [kept] if kept else []
        except Exception as err:
            if not world.active:
                raise
            failure = err
    try:
        # The other ranks wait here for rank 0's folder; when rank 0 could not make it they get its reason
        # instead and stop with the same line (rather than a traceback from a broken broadcast).
        folder, reason = distributed.share((folder, _reason(failure)), world)
        if failure is not None:
            raise failure
        if reason is not None:
            raise ConfigError(reason)
        weights_from = source and weights.source_record(*source, moved)
        return _run_claimed(cfg, model, device, data, folder, compute, world, echo, ckpt, notes,
                            best_copy, weights_from)
    finally:
        if lock is not None:
            lock.release()


def _claim(cfg: Config, run_dir: Path, needed: int, notes: list) -> tuple[runlock.RunLock, Path]:
    """Check the disk, lock the run folder for this process (refused while another one holds it), clear
    what a killed write left there, and make the output folder. Everything was validated before: this
    is where a run starts writing. Returns (lock, output folder); the lock is released on failure."""
    leftovers = stale_temporaries(run_dir)
    check_writable(run_dir, needed_bytes=needed, reclaimable=sum(p.stat().st_size for p in leftovers))
    lock = runlock.acquire(run_dir, cfg.operation_mode)
    try:
        removed = remove_stale_temporaries(run_dir)
        folder = _output_folder(cfg, run_dir, notes)
    except BaseException:
        lock.release()
        raise
    if removed:
        notes.append(f"notice: removed {len(removed)} temporary file(s) a stopped write had left in {run_dir} "
                     f"(e.g. {removed[0].name})")
    return lock, folder


def _run_claimed(cfg: Config, model, device, data, folder: Path, compute, world, echo: bool, ckpt: dict | None,
                 notes: list, best_copy: Path | None = None, weights_from: dict | None = None) -> int:
    """The run proper, in the folder this process holds: header, mode, summary. ``best_copy``: where the
    best model also goes (trained_model); ``weights_from``: the source checkpoint's path and hash."""
    mode = cfg.operation_mode
    log = RunLog(folder, echo=echo and world.is_main, enabled=world.is_main)
    if mode == "resume":
        # a resume continues the run's record: its summary keeps what the run reached so far
        log.summary.update(read_summary(folder), epochs_done=int(ckpt["epoch"]))
    net = engine.wrap_for_training(model, world, device, cfg.sync_bn) if mode in TRAINING else model
    run = Run(cfg, model, device, data, log, compute, world, net, best_copy=best_copy)
    try:
        _header(run, notes)
        _record_weights(run, weights_from, best_copy)
        result = _dispatch(run, ckpt)
    except (TrainingError, KeyboardInterrupt, OSError) as err:
        return _stopped(run, err)
    try:
        log.update_summary(status="complete", finished=time.strftime("%Y-%m-%d %H:%M:%S"), **result)
        log.line(f"done: outputs in {folder}")
    except (KeyboardInterrupt, OSError) as err:
        return _stopped(run, err)
    return 0


TRAINING = ("normal", "retrain", "resume")


def _check_world(cfg: Config, world: distributed.World) -> None:
    """Settings that must fit the number of processes torchrun started."""
    if cfg.batch_size % world.size:
        raise ConfigError(f"{cfg.source}: key 'batch_size': {cfg.batch_size} cannot be shared evenly by "
                          f"{world.size} processes (batch_size is the global batch); use a multiple of {world.size}")


def _check_sync_bn(cfg: Config, device: torch.device) -> None:
    """SyncBatchNorm computes on CUDA only: refuse it when this run's device is not CUDA (device: cpu,
    or no usable GPU), whatever the machine has and however many processes run, before any starts
    (it would otherwise fail at the first forward pass)."""
    if cfg.sync_bn and device.type != "cuda":
        why = "device: cpu" if cfg.device == "cpu" else f"device: {cfg.device}, and no usable CUDA GPU was found"
        raise ConfigError(f"{cfg.source}: key 'sync_bn': SyncBatchNorm needs a CUDA device, but this run's "
                          f"device is {device} ({why}); set sync_bn: false to train on the CPU")


def _reason(err: BaseException | None) -> str | None:
    """The line :func:`run_script` prints for ``err`` (without "error: "); also sent to the ranks
    that did not see it. None without an error."""
    if err is None:
        return None
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, OSError):
        return f"{err.filename or ''}: {err.strerror or err}"
    return f"rank 0 stopped before training: {type(err).__name__}: {err}"


def _stopped(run: Run, err: BaseException) -> int:
    """Record why a run stopped early and say how to go on; the last good checkpoint stays."""
    log, mode = run.log, run.cfg.operation_mode
    interrupted = isinstance(err, KeyboardInterrupt)
    if interrupted:
        reason = f"interrupted ({err})" if str(err) else "interrupted by the user (Ctrl-C)"
    elif isinstance(err, OSError):
        reason = f"cannot write {err.filename or 'an output file'}: {err.strerror or err}"
    else:
        reason = str(err)
    done = _epoch_in_last(log.folder) or log.summary.get("epochs_done")
    how = ""
    if mode in TRAINING:
        how = (f"; last.pt holds epoch {done}: continue with operation_mode: resume" if done
               else "; no epoch was completed, so there is nothing to resume")
    try:
        log.update_summary(status="interrupted" if interrupted else "failed", error=reason,
                           finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        log.line(f"stopped: {reason}. Outputs so far are in {log.folder}{how}")
    except OSError:   # the disk may be the problem: the message still reaches the terminal
        pass
    if run.world.is_main:
        print(f"error: {reason}{how}", file=sys.stderr)
    return 130 if interrupted else 2


def _epoch_in_last(folder: Path) -> int | None:
    """The epoch the run's last.pt holds (None without one): a stop between an epoch's last.pt and its
    summary.json update must still name that epoch. Memory-mapped: the weights are not read."""
    path = Path(folder) / "last.pt"
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:      # absent, or unreadable: the summary's count is used instead
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (e.g. from a job scheduler)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def interrupts_from_signals():
    """For the duration, the first SIGTERM or SIGINT raises :class:`Interrupted` in the main thread, so
    that a scheduler's stop is handled like Ctrl-C: the epoch in progress is abandoned and last.pt
    stays resumable. Later signals are ignored: a second Ctrl-C (or a scheduler's repeated SIGTERM)
    must not break the shutdown that records the stop (summary, message, exit status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = []

    def handler(signum, frame):
        if seen:
            return
        seen.append(signum)
        raise Interrupted("" if signum == signal.SIGINT else f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _space_needed(model: torch.nn.Module, mode: str) -> int:
    """A generous estimate of the disk a run needs: best + last checkpoints (weights, and Adam's two
    moments in last.pt) plus logs and figures."""
    params = sum(p.numel() for p in model.parameters())
    checkpoints = 0 if mode in ("inference", "visualize") else params * 4 * 4
    return checkpoints + 50 * 2**20


def check_writable(folder: Path, needed_bytes: int = 0, reclaimable: int = 0) -> None:
    """Fail early, before training, when the output folder cannot be created or written, or the
    disk lacks room for the run's checkpoints (``reclaimable``: bytes of leftover temporary files the
    run removes before it writes)."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"{folder}: cannot create the output folder ({existing} is a file); "
                              f"set log_output_dir to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"{folder}: cannot write outputs here ({existing} is not writable); "
                              f"set log_output_dir to a writable folder")
    free = shutil.disk_usage(existing).free + reclaimable
    if free < needed_bytes:
        raise CheckpointError(f"{folder}: only {free / 2**20:.0f} MB free on the disk; this run needs about "
                              f"{needed_bytes / 2**20:.0f} MB (checkpoints, logs, figures)")


def _ckpt_path(cfg: Config, run_dir: Path) -> Path:
    """Resume always continues the run's own ``last.pt``: a retrain run keeps ``trained_model`` set to
    its source, and resuming from that would mix two runs in one folder."""
    if cfg.operation_mode == "resume":
        return run_dir / "last.pt"
    return cfg.path("trained_model")


def _checkpoint_for(cfg: Config, run_dir: Path) -> dict | None:
    """The checkpoint a mode starts from (None for normal)."""
    if cfg.operation_mode == "normal":
        return None
    path = _ckpt_path(cfg, run_dir)
    if cfg.operation_mode == "resume" and not path.is_file():
        raise CheckpointError(f"{path}: no last.pt to resume from (resume continues the run "
                              f"{cfg.experiment_name!r} in {run_dir.parent}; check experiment_name and log_output_dir)")
    ckpt = checkpoint.load(path)
    if cfg.operation_mode == "resume":
        _check_resumable(ckpt, path, cfg)
    return ckpt


# Keys a resumed run may change: where and how fast it runs (RUN_ONLY_KEYS), and how far it goes.
RESUME_MAY_CHANGE = RUN_ONLY_KEYS | {"trained_model", "num_epochs"}


def _check_resumable(ckpt: dict, path: Path, cfg: Config) -> None:
    """A last.pt from a file on disk is not trusted: its bookkeeping must have the right types, and the
    config must be the one it was trained with (anything else would not continue the same run)."""
    kinds = {"epoch": int, "best_epoch": int, "best_dice": (int, float), "optimizer": dict, "rng": dict}
    for key, kind in kinds.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise CheckpointError(f"{path}: not a resumable checkpoint (its {key!r} is missing or not a "
                                  f"{getattr(kind, '__name__', 'number')}); resume from a last.pt written by a run")
    _check_bookkeeping(ckpt, path)
    old, new = ckpt.get("config") or {}, cfg.to_dict()
    differs = [f"{k}: run {old.get(k)!r}, now {new.get(k)!r}" for k in new
               if k not in RESUME_MAY_CHANGE and k in old and old[k] != new[k]]
    if differs:
        raise CheckpointError(f"{path}: resume must continue the run as it was configured, but {'; '.join(differs[:3])}"
                              f"{f' (+{len(differs) - 3} more)' if len(differs) > 3 else ''}; undo the change, or start "
                              f"a new run with operation_mode: retrain")


def _check_bookkeeping(ckpt: dict, path: Path) -> None:
    """Values a run cannot have written: epochs outside 1..num_epochs of the run, a best epoch after
    the last one, a best Dice that is not a number from 0 to 100."""
    epoch, best_epoch, best_dice = ckpt["epoch"], ckpt["best_epoch"], ckpt["best_dice"]
    run_epochs = (ckpt.get("config") or {}).get("num_epochs")
    top = run_epochs if isinstance(run_epochs, int) and not isinstance(run_epochs, bool) and run_epochs > 0 else 100000
    problems = []
    if not 1 <= epoch <= top:
        problems.append(f"epoch {shown(epoch)} is outside 1..{top} (the run's num_epochs)")
    if not 0 <= best_epoch <= epoch:
        problems.append(f"best_epoch {shown(best_epoch)} is outside 0..{shown(epoch)} (its epoch)")
    never_improved = best_dice == -math.inf and best_epoch == 0     # what train() starts from
    if not (never_improved or (math.isfinite(best_dice) and 0 <= best_dice <= 100)):
        problems.append(f"best_dice {shown(best_dice)} is not a Dice score from 0 to 100")
    if problems:
        raise CheckpointError(f"{path}: not a resumable checkpoint ({'; '.join(problems)}); the file was altered "
                              f"or is not this run's last.pt")


def _check_optimizer_and_rng(model: torch.nn.Module, ckpt: dict, path: Path) -> None:
    """Load last.pt's optimizer state into a scratch Adam over ``model`` and its random states into
    the generators (put back afterwards), so that a state from another model or a damaged one is
    refused in words now, before the run writes anything, rather than in Adam.step with a traceback."""
    optimizer = torch.optim.Adam(model.parameters())
    saved = engine.rng_state()
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        engine.restore_rng(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path}: its optimizer or random state does not fit this run "
                              f"({checkpoint.brief(err, 120)})") from None
    finally:
        engine.restore_rng(saved)
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise CheckpointError(f"{path}: its optimizer state does not fit this model (Adam's {name} "
                                          f"has shape {tuple(value.shape)} for a parameter of shape "
                                          f"{tuple(param.shape)}: a state from another model width?)")
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                    raise CheckpointError(f"{path}: its optimizer state holds non-finite values (Adam's {name})")


def resume_epochs(cfg: Config, ckpt: dict, asked: frozenset) -> tuple[Config, str | None]:
    """The config a resume runs with, and a line for the log. A resume continues the run it resumes: its
    epoch count (hence its schedule) stays the run's unless num_epochs is given with -o, and then the
    line says what the change does to the schedule."""
    run_epochs = (ckpt.get("config") or {}).get("num_epochs")
    if not isinstance(run_epochs, int) or isinstance(run_epochs, bool) or run_epochs == cfg.num_epochs:
        return cfg, None
    if "num_epochs" not in asked:
        kept = Config({**cfg.to_dict(), "num_epochs": run_epochs}, cfg.source, cfg.section)
        return kept, (f"resume: continuing the run's {run_epochs} epochs (the config file says {cfg.num_epochs}; "
                      f"to change the run's length give -o num_epochs=N)")
    return cfg, schedule_change(cfg, run_epochs, int(ckpt["epoch"]))


def schedule_change(cfg: Config, run_epochs: int, done: int) -> str:
    """What changing a run's num_epochs from ``run_epochs`` to cfg.num_epochs after epoch ``done`` does
    to its learning-rate schedule (and ternaryTanh's beta), in one line."""
    old = Config({**cfg.to_dict(), "num_epochs": run_epochs}, cfg.source, cfg.section)
    verb = "extending" if cfg.num_epochs > run_epochs else "shortening"
    text = f"resume: {verb} the run from {run_epochs} to {cfg.num_epochs} epochs (-o num_epochs)"
    if cfg.num_epochs <= done:
        return text + f"; last.pt already holds epoch {done}: nothing is trained"
    nxt = done + 1
    before = f"{engine.lr_at(old, nxt):.3g}" if nxt <= run_epochs else f"none (it ended at epoch {run_epochs})"
    text += (f"; epochs 1-{done} were trained on the {run_epochs}-epoch {cfg.lr_schedule} schedule, the rest follow "
             f"the {cfg.num_epochs}-epoch one: epoch {nxt} trains at lr {engine.lr_at(cfg, nxt):.3g} "
             f"(the {run_epochs}-epoch schedule: {before})")
    if cfg.activation == "ternarytanh":
        text += f", ternaryTanh beta {engine.ternary_beta(cfg, nxt):.3g}"
    return text


def _dataset_note(ckpt_config: dict, cfg: Config, path: Path) -> list[str]:
    """A notice when the checkpoint was trained on another dataset than the one this run uses: the
    weights fit any of them (same architecture), so nothing else would say so."""
    trained = ckpt_config.get("dataset") if isinstance(ckpt_config, dict) else None
    if trained is None or trained == cfg.dataset:
        return []
    return [f"notice: {path.name} was trained on dataset {shown(trained)}; this run uses {cfg.dataset!r}"]


def check_run_dir(cfg: Config, run_dir: Path, base_dir: Path) -> None:
    """A run folder is moved to a backup by the next run of the same name, so it must never be, nor
    contain, the experiment folder (its config and links) or the BASE folder of the code."""
    target = Path(run_dir).resolve()
    for what, folder in (("the experiment folder", cfg.folder), ("the BASE folder", base_dir)):
        folder = Path(folder).resolve()
        if target == folder or target in folder.parents:
            relation = "is" if target == folder else "contains"
            raise ConfigError(f"{cfg.source or 'config'}: key 'log_output_dir': {shown(cfg.log_output_dir, 80)} with "
                              f"experiment_name {shown(cfg.experiment_name, 80)} makes the run folder {target}, "
                              f"which {relation} {what} {folder}; allowed: a folder apart from them (e.g. the "
                              f"default log_output_dir: runs)")


def kept_metric_rows(path: Path, last_epoch: int) -> list[list[str]]:
    """The header and the rows of epochs up to ``last_epoch`` of a run's metrics.csv (rows after it were
    written after last.pt and are redone). A damaged file (not UTF-8, a header that is not metrics.csv's,
    a short row, an epoch twice) raises CheckpointError naming the file and the line: a resume must not
    drop or duplicate an epoch's row silently."""
    if not path.exists():
        return []
    fix = "repair or remove that line (a resume keeps the rows of the epochs in last.pt)"
    try:
        text = path.read_bytes().decode("utf-8")
        rows = list(csv.reader(io.StringIO(text)))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {err.start}); {fix}") from None
    except (OSError, csv.Error) as err:
        raise CheckpointError(f"{path}: unreadable ({checkpoint.brief(err, 80)}); {fix}") from None
    if not rows:
        return []
    header = rows[0]
    if not header or header[0] != "epoch" or len(set(header)) != len(header):
        raise CheckpointError(f"{path}: line 1 is not a metrics.csv header (it must start with 'epoch' and name "
                              f"each column once); {fix}")
    kept, seen = [header], set()
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if not row[0].isdigit():
            raise CheckpointError(f"{path}: line {number}: epoch {shown(row[0], 20)} is not a number; {fix}")
        epoch = int(row[0])
        if epoch > last_epoch:
            continue
        if len(row) != len(header):
            raise CheckpointError(f"{path}: line {number} (epoch {epoch}) has {len(row)} of the {len(header)} "
                                  f"columns; {fix}")
        if epoch in seen:
            raise CheckpointError(f"{path}: line {number}: epoch {epoch} appears twice; {fix}")
        seen.add(epoch)
        kept.append(row)
    return kept


def _output_folder(cfg: Config, run_dir: Path, notes: list) -> Path:
    mode = cfg.operation_mode
    if mode == "resume":
        return run_dir
    if mode in ("inference", "visualize"):
        folder = sub_folder(run_dir, mode)
    else:
        folder, notice = fresh_folder(run_dir)
        if notice:
            notes.append(f"notice: {notice}")
    # the resolved config, every mode
    write_text_atomic(folder / CONFIG_NAME, yaml.safe_dump({cfg.section: cfg.to_dict()}, sort_keys=False))
    return folder


def _dispatch(run: Run, ckpt: dict | None) -> dict:
    mode = run.cfg.operation_mode
    if mode == "visualize":
        return {"figures": [str(p) for p in engine.visualize(run)]}
    if mode == "inference":
        return {"metrics": engine.infer(run)}
    if mode == "resume":
        return _resume(run, ckpt)
    return engine.train(run)


def _resume(run: Run, ckpt: dict) -> dict:
    """Continue from a ``last.pt``: weights, optimizer, epoch, best score and random states."""
    epoch = int(ckpt["epoch"])
    if epoch >= run.cfg.num_epochs:
        run.log.line(f"resume: the run already finished its {run.cfg.num_epochs} epochs; nothing to do")
        return {"best_dice": ckpt.get("best_dice"), "best_epoch": ckpt.get("best_epoch")}
    # both were checked by _check_optimizer_and_rng before the run wrote anything
    optimizer = torch.optim.Adam(run.net.parameters(), lr=run.cfg.lr)
    optimizer.load_state_dict(ckpt["optimizer"])
    engine.restore_rng(ckpt["rng"])
    run.log.update_summary(epochs_done=epoch, best_dice=float(ckpt["best_dice"]), best_epoch=int(ckpt["best_epoch"]))
    history = _trim_metrics(run.log.folder / METRICS_NAME, epoch) if run.world.is_main else []
    run.log.line(f"resume: continuing after epoch {epoch} (best {ckpt['best_dice']:.2f} at epoch {ckpt['best_epoch']})")
    return engine.train(run, start_epoch=epoch + 1, best=(float(ckpt["best_dice"]), int(ckpt["best_epoch"])),
                        optimizer=optimizer, history=history)


def _trim_metrics(path: Path, last_epoch: int) -> list[dict]:
    """Keep the metric rows up to ``last_epoch`` (rows written after the checkpoint are redone). The file
    is replaced atomically: a kill at any moment leaves the old rows or the trimmed ones."""
    if not path.exists():
        return []
    write_text_atomic(path, csv_text(kept_metric_rows(path, last_epoch)))
    return read_metrics(path)


def _header(run: Run, notes: list) -> None:
    cfg, log = run.cfg, run.log
    opts = model_options(cfg)
    wf, af = run.model.weight_format, run.model.activation_format
    params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    log.line(f"=== {cfg.experiment_name} | mode {cfg.operation_mode} | {time.strftime('%Y-%m-%d %H:%M:%S')} ===")
    procs = f" x {run.world.size} processes (torchrun)" if run.world.active else ""
    code = code_version()
    log.line(f"unetq {__version__} ({code}) | torch {torch.__version__} | python {platform.python_version()} | "
             f"device {run.device}{procs} | {Path(sys.argv[0]).name}")
    label = f"; dataset label {cfg.label!r} (free text; this script trains {cfg.dataset})" if cfg.label else ""
    log.line(f"config: {cfg.source} [{cfg.section}]{label}")
    if run.data is not None:
        log.line(f"data ({run.data.source}): {run.data.description}")
        for note in run.data.notes:
            log.line(f"  {note}")
    log.line(f"model: U-Net, base width {opts['base_width']}, {params:,} parameters; {cfg.quantization}: weights "
             f"{wf.describe()} on 12 convs, activations {af.describe() if af.kind not in ('normal', 'ternary') else 'float'}"
             f"; activation {cfg.activation}; dropout {'on' if cfg.dropout else 'off'}; init {cfg.init_type}")
    if cfg.operation_mode in ("normal", "retrain", "resume"):
        log.line(f"recipe: Adam lr {cfg.lr:g}, {cfg.lr_schedule} schedule, {cfg.num_epochs} epochs, batch "
                 f"{cfg.batch_size}/{cfg.val_batch_size}, loss {cfg.loss}"
                 f"{' (legacy double sigmoid)' if cfg.legacy_double_sigmoid else ''}, seed {cfg.seed}")
    log.line(f"metrics: per slice, x100, prediction = sigmoid >= {cfg.threshold} (dice@0.5 beside it); "
             f"HD95 mode {cfg.hd95_mode}")
    for note in notes:
        log.line(note)
    log.update_summary(status="running", mode=cfg.operation_mode, experiment_name=cfg.experiment_name,
                       dataset=cfg.dataset, data_source=run.data.source if run.data else None,
                       data_description=run.data.description if run.data else None,
                       num_epochs=cfg.num_epochs, base_width=opts["base_width"], quantization=cfg.quantization,
                       weight_format=wf.describe(), activation_format=af.describe(), threshold=cfg.threshold,
                       device=str(run.device), torch=torch.__version__, code=code, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                       command=" ".join(sys.argv))


# --------------------------------------------------------------------------------------------
# The original repository's experiments: their folders, checkpoints and trained_model
# --------------------------------------------------------------------------------------------

def _folder_notices(cfg: Config) -> list[str]:
    """One notice per broken link in the experiment folder (the script itself runs, since Python
    resolved its link; a copied folder's other links may point nowhere)."""
    return [f"notice: {line}" for line in broken_links(cfg.folder)] if cfg.source else []


def _own_names(state: Mapping, model: torch.nn.Module, cfg: Config, path: Path, notes: list) -> Mapping:
    """A state dict under this project's names: one saved by the original code is renamed (and said so)."""
    if not original.is_original_state(state):
        return state
    state, extra = original.from_original_state(state, model.state_dict())
    notes.append(f"note: {path.name} was saved by the original code (conv1.conv1.weight, ..., conv9.weight): "
                 f"its tensors are mapped to this project's names")
    changed = [d.key for d in original.differences(cfg.to_dict(), cfg.dataset)
               if d.key in ("activation", "first_block_activation")]
    if changed:
        notes.append(f"notice: the original code trained these weights with other {' and '.join(changed)} than "
                     f"this run uses; set original_code: true to run them as they were trained")
    notes.extend(extra)
    return state


def _best_copy(cfg: Config, ckpt: dict | None) -> Path | None:
    """Where the best model also goes: ``trained_model`` in ``normal`` mode (the paper README's "path to
    save best model while training"), and in a resume of such a run. Retrain reads it, never writes it."""
    if cfg.trained_model is None:
        return None
    if cfg.operation_mode == "normal":
        return cfg.path("trained_model")
    if cfg.operation_mode == "resume" and (ckpt or {}).get("config", {}).get("operation_mode") == "normal":
        return cfg.path("trained_model")
    return None


def _backups(run_dir: Path) -> set[Path]:
    """The backup folders of earlier runs beside ``run_dir`` (to find the one a new run just made)."""
    parent = Path(run_dir).parent
    return set(parent.glob(f"{Path(run_dir).name}_backup_*")) if parent.is_dir() else set()


def _record_weights(run: Run, source: dict | None, best_copy: Path | None) -> None:
    """Say where the run's weights came from (path and SHA-256) and where its best model also goes."""
    if source is not None:
        run.log.line(f"weights from: {source['path']} (sha256 {source['sha256']})")
    if best_copy is not None:
        run.log.line(f"best model also written to {best_copy.resolve()} (trained_model)")
    run.log.update_summary(weights_from=source, trained_model_written=str(best_copy.resolve()) if best_copy else None,
                           dataset_label=run.cfg.label)
