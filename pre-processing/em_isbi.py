"""Prepare the ISBI 2012 EM training stack in the layout the original EM training script read.

Usage:
    python pre-processing/em_isbi.py SRC OUT [--val-sections 5] [--foreground cell|membrane]

SRC: the raw ISBI data, any layout EM_BASE/em_data.py:read_isbi accepts (a folder holding
train-volume.tif + train-labels.tif, the volume TIFF itself, train/image + train/label PNG folders,
or image + label folders). Each section gets the paper's geometry (512x512 -> 256x256, bilinear
image / nearest label, centre crop 200x200 = box 28..228); the LAST --val-sections sections are
validation. OUT (new or empty) receives data/ + mask/ (training), val_img/ + val_mask/ (validation),
PNGs named by section index (0.png, 1.png, ...; masks 0/255, 255 = the --foreground class), and
manifest.csv (section, split, name, image_source, label_source, foreground).

Point an EM config at OUT with data_source: real, data_path: OUT. Errors are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from unetq.data import DataError, require_empty_folder
from unetq.paths import base_module

SUBDIRS = {"train": ("data", "mask"), "val": ("val_img", "val_mask")}


def load_em_datasets():
    """EM_BASE/em_data.py (unetq.paths.base_module), so that this script reads and splits exactly as
    training does."""
    return base_module("EM_BASE")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="ISBI 2012 EM -> data/ mask/ val_img/ val_mask/ PNG folders "
                                                 "at the paper's geometry (200x200).")
    parser.add_argument("src", type=Path, help="raw ISBI data (folder or train-volume.tif)")
    parser.add_argument("out", type=Path, help="output folder (must be new or empty)")
    parser.add_argument("--val-sections", type=int, default=5,
                        help="the last N sections go to validation (default 5: train 0-24, val 25-29)")
    parser.add_argument("--foreground", choices=("cell", "membrane"), default="cell",
                        help="class written as 255 in the masks (default cell, as in ISBI)")
    return parser.parse_args(argv)


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a grayscale PNG."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)  # 2-D uint8 -> mode L


def write_sections(em, src: Path, out: Path, val_sections: int, foreground: str) -> int:
    """Read, transform and write everything; returns the number of sections written."""
    from tqdm import tqdm

    images, labels, names, sources = em.read_isbi_with_sources(src)
    train_idx, val_idx = em.split_sections(len(images), val_sections)  # refuse a bad split before writing
    images, labels = em.paper_geometry(images, labels)
    masks = 1 - labels if foreground == "membrane" else labels
    for image_dir, mask_dir in SUBDIRS.values():
        (out / image_dir).mkdir(parents=True, exist_ok=True)
        (out / mask_dir).mkdir(exist_ok=True)
    rows = []
    splits = [("train", i) for i in train_idx] + [("val", i) for i in val_idx]
    for split, i in tqdm(splits, desc="sections", disable=len(splits) <= 8, file=sys.stderr):
        image_dir, mask_dir = SUBDIRS[split]
        write_png(out / image_dir / f"{i}.png", np.round(images[i] * 255.0))
        write_png(out / mask_dir / f"{i}.png", masks[i] * 255)
        rows.append({"section": i, "split": split, "name": names[i], "image_source": sources[i][0],
                     "label_source": sources[i][1], "foreground": foreground})
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def write_atomically(em, args, out: Path) -> int:
    """Write into a temporary sibling folder, then rename it to ``out``: a failure part way (a full
    disk, Ctrl-C) leaves no half-written data set that a training run could mistake for a whole one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        count = write_sections(em, args.src, tmp, args.val_sections, args.foreground)
        os.replace(tmp, out)          # out is absent or empty, so the rename replaces it in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def main(argv=None) -> int:
    """Entry point: returns the exit status (0, or 2 with a one-line message on bad input)."""
    args = parse_args(argv)
    em = load_em_datasets()
    try:
        require_empty_folder(args.out)
        count = write_atomically(em, args, args.out)
    except (DataError, OSError) as err:
        print(f"em_isbi.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {count} sections (200x200, foreground={args.foreground}, last {args.val_sections} "
          f"for validation) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
