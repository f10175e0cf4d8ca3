"""Resume and the checkpoint a mode starts from (docs/running.md, "Resume").

A run's own ``last.pt`` is trusted only after checks: its bookkeeping has the right types and values,
its config is the one the run was trained with (apart from RESUME_MAY_CHANGE), its optimizer and random
states fit the model, and the run's metrics.csv is readable up to the checkpoint's epoch. Everything is
checked before the run writes anything.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch

from . import checkpoint, engine
from .checkpoint import CheckpointError
from .config import RUN_ONLY_KEYS, Config, shown
from .runlog import csv_text, read_metrics, write_text_atomic


def epoch_in_last(folder: Path) -> int | None:
    """The epoch the run's last.pt holds (None without one): a stop between an epoch's last.pt and its
    summary.json update must still name that epoch. Memory-mapped: the weights are not read."""
    path = Path(folder) / "last.pt"
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:      # absent, or unreadable: the summary's count is used instead
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None



def checkpoint_path(cfg: Config, run_dir: Path) -> Path:
    """Resume always continues the run's own ``last.pt``: a retrain run keeps ``trained_model`` set to
    its source, and resuming from that would mix two runs in one folder."""
    if cfg.operation_mode == "resume":
        return run_dir / "last.pt"
    return cfg.path("trained_model")


def checkpoint_for(cfg: Config, run_dir: Path) -> dict | None:
    """The checkpoint a mode starts from (None for normal)."""
    if cfg.operation_mode == "normal":
        return None
    path = checkpoint_path(cfg, run_dir)
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


def check_optimizer_and_rng(optimizer: torch.optim.Optimizer, ckpt: dict, path: Path) -> None:
    """Load last.pt's optimizer state into the run's ``optimizer`` (the script's, over the model), and
    try its random states on the generators (put back afterwards: they are restored just before the
    loop), so that a state from another model or a damaged one is refused in words now, before the run
    writes anything, rather than in Adam.step with a traceback."""
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



def dataset_note(ckpt_config: dict, cfg: Config, path: Path) -> list[str]:
    """A notice when the checkpoint was trained on another dataset than the one this run uses: the
    weights fit any of them (same architecture), so nothing else would say so."""
    trained = ckpt_config.get("dataset") if isinstance(ckpt_config, dict) else None
    if trained is None or trained == cfg.dataset:
        return []
    return [f"notice: {path.name} was trained on dataset {shown(trained)}; this run uses {cfg.dataset!r}"]



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



def trim_metrics(path: Path, last_epoch: int) -> list[dict]:
    """Keep the metric rows up to ``last_epoch`` (rows written after the checkpoint are redone). The file
    is replaced atomically: a kill at any moment leaves the old rows or the trimmed ones."""
    if not path.exists():
        return []
    write_text_atomic(path, csv_text(kept_metric_rows(path, last_epoch)))
    return read_metrics(path)


