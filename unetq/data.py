"""What every dataset shares: the in-memory slice dataset, the bundle a BASE hands to the engine,
safe image reading and the small geometry helpers (resize, centre crop).

A BASE folder's data module (``em_data.py``, ``gm_data.py``, ``nih_data.py``) provides:

    FIELDS           its own config keys (unetq.config.Field), e.g. ``foreground`` for EM
    build_datasets(cfg) -> DataBundle

Items are dicts ``{"image": float32 [1,H,W], "mask": float32 [1,H,W] in {0,1},
"spacing": float64 [2] (mm per pixel, rows/cols; NaN when unknown), "index": int}``.
Random transforms draw from a generator seeded by (seed, epoch, index), so a run is repeatable
whatever the number of DataLoader workers and can be resumed mid-way.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unetq.paths import PROJECT_ROOT


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the file and the problem."""


Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


class SliceDataset(Dataset):
    """2-D slices held in memory (images float32 [N,H,W], masks {0,1} [N,H,W]).

    transform(image, mask, rng) -> (image, mask) runs per item (training augmentation); names are
    kept for logs and overlays; spacings [N,2] in mm (NaN when unknown).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, names: Optional[Sequence[str]] = None,
                 spacings: Optional[np.ndarray] = None, transform: Optional[Transform] = None, seed: int = 0):
        if len(images) != len(masks):
            raise DataError(f"{len(images)} images but {len(masks)} masks")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.masks = np.ascontiguousarray(masks, dtype=np.uint8)
        self.names = list(names) if names is not None else [str(i) for i in range(len(images))]
        self.spacings = (np.full((len(images), 2), np.nan) if spacings is None
                         else np.asarray(spacings, dtype=np.float64).reshape(len(images), 2))
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Pick the random stream of this epoch (call before iterating)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = self.transform(image, mask, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)[None]),
            "spacing": torch.from_numpy(self.spacings[index].copy()),
            "index": index,
        }


@dataclass
class DataBundle:
    """What a BASE hands to the engine: the two datasets and a one-line account of the data.

    source: phantom | sample | real (every log line and results row carries it);
    description: what was read and how it was split; notes: extra lines for the log.
    """

    train: Dataset
    val: Dataset
    source: str
    description: str
    notes: list = field(default_factory=list)


def read_gray(path: Path) -> np.ndarray:
    """A single-channel image file (PNG, TIFF page 0, ...) as a 2-D numpy array; a truncated,
    corrupt or multi-channel file raises DataError naming the file."""
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")      # PIL warns on some damaged files before failing on them
            img.load()
            if img.mode not in ("L", "I", "I;16", "F", "1", "P"):
                raise DataError(f"{path}: expected a single-channel (grayscale) image, got mode {img.mode}")
            return np.array(img.convert("L") if img.mode in ("1", "P") else img)
    except DataError:
        raise
    except Exception as err:   # PIL raises OSError, SyntaxError, ValueError, TypeError... on damaged files
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


def binary_mask(mask: np.ndarray, where: str) -> np.ndarray:
    """A label image as uint8 {0, 1}: 0/255 masks (ISBI) split at 127, 0/1 masks taken as they are.
    Any other values are refused: thresholding them at 127 would turn a 0/1 mask into all background,
    silently."""
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 1}:
        return mask.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (mask > 127).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise DataError(f"{where}: a mask must hold 0/255 or 0/1 only, found values {shown}")


def resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a 2-D array to (H, W): bilinear for images, nearest for label maps (PIL)."""
    mode = Image.NEAREST if nearest else Image.BILINEAR
    as_float = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    out = np.asarray(as_float.resize((size[1], size[0]), mode))
    return out.astype(image.dtype) if nearest else out


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two axes to (H, W), zero-padding symmetrically where smaller."""
    h, w = array.shape[-2:]
    th, tw = size
    pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
    if pad_h or pad_w:
        pads = [(0, 0)] * (array.ndim - 2) + [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)]
        array = np.pad(array, pads)
        h, w = array.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2
    return array[..., top:top + th, left:left + tw]


def window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Intensity window: clip to [low, high] and scale linearly to [0, 1] (float32), e.g. a CT
    window in Hounsfield units (-100..240 for the pancreas)."""
    if not high > low:
        raise DataError(f"intensity window {low}..{high}: the upper bound must exceed the lower one")
    clipped = np.clip(np.asarray(array, dtype=np.float32), low, high)
    return ((clipped - np.float32(low)) / np.float32(high - low)).astype(np.float32)


def require_empty_folder(out: Path) -> None:
    """Refuse an output that is a file or a non-empty folder (pre-processing never mixes two
    preparations in one folder); raises DataError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty; give a new or empty output folder (nothing was written)")


def shown_path(path) -> str:
    """A data path as a reader of the log sees it: relative to the project root's parent
    (``../shared/data/...``) when it lies beside the checkout, so that the description names the
    bundled sample the same way on every developer's machine; otherwise as given."""
    try:
        return os.path.join("..", str(Path(path).resolve().relative_to(PROJECT_ROOT.parent)))
    except ValueError:
        return str(path)
