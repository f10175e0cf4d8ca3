"""The Pancreas-CT patients of a folder and their split: images (DICOM folders ``PANCREAS_NNNN/`` or
NIfTI files) paired with their labels ``labelNNNN.nii.gz`` by the number NNNN, the list of patients left
out, and the deterministic split by patient (the last ``val_fraction`` of them by number validate).

Imported by its plain name ``nih_patients``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from unetq.data import DataError

from nih_labels import Case   # beside this file (sys.path)

DICOM_DIR = re.compile(r"^pancreas[_-]?(\d+)$", re.IGNORECASE)
IMAGE_FILE = re.compile(r"^(?:pancreas[_-]?|image[_-]?|img[_-]?)(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
LABEL_FILE = re.compile(r"^label[_-]?(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


def _number(match) -> int:
    return int(match.group(1))


def _walk_entries(root: Path):
    """(path, is_dir) of everything below ``root``, not descending into DICOM patient folders."""
    for current, dirs, names in os.walk(root):
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if DICOM_DIR.match(d):
                yield Path(current) / d, True
            else:
                keep.append(d)
        dirs[:] = keep
        for n in sorted(names):
            if not n.startswith("."):
                yield Path(current) / n, False


def parse_exclude(text) -> set[int]:
    """'25,70' -> {25, 70}; None, '' or 'none' -> set(). DataError on anything else."""
    if text is None or str(text).strip().lower() in ("", "none", "null"):
        return set()
    try:
        return {int(part) for part in re.split(r"[,\s]+", str(text).strip()) if part}
    except ValueError:
        raise DataError(f"exclude list {text!r}: expected patient numbers separated by commas, e.g. 25,70") from None


def find_cases(src, labels=None, exclude=()) -> tuple[list[Case], list[Case], list[int]]:
    """Pancreas-CT cases below ``src``: (usable cases by patient number, problem cases, excluded numbers).

    Images: DICOM folders ``PANCREAS_NNNN/`` or NIfTI files ``PANCREAS_NNNN.nii[.gz]`` /
    ``imageNNNN.nii[.gz]``, any depth below ``src``. Labels: ``labelNNNN.nii[.gz]`` any depth below
    ``labels`` (default ``src``). Paired by the number NNNN. A label without an image, an image
    without a label, or two of either for one number makes a problem case (skipped, reported).
    """
    src = Path(src)
    label_root = Path(labels) if labels is not None else src
    for root, what in ((src, "image folder"), (label_root, "label folder")):
        if not root.is_dir():
            raise DataError(f"{root}: no such folder ({what})")
    images, label_files = {}, {}
    for path, is_dir in _walk_entries(src):
        match = DICOM_DIR.match(path.name) if is_dir else IMAGE_FILE.match(path.name)
        if match:
            images.setdefault(_number(match), []).append(path)
    for path, is_dir in _walk_entries(label_root):
        match = None if is_dir else LABEL_FILE.match(path.name)
        if match:
            label_files.setdefault(_number(match), []).append(path)
    if not images and not label_files:
        raise DataError(f"{src}: no Pancreas-CT cases found (expected PANCREAS_NNNN/ DICOM folders or "
                        f"PANCREAS_NNNN.nii.gz / imageNNNN.nii.gz images, and labelNNNN.nii.gz labels)")
    exclude = set(exclude)
    cases, problems, excluded = [], [], []
    for number in sorted(set(images) | set(label_files)):
        if number in exclude:
            excluded.append(number)
            continue
        found_images, found_labels = images.get(number, []), label_files.get(number, [])
        case = Case(f"{number:04d}", number, found_images[0] if found_images else None,
                    found_labels[0] if found_labels else None)
        case.problem = _pairing_problem(number, found_images, found_labels, src, label_root)
        (problems if case.problem else cases).append(case)
    return cases, problems, excluded


def _pairing_problem(number: int, images: list, labels: list, src: Path, label_root: Path) -> str | None:
    if not images:
        return (f"{labels[0]}: a label without an image (no PANCREAS_{number:04d}/ folder or "
                f"PANCREAS_{number:04d}.nii.gz below {src})")
    if not labels:
        return f"{images[0]}: an image without a label (no label{number:04d}.nii.gz below {label_root})"
    for kind, found in (("images", images), ("labels", labels)):
        if len(found) > 1:
            return f"patient {number}: {len(found)} {kind} ({', '.join(str(p) for p in found[:3])}); keep one"
    return None


def split_patients(cases: list[Case], val_fraction: float) -> tuple[list[Case], list[Case]]:
    """Deterministic split by patient: sorted by patient number, the last round(n * val_fraction)
    (at least 1, at most n - 1) validate. 80 patients at 0.1: the last 8."""
    if len(cases) < 2:
        raise DataError(f"a patient-level split needs at least 2 usable patients, found {len(cases)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction {val_fraction}: must lie strictly between 0 and 1")
    ordered = sorted(cases, key=lambda c: (c.number if c.number is not None else math.inf, c.patient))
    n_val = min(len(ordered) - 1, max(1, math.floor(len(ordered) * val_fraction + 0.5)))
    return ordered[:-n_val], ordered[-n_val:]
