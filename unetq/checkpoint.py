"""Checkpoints: plain tensors and Python scalars only, written atomically, read with
``torch.load(weights_only=True)`` so that a file from elsewhere can never run code.

A checkpoint is a dict:
    format "unetq-checkpoint", version, model (state dict), config (the resolved YAML keys),
    epoch, best_dice, best_epoch, metrics (the epoch's validation metrics) and, in ``last``
    checkpoints, optimizer (state dict) and rng (random states) so that a run can be resumed.
A bare state dict (a mapping of tensors) is also accepted as input.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .models import MODEL_KEYS
from .runlog import replacing

FORMAT = "unetq-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


def brief(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` of an exception from torch or pickle (their messages run
    over many lines), cut to ``limit`` characters."""
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0][:limit] if text else 'no detail'}"


def save(payload: Mapping[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, flushed to disk,
    then renamed over the target. A crash at any moment leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        torch.save(dict(payload, format=FORMAT, version=VERSION), fh)


def load(path: Path) -> dict:
    """Read a checkpoint safely. Returns a dict with at least ``model`` (a state dict) and ``config``
    (a dict, empty for a bare state dict). Raises CheckpointError with one clear line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    verify_container(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch words it "Unsupported global: GLOBAL os.system" or "unsupported GLOBAL posix.system"
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if not found:   # a text file, random bytes, a plain pickle of something else
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({brief(err, 120)})") from None
        raise CheckpointError(f"{path}: refused: the file holds Python objects ({found.group(1)}) beyond tensors "
                              f"and plain values, which could run code when loaded") from None
    except Exception as err:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({brief(err)})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if not isinstance(obj.get("model"), Mapping):
            raise CheckpointError(f"{path}: checkpoint has no model weights")
        obj.setdefault("config", {})
        return obj
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": dict(obj), "config": {}}
    raise CheckpointError(f"{path}: not a unetq checkpoint nor a state dict of tensors")


def verify_container(path: Path) -> None:
    """Check every part of a checkpoint's zip container against its CRC-32 before anything is loaded:
    torch.load itself does not, and a file with flipped bytes would load as silently wrong weights.
    (Files in torch's legacy non-zip format carry no checksums and are left to torch.load.)"""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:     # BadZipFile, zlib.error, OSError, ... from a damaged container
        raise CheckpointError(f"{path}: damaged checkpoint ({brief(err, 120)}); use another copy") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint: its part {bad[:120]!r} fails its CRC check (the file "
                              f"changed after it was written); use another copy")


def check_buffers(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Values no trained model can hold: a BatchNorm running variance below zero (it is a mean of
    squares) would give NaN outputs and NaN metrics without any error."""
    for name, value in state.items():
        if name.endswith("running_var") and isinstance(value, torch.Tensor) and (value < 0).any():
            raise CheckpointError(f"{path}: {name} holds a negative variance ({float(value.min()):.3g}); "
                                  f"a BatchNorm variance cannot be negative: the file is damaged")


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path,
              ckpt_config: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> list[str]:
    """Load ``state`` into ``model``, explaining any mismatch in words.

    Returns notices (e.g. a different quantization, which is legitimate for retraining a float model
    into a quantized one); raises CheckpointError when the tensors do not fit, naming what differs.
    """
    notices, differs = [], []
    if ckpt_config and config:
        differs = [f"{k}: checkpoint {ckpt_config.get(k)!r}, config {config.get(k)!r}"
                   for k in MODEL_KEYS if k in ckpt_config and ckpt_config.get(k) != config.get(k)]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(differs) if differs else _mismatch_summary(missing, unexpected, shapes)
        raise CheckpointError(f"{path}: does not fit this model ({detail})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: holds non-finite values (NaN or inf) in {bad[0]}"
                              f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}; refusing to use it")
    check_buffers(state, path)
    model.load_state_dict(state)
    if differs:
        notices.append(f"note: {path.name} was trained with different settings ({'; '.join(differs)})")
    return notices


def _mismatch_summary(missing: list, unexpected: list, shapes: list) -> str:
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors differ in shape, e.g. {shapes[0]}")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts)
