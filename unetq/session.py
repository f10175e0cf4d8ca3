"""What happens around an experiment, in one home: the command line, the validated config, the
device and torchrun, the seeds, the checkpoint a mode starts from, the run folder (checked, then
locked), the log, resume, signals, the per-epoch records and the exit status (docs/running.md).

A BASE script holds the experiment itself (model, data, loss, optimizer, loop) and calls, in order::

    with Session("em", argv) as run:
        cfg = run.config()                 # -f / -t / -o, validated; device, seeds, checkpoint read
        model = build_model(cfg)
        run.load_weights(model)            # the checkpoint of retrain / inference / visualize / resume
        data = em_data.build_datasets(cfg)
        run.start(data, optimizer)         # everything checked: the run folder is claimed, the header written
        for epoch in run.epochs(): ...     # the script's loop; run.end_epoch() records each epoch
    return run.exit_code

Errors the user can fix end the ``with`` block with one line on stderr and exit status 2 (130 for
an interrupt); after the run folder was claimed, the summary records why and how to go on.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from . import checkpoint, distributed, engine, figures, resume, runfolder, tensorboard_log, weights
from .checkpoint import CheckpointError
from .config import Config, ConfigError, load, parse_overrides
from .data import DataError
from .engine import Compute, TrainingError, format_metrics
from .paths import BASES
from .runlog import METRICS_NAME, RunLog, read_summary

USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError)
TRAINING = ("normal", "retrain", "resume")
PROGRESS_EVERY_S = 30.0      # a progress line this often when the console is not a terminal (a log file)


def parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    """The command line of every BASE script: -f config.yaml, -t section, -o key=value ..., -q."""
    parser = argparse.ArgumentParser(prog=prog, description="Train / evaluate / visualize a quantized U-Net.")
    parser.add_argument("-f", "--file", required=True, help="the experiment's config.yaml")
    parser.add_argument("-t", "--type", default="UNET", help="section of the YAML to use (default UNET)")
    parser.add_argument("-o", "--override", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. -o num_epochs=2 base_width=16")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the log to the terminal")
    return parser.parse_args(argv)


class Session:
    """One run of a BASE script (see the module docstring). Attributes the script uses: ``cfg``,
    ``device``, ``world``, ``compute`` (precision and memory format), ``net`` (what training calls:
    the DistributedDataParallel wrapper under torchrun, else the model), ``model``, ``data``, ``log``
    and, after the block, ``exit_code``."""

    def __init__(self, dataset: str, argv: Sequence[str] | None = None):
        self.dataset, self.argv = dataset, argv
        self.cfg: Config | None = None
        self.run_dir: Path | None = None          # log_output_dir / experiment_name
        self.device = torch.device("cpu")
        self.world = distributed.SINGLE
        self.compute = Compute()
        self.model = self.net = self.data = self.log = None
        self.exit_code = 0
        self.history: list[dict] = []
        self.best = (-math.inf, 0)               # (best Dice, its epoch)
        self.result: dict = {}
        self._ckpt = self._lock = self._optimizer = self._board = self._bar = None
        self._echo, self._asked, self._notes = True, frozenset(), []
        self._source = self._best_copy = None
        self._start_epoch, self._epoch_started = 1, 0.0
        self._signals = contextlib.ExitStack()

    # -- the block ---------------------------------------------------------------------------------

    def __enter__(self) -> "Session":
        self._signals.enter_context(interrupts_from_signals())
        return self

    def __exit__(self, kind, err, tb) -> bool:
        try:
            self.exit_code = self._close(err)
        finally:
            if self._lock is not None:
                self._lock.release()
            distributed.teardown(self.world)
            self._signals.close()
        # handled errors end here with their line; anything else is a bug and keeps its traceback
        return err is None or isinstance(err, (*USER_ERRORS, OSError, KeyboardInterrupt))

    def _close(self, err: BaseException | None) -> int:
        self._end_loop()
        if self.log is None:                     # the run folder was never claimed: nothing was written
            if err is None:
                return 0
            if isinstance(err, KeyboardInterrupt):
                print("error: interrupted while the run was starting: nothing was trained, and any last.pt is "
                      "unchanged", file=sys.stderr)
                return 130
            if isinstance(err, (*USER_ERRORS, OSError)):
                print(f"error: {_reason(err)}", file=sys.stderr)
                return 2
            return 1
        if err is None:
            try:
                self.log.update_summary(status="complete", finished=time.strftime("%Y-%m-%d %H:%M:%S"), **self.result)
                self.log.line(f"done: outputs in {self.log.folder}")
            except (KeyboardInterrupt, OSError) as late:
                return self._stopped(late)
            # rank 0 is still writing its figures when the others finish: leaving the group before
            # every rank is done can take a busy peer's connections down with it
            distributed.barrier(self.world)
            return 0
        code = self._stopped(err)       # also for a bug (its traceback follows): the summary says it failed
        return code if isinstance(err, (*USER_ERRORS, OSError, KeyboardInterrupt)) else 1

    # -- before anything is written ----------------------------------------------------------------

    def config(self) -> Config:
        """Read the command line and the config (validated with this dataset's recipe and keys), pick the
        device, join torchrun's processes, seed every generator, check the run folder and read (and check)
        the checkpoint the mode starts from. Returns the config the run uses."""
        args = parse_args(self.argv, prog=Path(sys.argv[0]).name)
        overrides = parse_overrides(args.override)
        cfg = load(args.file, args.type, overrides, dataset=self.dataset)
        self._echo, self._asked = not args.quiet, frozenset(str(k).lower() for k in overrides)
        device, notice = engine.select_device(cfg)
        _check_sync_bn(cfg, device)
        self.world = distributed.setup(use_cuda=device.type == "cuda")
        if self.world.active:
            _check_world(cfg, self.world)
            if device.type == "cuda":
                device = torch.device(f"cuda:{self.world.local_rank}")     # one GPU per process
        self.device = device
        engine.seed_everything(cfg.seed)
        self.run_dir = cfg.path("log_output_dir") / cfg.experiment_name
        runfolder.check_run_dir(cfg, self.run_dir, BASES[self.dataset].folder)
        self._notes = ([notice] if notice else []) + runfolder.folder_notices(cfg) + cfg.notices
        self._ckpt = resume.checkpoint_for(cfg, self.run_dir)
        if cfg.operation_mode == "resume":
            cfg, note = resume.resume_epochs(cfg, self._ckpt, self._asked)
            self._notes += [note] if note else []
        self.cfg = cfg
        return cfg

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load the mode's checkpoint into ``model`` (nothing in normal mode) and move it to the device."""
        cfg, ckpt = self.cfg, self._ckpt
        if ckpt is not None:
            path = resume.checkpoint_path(cfg, self.run_dir)
            state = runfolder.own_names(ckpt["model"], model, cfg, path, self._notes)
            self._notes += checkpoint.load_into(model, state, path, ckpt["config"], cfg.to_dict())
            self._notes += resume.dataset_note(ckpt["config"], cfg, path)
            self._notes.append(f"checkpoint: {path.resolve()} (epoch {ckpt.get('epoch', '?')}, best dice "
                               f"{ckpt.get('best_dice', '?')} at epoch {ckpt.get('best_epoch', '?')})")
            self._source = (path, weights.sha256(path))
            if cfg.operation_mode == "resume":
                resume.kept_metric_rows(self.run_dir / METRICS_NAME, int(ckpt["epoch"]))
        self._best_copy = runfolder.best_copy(cfg, ckpt)
        self.compute = engine.compute_for(cfg.amp, self.device)
        model.to(self.device, memory_format=self.compute.memory_format)
        self.model = self.net = model

    def start(self, data, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Everything is checked: claim the run folder (rank 0), open the log and write its header. A resume
        loads last.pt's optimizer state into ``optimizer`` first (a state that does not fit is refused
        before anything is written) and its random states last, just before the loop."""
        cfg, ckpt = self.cfg, self._ckpt
        self.data, self._optimizer = data, optimizer
        self.unit = engine.distance_unit(data.val) if data is not None else ""
        if cfg.operation_mode == "resume":
            resume.check_optimizer_and_rng(optimizer, ckpt, resume.checkpoint_path(cfg, self.run_dir))
        folder, moved = self._claim()
        self.log = RunLog(folder, echo=self._echo and self.world.is_main, enabled=self.world.is_main)
        if cfg.operation_mode == "resume":
            # a resume continues the run's record: its summary keeps what the run reached so far
            self.log.summary.update(read_summary(folder), epochs_done=int(ckpt["epoch"]))
        if cfg.operation_mode in TRAINING:
            self.net = engine.wrap_for_training(self.model, self.world, self.device, cfg.sync_bn)
        runfolder.header(self.log, cfg, self.model, data, self.device, self.world, self._notes)
        runfolder.record_weights(self.log, cfg, self._source and weights.source_record(*self._source, moved),
                                 self._best_copy)
        if cfg.operation_mode == "resume":
            self._continue(ckpt)

    def _claim(self) -> tuple[Path, tuple | None]:
        """Rank 0 makes and locks the output folder; the other ranks wait for it, or for rank 0's reason
        when it could not (and stop with the same line rather than a traceback from a broken broadcast)."""
        cfg, run_dir = self.cfg, self.run_dir
        folder = failure = moved = None
        if self.world.is_main:
            try:
                if self._best_copy is not None:
                    weights.check_target(self._best_copy)
                earlier = runfolder.backups(run_dir)
                self._lock, folder = runfolder.claim(cfg, run_dir, runfolder.space_needed(self.model, cfg.operation_mode),
                                                     self._notes)
                moved = runfolder.backups(run_dir) - earlier
                moved = (run_dir, moved.pop()) if moved else None
                kept = (weights.keep_existing(self._best_copy)
                        if self._best_copy is not None and cfg.operation_mode == "normal" else None)
                self._notes += [kept] if kept else []
            except Exception as err:
                if not self.world.active:
                    raise
                failure = err
        folder, reason = distributed.share((folder, _reason(failure)), self.world)
        if failure is not None:
            raise failure
        if reason is not None:
            raise ConfigError(reason)
        return folder, moved

    def _continue(self, ckpt: dict) -> None:
        """Resume: continue after last.pt's epoch with its best score, metric rows and random states."""
        epoch = int(ckpt["epoch"])
        self.best = (float(ckpt["best_dice"]), int(ckpt["best_epoch"]))
        self.result = {"best_dice": ckpt.get("best_dice"), "best_epoch": ckpt.get("best_epoch")}
        if epoch >= self.cfg.num_epochs:
            self._start_epoch = self.cfg.num_epochs + 1
            self.log.line(f"resume: the run already finished its {self.cfg.num_epochs} epochs; nothing to do")
            return
        self._start_epoch = epoch + 1
        engine.restore_rng(ckpt["rng"])
        self.log.update_summary(epochs_done=epoch, best_dice=self.best[0], best_epoch=self.best[1])
        if self.world.is_main:
            self.history = resume.trim_metrics(self.log.folder / METRICS_NAME, epoch)
        self.log.line(f"resume: continuing after epoch {epoch} (best {ckpt['best_dice']:.2f} at epoch "
                      f"{ckpt['best_epoch']})")

    # -- the loop ----------------------------------------------------------------------------------

    def epochs(self):
        """The epochs to train, 1..num_epochs (after last.pt's epoch on resume), with a progress bar and
        the TensorBoard writer (flushed every epoch, so an interrupted run keeps its events)."""
        cfg, main = self.cfg, self.world.is_main
        todo = range(self._start_epoch, cfg.num_epochs + 1)
        if not todo:
            return
        self._bar = tqdm(todo, desc="epochs", disable=None if main else True, unit="epoch",
                         initial=self._start_epoch - 1, total=cfg.num_epochs)
        self._board = tensorboard_log.open_writer(cfg.tensorboard, self.log.folder, main, self.log.line,
                                                  self._start_epoch)
        try:
            for epoch in self._bar:
                self._epoch_started = time.perf_counter()
                yield epoch
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        """Close the TensorBoard writer and the progress bar (also when the loop stopped on an error)."""
        if self._board is not None:
            self._board.close()
            self._bar.close()
            self._board = self._bar = None

    def batches(self, loader, desc: str):
        """The (images, masks) of ``loader`` on the run's device, with a progress bar on a terminal and a
        line every PROGRESS_EVERY_S seconds when the console is a file (e.g. ``nohup ... > log``)."""
        fmt = self.compute.memory_format
        bar = tqdm(loader, desc=desc, leave=False, disable=None if self.world.is_main else True, unit="batch")
        quiet_console = bar.disable and self.world.is_main and self._echo
        last = time.perf_counter()
        for k, batch in enumerate(bar, start=1):
            check_stop()
            yield (batch["image"].to(self.device, non_blocking=True, memory_format=fmt),
                   batch["mask"].to(self.device, non_blocking=True))
            if quiet_console and time.perf_counter() - last >= PROGRESS_EVERY_S:
                last = time.perf_counter()
                print(f"  {desc}: batch {k}/{len(loader)}, {last - self._epoch_started:.0f} s", flush=True)

    def train_loss(self, losses: list[torch.Tensor], epoch: int) -> float:
        """The epoch's mean batch loss over the ranks. Non-finite losses are found without a host sync
        per batch: the values are checked once, after the ranks have summed them, so every rank sees a
        NaN of any rank and stops (the last good checkpoint is kept)."""
        values = torch.stack(losses).float()
        if self.world.active:
            torch.distributed.all_reduce(values)
            values /= self.world.size
        values = values.cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            raise TrainingError(f"epoch {epoch}: non-finite training loss at batch {int(bad[0]) + 1} of "
                                f"{len(values)}; the last good checkpoint is kept")
        return float(values.mean())

    def end_epoch(self, epoch: int, lr: float, train_loss: float, metrics: dict, kept: list) -> None:
        """Record one epoch: the log line, the metrics.csv row, TensorBoard, last.pt (and best.pt on a strictly
        greater Dice at the configured threshold), summary.json, the curves and, now and then, overlays."""
        check_stop()
        cfg, log = self.cfg, self.log
        row = {"epoch": epoch, "time_s": time.perf_counter() - self._epoch_started, "lr": lr,
               "train_loss": train_loss, **metrics, "data_source": self.data.source}
        self.history.append(row)
        improved = metrics["dice"] > self.best[0]
        if improved:
            self.best = (metrics["dice"], epoch)
        best_dice, best_epoch = self.best
        self.result = {"best_dice": best_dice, "best_epoch": best_epoch}
        # the row goes out before last.pt: an interrupt in between leaves a row that resume trims and
        # redoes, never a checkpoint whose epoch has no row
        log.line(f"epoch {epoch}/{cfg.num_epochs} | {row['time_s']:.1f} s | loss {train_loss:.4f} | val "
                 f"{metrics['val_loss']:.4f} | {format_metrics(metrics, cfg.threshold, self.unit)} | lr {lr:.1e} | "
                 f"best {best_dice:.2f} ({best_epoch})")
        log.metrics_row(row)
        self._board.epoch(row, self.model, epoch)
        save_epoch(self, epoch, metrics, improved)
        log.update_summary(epochs_done=epoch, best_dice=best_dice, best_epoch=best_epoch, last=row)
        if not self.world.is_main:
            return
        figures.plot_curves(self.history, log.folder / "curves.png", title=cfg.experiment_name)
        if epoch == cfg.num_epochs or (cfg.overlay_every and epoch % cfg.overlay_every == 0):
            path = log.folder / "overlays" / f"epoch_{epoch:03d}.png"
            engine.save_overlays(self, kept, path, f"epoch {epoch}")
            self._board.overlays(path, epoch)
        self._bar.set_postfix(dice=f"{metrics['dice']:.2f}", best=f"{best_dice:.2f}")

    def done(self, **result) -> None:
        """What a mode reached, for summary.json (training records its best epoch itself)."""
        self.result.update(result)

    # -- stops -------------------------------------------------------------------------------------

    def _stopped(self, err: BaseException) -> int:
        """Record why a run stopped early and say how to go on; the last good checkpoint stays."""
        log, mode = self.log, self.cfg.operation_mode
        interrupted = isinstance(err, KeyboardInterrupt)
        if interrupted:
            reason = f"interrupted ({err})" if str(err) else "interrupted by the user (Ctrl-C)"
        elif isinstance(err, OSError):
            reason = f"cannot write {err.filename or 'an output file'}: {err.strerror or err}"
        else:
            reason = str(err)
        done = resume.epoch_in_last(log.folder) or log.summary.get("epochs_done")
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
        if self.world.is_main:
            print(f"error: {reason}{how}", file=sys.stderr)
        return 130 if interrupted else 2


def save_epoch(run: Session, epoch: int, metrics: dict, improved: bool) -> None:
    """Write ``last.pt`` (resumable) every epoch and ``best.pt`` on improvement. Weights are checked
    first: a model with non-finite weights never replaces a good checkpoint."""
    bad = [n for n, p in run.model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise TrainingError(f"epoch {epoch}: non-finite weights in {bad[0]}; the last good checkpoint is kept")
    # contiguous (NCHW) tensors: a checkpoint does not depend on the memory format the run computed in
    state = run.model.state_dict()
    for name, value in state.items():
        state[name] = value.contiguous()
    if not run.world.is_main:
        return
    best_dice, best_epoch = run.best
    base = {"model": state, "config": run.cfg.to_dict(), "epoch": epoch,
            "metrics": engine.plain(metrics), "best_dice": float(best_dice), "best_epoch": best_epoch,
            "data_source": run.data.source}
    if improved:
        checkpoint.save(base, run.log.folder / "best.pt")
        if run._best_copy is not None:
            checkpoint.save(base, run._best_copy)
    checkpoint.save({**base, "optimizer": run._optimizer.state_dict(), "rng": engine.rng_state()},
                    run.log.folder / "last.pt")


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
    """The line a script prints for ``err`` (without "error: "); also sent to the ranks
    that did not see it. None without an error."""
    if err is None:
        return None
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, OSError):
        return f"{err.filename or ''}: {err.strerror or err}"
    return f"rank 0 stopped before training: {type(err).__name__}: {err}"


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (e.g. from a job scheduler)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[str] = []        # the stop this process received during the current run (its message)


def check_stop() -> None:
    """Raise :class:`Interrupted` when a stop signal arrived but its exception was lost. Python drops an
    exception raised while a finalizer runs (e.g. matplotlib's, during garbage collection: "Exception
    ignored in ..."), so the loop asks at every batch and epoch: the run stops there instead of training on."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def interrupts_from_signals():
    """For the duration, the first SIGTERM or SIGINT raises :class:`Interrupted` in the main thread, so
    that a scheduler's stop is handled like Ctrl-C: the epoch in progress is abandoned and last.pt
    stays resumable. Later signals are ignored: a second Ctrl-C (or a scheduler's repeated SIGTERM)
    must not break the shutdown that records the stop (summary, message, exit status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()

    def handler(signum, frame):
        if _received:                            # the first stop counts; a second one is not a new stop
            return
        message = "" if signum == signal.SIGINT else f"received {signal.Signals(signum).name}"
        _received.append(message)
        raise Interrupted(message)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        _received.clear()
        for sig, old in previous.items():
            signal.signal(sig, old)
