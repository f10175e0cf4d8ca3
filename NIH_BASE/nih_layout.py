"""The prepared NIH folder on disk: ``data/`` + ``mask/`` (training) and ``val_img/`` + ``val_mask/``
(validation) of PNG slices, ``manifest.csv`` (one row per slice) and ``preprocessing.json`` (options,
body prior, patients, skipped cases). ``pre-processing/nih_pancreas.py`` writes it (:class:`FolderSink`),
``nih_data.py`` reads it (:func:`read_prepared`).

Imported by its plain name ``nih_layout``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from unetq.data import DataError, binary_mask, read_gray

from nih_prepare import Options, PreparedSlice, Report   # beside this file (sys.path)

LAYOUT = {"train": ("data", "mask"), "val": ("val_img", "val_mask")}
MANIFEST = "manifest.csv"
INFO = "preprocessing.json"


class FolderSink:
    """A sink writing the prepared layout: data/ + mask/ (training), val_img/ + val_mask/
    (validation); images as 16-bit PNG (value * 65535), masks 8-bit 0/255; names PATIENT_SLICE.png."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.rows = []
        for image_dir, mask_dir in LAYOUT.values():
            (self.root / image_dir).mkdir(parents=True, exist_ok=True)
            (self.root / mask_dir).mkdir(exist_ok=True)

    def __call__(self, item: PreparedSlice) -> None:
        from PIL import Image

        image_dir, mask_dir = LAYOUT[item.split]
        name = item.row["name"] + ".png"
        pixels = np.round(np.clip(item.image, 0.0, 1.0) * 65535.0).astype(np.uint16)
        Image.fromarray(pixels).save(self.root / image_dir / name)
        Image.fromarray((item.mask * 255).astype(np.uint8)).save(self.root / mask_dir / name)
        self.rows.append(item.row)

    def finish(self, opts: Options, report: Report, extra: dict) -> None:
        """Write manifest.csv (one row per slice) and preprocessing.json (options, prior, patients,
        skipped cases)."""
        with open(self.root / MANIFEST, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        info = {"options": {"label_value": opts.label_value, "hu_window": list(opts.hu_window),
                            "intensity": opts.intensity, "crop": list(opts.crop), "spacing_mm": opts.spacing_mm,
                            "val_crop": opts.val_crop},
                "description": opts.describe(), "body_prior": report.prior,
                "patients": report.patients, "slices": report.slices,
                "skipped": [{"case": str(case), "reason": reason} for case, reason in report.skipped], **extra}
        (self.root / INFO).write_text(json.dumps(info, indent=2) + "\n")


def is_prepared(path) -> bool:
    """Whether ``path`` holds the prepared layout (data/ and val_img/)."""
    return (Path(path) / "data").is_dir() and (Path(path) / "val_img").is_dir()


def _pngs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        expected = ", ".join(d + "/" for pair in LAYOUT.values() for d in pair)
        raise DataError(f"{folder}: missing (a prepared NIH folder has {expected})")
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")}


def read_prepared(path) -> dict:
    """Read a prepared folder (written by pre-processing/nih_pancreas.py).

    Returns {split: (images float32 [N,h,w] in [0,1], masks uint8 {0,1}, names, spacings [N,2] mm
    (NaN when no manifest))} for split in train, val, plus "info" (preprocessing.json or {}).
    Images and masks are paired by file name; an unpaired file or a size mismatch is refused.
    """
    root = Path(path)
    spacing = {}
    if (root / MANIFEST).is_file():
        with open(root / MANIFEST, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    spacing[row["name"]] = (float(row["spacing_row_mm"]), float(row["spacing_col_mm"]))
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{root / MANIFEST}: a row without name/spacing_row_mm/spacing_col_mm "
                                    f"({row})") from None
    out = {}
    for split, (image_dir, mask_dir) in LAYOUT.items():
        images, masks = _pngs(root / image_dir), _pngs(root / mask_dir)
        alone = sorted(set(images) ^ set(masks))
        if alone:
            raise DataError(f"{root}: {len(alone)} file(s) in {image_dir}/ or {mask_dir}/ without a partner: "
                            f"{', '.join(alone[:5])}.png")
        if not images:
            raise DataError(f"{root / image_dir}: no PNG slices")
        names = sorted(images)
        out[split] = _read_pairs(images, masks, names, spacing)
    info_path = root / INFO
    out["info"] = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return out


def _read_pairs(images: dict, masks: dict, names: list, spacing: dict) -> tuple:
    xs, ys = [], []
    for name in names:
        x, y = read_gray(images[name]), read_gray(masks[name])
        if x.shape != y.shape or (xs and x.shape != xs[0].shape):
            raise DataError(f"{images[name]}: size {x.shape} does not match its mask {y.shape} or the other slices")
        if x.dtype not in (np.uint8, np.uint16):
            raise DataError(f"{images[name]}: expected an 8- or 16-bit grayscale PNG, got {x.dtype}")
        xs.append(x.astype(np.float32) / np.iinfo(x.dtype).max)
        ys.append(binary_mask(y, str(masks[name])))     # the rule of every reader: 0/255 or 0/1, else refused
    spacings = np.array([spacing.get(n, (np.nan, np.nan)) for n in names], float)
    return np.stack(xs), np.stack(ys), names, spacings
