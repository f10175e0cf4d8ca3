"""TensorBoard event files in the run folder (config key ``tensorboard``, default on; docs/onnx.md).

    tensorboard --logdir runs            # every run folder under runs/ is one run

The training loop makes four calls: :func:`open_writer` before the first epoch, :meth:`Board.epoch`
after each epoch's row of metrics.csv (the same numbers: train/loss, val/loss, val/<metric>, lr, at
step = epoch), :meth:`Board.overlays` when an overlay figure is written, :meth:`Board.close` at the
end. Histograms of every quantized conv's float and quantized weights go with each epoch.

TensorBoard is optional: without the package a run logs one line saying what to install and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

INSTALL_HINT = "pip install tensorboard"


class Board:
    """A SummaryWriter on the run folder, or nothing (disabled, other ranks, package missing)."""

    def __init__(self, writer=None):
        self.writer = writer

    def epoch(self, row: Mapping[str, Any], model: torch.nn.Module, epoch: int) -> None:
        """The epoch's metrics row as scalars, and the weight histograms."""
        if self.writer is None:
            return
        for key, value in row.items():
            name = scalar_name(key)
            if name and isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
                self.writer.add_scalar(name, float(value), epoch)
        for conv_name, conv in getattr(model, "quantized_convs", lambda: [])():
            with torch.no_grad():
                self.writer.add_histogram(f"weights/{conv_name}/float", conv.weight.detach().cpu(), epoch)
                self.writer.add_histogram(f"weights/{conv_name}/quantized", conv.quantized_weight().detach().cpu(), epoch)
        self.writer.flush()

    def overlays(self, png: Path, epoch: int) -> None:
        """The overlay figure just written (a PNG) as an image at step ``epoch``."""
        if self.writer is None or not Path(png).is_file():
            return
        with Image.open(png) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.writer.add_image("overlays", pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def scalar_name(key: str) -> str | None:
    """The TensorBoard tag of a metrics.csv column: train_loss -> train/loss, val_loss -> val/loss,
    lr -> lr, a validation metric -> val/<metric>; bookkeeping columns (epoch, time, counts) -> None."""
    if key == "train_loss":
        return "train/loss"
    if key == "val_loss":
        return "val/loss"
    if key == "lr":
        return "lr"
    if key in ("epoch", "time_s", "data_source") or key.startswith("n_"):
        return None
    return f"val/{key}"


def open_writer(enabled: bool, folder: Path, is_main: bool, log_line, start_epoch: int = 1) -> Board:
    """A Board writing to ``folder`` (rank 0 only). ``start_epoch`` > 1 (resume) purges events of
    later steps left by an interrupted run, so the curves are not drawn twice."""
    if not enabled or not is_main:
        return Board()
    try:
        # tensorboard is optional (a run goes on without it): imported here, where its absence is handled
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log_line(f"note: tensorboard is not installed, so no event files are written ({INSTALL_HINT}; "
                 f"or set tensorboard: false)")
        return Board()
    return Board(SummaryWriter(log_dir=str(folder), purge_step=start_epoch if start_epoch > 1 else None))
