"""The run folder: checked before anything is written, claimed (locked) when the run starts, and the
log header that opens it (docs/running.md, "The run folder").
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Mapping

import torch
import yaml

from . import __version__, original, runlock
from .checkpoint import CheckpointError
from .config import Config, ConfigError, shown
from .paths import broken_links, code_version
from .runlog import CONFIG_NAME, fresh_folder, remove_stale_temporaries, stale_temporaries, sub_folder, write_text_atomic


def space_needed(model: torch.nn.Module, mode: str) -> int:
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


def output_folder(cfg: Config, run_dir: Path, notes: list) -> Path:
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


def claim(cfg: Config, run_dir: Path, needed: int, notes: list) -> tuple[runlock.RunLock, Path]:
    """Check the disk, lock the run folder for this process (refused while another one holds it), clear
    what a killed write left there, and make the output folder. Everything was validated before: this
    is where a run starts writing. Returns (lock, output folder); the lock is released on failure."""
    leftovers = stale_temporaries(run_dir)
    check_writable(run_dir, needed_bytes=needed, reclaimable=sum(p.stat().st_size for p in leftovers))
    lock = runlock.acquire(run_dir, cfg.operation_mode)
    try:
        removed = remove_stale_temporaries(run_dir)
        folder = output_folder(cfg, run_dir, notes)
    except BaseException:
        lock.release()
        raise
    if removed:
        notes.append(f"notice: removed {len(removed)} temporary file(s) a stopped write had left in {run_dir} "
                     f"(e.g. {removed[0].name})")
    return lock, folder


def folder_notices(cfg: Config) -> list[str]:
    """One notice per broken link in the experiment folder (the script itself runs, since Python
    resolved its link; a copied folder's other links may point nowhere)."""
    return [f"notice: {line}" for line in broken_links(cfg.folder)] if cfg.source else []


def own_names(state: Mapping, model: torch.nn.Module, cfg: Config, path: Path, notes: list) -> Mapping:
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


def best_copy(cfg: Config, ckpt: dict | None) -> Path | None:
    """Where the best model also goes: ``trained_model`` in ``normal`` mode (the paper README's "path to
    save best model while training"), and in a resume of such a run. Retrain reads it, never writes it."""
    if cfg.trained_model is None:
        return None
    if cfg.operation_mode == "normal":
        return cfg.path("trained_model")
    if cfg.operation_mode == "resume" and (ckpt or {}).get("config", {}).get("operation_mode") == "normal":
        return cfg.path("trained_model")
    return None


def backups(run_dir: Path) -> set[Path]:
    """The backup folders of earlier runs beside ``run_dir`` (to find the one a new run just made)."""
    parent = Path(run_dir).parent
    return set(parent.glob(f"{Path(run_dir).name}_backup_*")) if parent.is_dir() else set()


def record_weights(log, cfg: Config, source: dict | None, best_copy: Path | None) -> None:
    """Say where the run's weights came from (path and SHA-256) and where its best model also goes."""
    if source is not None:
        log.line(f"weights from: {source['path']} (sha256 {source['sha256']})")
    if best_copy is not None:
        log.line(f"best model also written to {best_copy.resolve()} (trained_model)")
    log.update_summary(weights_from=source, trained_model_written=str(best_copy.resolve()) if best_copy else None,
                       dataset_label=cfg.label)


def header(log, cfg: Config, model: torch.nn.Module, data, device: torch.device, world, notes: list) -> None:
    """The lines that open a run's log: what runs, on what, with which data, model and recipe, then the
    notices gathered while the run was checked; the same facts go to summary.json."""
    wf, af = model.weight_format, model.activation_format
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    log.line(f"=== {cfg.experiment_name} | mode {cfg.operation_mode} | {now} ===")
    procs = f" x {world.size} processes (torchrun)" if world.active else ""
    code = code_version()
    log.line(f"unetq {__version__} ({code}) | torch {torch.__version__} | python {platform.python_version()} | "
             f"device {device}{procs} | {Path(sys.argv[0]).name}")
    label = f"; dataset label {cfg.label!r} (free text; this script trains {cfg.dataset})" if cfg.label else ""
    log.line(f"config: {cfg.source} [{cfg.section}]{label}")
    if data is not None:
        log.line(f"data ({data.source}): {data.description}")
        for note in data.notes:
            log.line(f"  {note}")
    acts = af.describe() if af.kind not in ("normal", "ternary") else "float"
    log.line(f"model: U-Net, base width {cfg.base_width}, {params:,} parameters; {cfg.quantization}: weights "
             f"{wf.describe()} on 12 convs, activations {acts}; activation {cfg.activation}; "
             f"dropout {'on' if cfg.dropout else 'off'}; init {cfg.init_type}")
    if cfg.operation_mode in ("normal", "retrain", "resume"):
        log.line(f"recipe: Adam lr {cfg.lr:g}, {cfg.lr_schedule} schedule, {cfg.num_epochs} epochs, batch "
                 f"{cfg.batch_size}/{cfg.val_batch_size}, loss {cfg.loss}"
                 f"{' (legacy double sigmoid)' if cfg.legacy_double_sigmoid else ''}, seed {cfg.seed}")
    log.line(f"metrics: per slice, x100, prediction = sigmoid >= {cfg.threshold}"
             f"{' (dice@0.5 beside it)' if cfg.threshold != 0.5 else ''}; HD95 mode {cfg.hd95_mode}")
    for note in notes:
        log.line(note)
    log.update_summary(status="running", mode=cfg.operation_mode, experiment_name=cfg.experiment_name,
                       dataset=cfg.dataset, data_source=data.source if data else None,
                       data_description=data.description if data else None,
                       num_epochs=cfg.num_epochs, base_width=cfg.base_width, quantization=cfg.quantization,
                       weight_format=wf.describe(), activation_format=af.describe(), threshold=cfg.threshold,
                       device=str(device), torch=torch.__version__, code=code, started=now,
                       command=" ".join(sys.argv))
