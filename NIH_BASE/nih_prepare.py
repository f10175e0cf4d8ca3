"""Checked Pancreas-CT volumes -> 2-D training slices: the options, the crop geometry, the intensity
rule and the pipeline :func:`prepare` shared by ``pre-processing/nih_pancreas.py`` and ``nih_data.py``.

Pipeline (:func:`prepare`)
    pancreas slices only -> optional in-plane resampling (``spacing_mm``) -> intensity (HU window
    to [0, 1], default -100..240; or the original's clip to [0, 255] HU + per-slice min-max stretch)
    -> ROI crop H x W (the paper's 112 x 176). Training slices are centred on their own pancreas;
    validation slices on a label-free centre (the mean training pancreas position relative to the
    body's bounding box), or on their own pancreas with ``val_crop: legacy_gt`` (the original, which
    leaks the validation label into the input). The patients come already split (nih_patients.py).

A case that cannot be used raises CaseError; :func:`prepare` skips it, records why and goes on with
the others, as it does for any unexpected exception of one case (recorded with its type). Problems
that concern every case (no pydicom, bad options) raise DataError and stop the run.

Imported by its plain name ``nih_prepare``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from unetq.data import DataError, resize, window

from nih_labels import BODY_HU, Case, Volume, load_case, pancreas_mask   # beside this file (sys.path)
from nih_scans import CaseError

PAPER_CROP = (112, 176)             # the paper's ROI, H x W
CROP_MULTIPLE = 8                   # the U-Net pools three times: each side must halve three times evenly


def crop_problem(size: int, name: str) -> str | None:
    """The one rule for a side of the ROI crop, for the config keys (nih_data.py) and the options
    alike: None when ``size`` is allowed, else the message, naming the side as ``name``."""
    if size >= CROP_MULTIPLE and size % CROP_MULTIPLE == 0:
        return None
    return (f"{name}: {size} is not allowed; allowed: a multiple of {CROP_MULTIPLE}, at least {CROP_MULTIPLE} "
            f"(the U-Net pools three times)")


@dataclass
class Options:
    """How slices are made (see the module docstring); defaults are the paper's geometry with the
    corrected intensity and validation crop."""

    label_value: int = 1
    hu_window: tuple = (-100.0, 240.0)
    intensity: str = "window"           # window | legacy_clip
    crop: tuple = PAPER_CROP
    spacing_mm: Optional[float] = None  # in-plane resampling; None: native spacing (the paper)
    val_crop: str = "body"              # body | legacy_gt

    def check(self) -> None:
        """DataError on an impossible option (before anything is read)."""
        if self.intensity not in ("window", "legacy_clip"):
            raise DataError(f"intensity {self.intensity!r}: allowed: window, legacy_clip")
        if self.val_crop not in ("body", "legacy_gt"):
            raise DataError(f"val_crop {self.val_crop!r}: allowed: body, legacy_gt")
        if not self.hu_window[1] > self.hu_window[0]:
            raise DataError(f"HU window {self.hu_window[0]:g}..{self.hu_window[1]:g}: the upper bound must "
                            f"exceed the lower one")
        for name, size in zip(("crop height", "crop width"), self.crop):
            problem = crop_problem(size, name)
            if problem:
                raise DataError(problem)
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise DataError(f"spacing_mm {self.spacing_mm}: must be a positive number of mm (or unset)")

    def describe(self) -> str:
        """One line for logs and the manifest's companion file."""
        if self.intensity == "window":
            shown = f"HU window {self.hu_window[0]:g}..{self.hu_window[1]:g} -> [0, 1]"
        else:
            shown = "legacy intensity (HU clipped to 0..255, per-slice min-max)"
        space = f", resampled to {self.spacing_mm:g} mm" if self.spacing_mm else ""
        return (f"{shown}, crop {self.crop[0]}x{self.crop[1]}{space}, validation crop "
                f"{'label-free (body prior)' if self.val_crop == 'body' else 'on its own label (legacy)'}")


@dataclass
class PreparedSlice:
    """One slice ready for training: image float32 [h, w] in [0, 1], mask uint8 {0, 1} and the
    manifest row (where it came from, the crop box in the slice's pixel grid)."""

    split: str
    image: np.ndarray
    mask: np.ndarray
    row: dict


@dataclass
class Report:
    """What :func:`prepare` did: patients used per split, slices, skipped cases with the reason."""

    patients: dict = field(default_factory=lambda: {"train": [], "val": []})
    slices: dict = field(default_factory=lambda: {"train": 0, "val": 0})
    skipped: list = field(default_factory=list)      # ("patient NNNN", reason)
    prior: Optional[tuple] = None                     # mean training pancreas centre relative to the body
    kept: dict = field(default_factory=lambda: {"train": [], "val": []})   # pancreas fraction inside crops

    def summary(self) -> str:
        """'N train slices (P patients), M validation slices (Q patients), K case(s) skipped'."""
        def patients(split):
            n = len(self.patients[split])
            return f"{n} patient{'' if n == 1 else 's'}"
        return (f"{self.slices['train']} train slices ({patients('train')}), {self.slices['val']} validation "
                f"slices ({patients('val')}), {len(self.skipped)} case(s) skipped")


# --------------------------------------------------------------------------- slice geometry and intensity

def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right) of a non-empty 2-D mask; bottom/right exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def box_centre(box) -> tuple[float, float]:
    """Centre (row, col) of a box in pixel coordinates (pixel i has its centre at i)."""
    top, left, bottom, right = box
    return (top + bottom - 1) / 2.0, (left + right - 1) / 2.0


def body_box(hu: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box of the body on an axial slice: the largest connected region above -500 HU
    (the table and other loose objects are smaller and separate). The whole slice when there is none."""
    labels, count = ndimage.label(hu > BODY_HU)
    if count == 0:
        return 0, 0, hu.shape[0], hu.shape[1]
    biggest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    rows, cols = ndimage.find_objects(labels)[biggest - 1]
    return rows.start, cols.start, rows.stop, cols.stop


class BodyPrior:
    """Where the pancreas sits inside the body: the mean over training slices of its box centre,
    relative to the body's box (0 = top/left edge, 1 = bottom/right). It places validation crops
    without looking at their labels."""

    def __init__(self):
        self.sum, self.count = np.zeros(2), 0

    @staticmethod
    def _extent(body) -> np.ndarray:
        top, left, bottom, right = body
        return np.array([max(bottom - 1 - top, 1), max(right - 1 - left, 1)], float)

    def add(self, centre, body) -> None:
        self.sum += (np.asarray(centre, float) - np.array(body[:2], float)) / self._extent(body)
        self.count += 1

    @property
    def relative(self) -> tuple[float, float]:
        if not self.count:
            raise DataError("no training slice: the validation crop has no prior to be placed by")
        return tuple(float(v) for v in self.sum / self.count)

    def centre(self, body) -> tuple[float, float]:
        """The crop centre this prior gives on a slice whose body box is ``body``."""
        point = np.array(body[:2], float) + np.array(self.relative) * self._extent(body)
        return float(point[0]), float(point[1])


def crop_origin(centre, size, shape) -> tuple[int, int]:
    """(top, left) of a ``size`` box centred on ``centre`` (row, col), moved inside the slice when it
    sticks out; on a slice smaller than the box the slice sits in the middle (padded)."""
    origin = []
    for c, s, n in zip(centre, size, shape):
        start = math.floor(c - (s - 1) / 2.0 + 0.5)
        origin.append(min(max(start, 0), n - s) if n >= s else -((s - n) // 2))
    return origin[0], origin[1]


def extract(array: np.ndarray, top: int, left: int, size, fill=0) -> np.ndarray:
    """The ``size`` window of a 2-D array at (top, left); parts outside the array are ``fill``."""
    out = np.full(size, fill, dtype=array.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size[0], array.shape[0]), min(left + size[1], array.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = array[r0:r1, c0:c1]
    return out


def legacy_intensity(hu: np.ndarray) -> np.ndarray:
    """The original's intensities: HU clipped to [0, 255], then min-max stretched over the slice."""
    clipped = np.clip(np.asarray(hu, np.float32), 0.0, 255.0)
    low, high = float(clipped.min()), float(clipped.max())
    if high <= low:
        return np.zeros_like(clipped)
    return ((clipped - low) / (high - low)).astype(np.float32)


def intensity(hu: np.ndarray, opts: Options) -> np.ndarray:
    """HU slice -> float32 [0, 1] by the chosen rule (air and padding map to 0 in both)."""
    if opts.intensity == "legacy_clip":
        return legacy_intensity(hu)
    return window(hu, *opts.hu_window)


def resample_slice(hu: np.ndarray, mask: np.ndarray, spacing, target: float):
    """Resample one slice to ``target`` mm pixels (bilinear HU, nearest mask); returns (hu, mask, spacing)."""
    shape = (max(1, round(hu.shape[0] * spacing[0] / target)), max(1, round(hu.shape[1] * spacing[1] / target)))
    if shape == hu.shape:
        return hu, mask, tuple(spacing)
    hu = resize(hu.astype(np.float32), shape)
    mask = resize(mask.astype(np.uint8), shape, nearest=True).astype(bool)
    return hu, mask, (target, target)


# --------------------------------------------------------------------------- the pipeline

def process_volume(volume: Volume, split: str, opts: Options, prior: BodyPrior) -> list[PreparedSlice]:
    """Every pancreas slice of one patient, cropped and scaled. Training slices are centred on
    their pancreas and feed ``prior``; validation slices are centred by ``prior`` (label-free) or,
    with ``val_crop: legacy_gt``, on their own pancreas. All checks run before the first slice, so a
    CaseError leaves nothing half done."""
    mask3 = pancreas_mask(volume, opts.label_value)
    out, pending = [], []
    for z in np.flatnonzero(mask3.any(axis=(1, 2))):
        hu, mask, spacing = volume.hu[z], mask3[z], volume.spacing[:2]
        if opts.spacing_mm:
            hu, mask, spacing = resample_slice(hu, mask, spacing, opts.spacing_mm)
            if not mask.any():
                continue                               # a sliver lost to downsampling
        body = body_box(hu)
        own = box_centre(box_of(mask))
        if split == "train":
            pending.append((own, body))
            centre, how = own, "gt"
        elif opts.val_crop == "legacy_gt":
            centre, how = own, "legacy_gt"
        else:
            centre, how = prior.centre(body), "body"
        top, left = crop_origin(centre, opts.crop, hu.shape)
        image = extract(intensity(hu, opts), top, left, opts.crop, 0.0)
        crop_mask = extract(mask.astype(np.uint8), top, left, opts.crop, 0)
        slice_index = int(z) + volume.z_offset
        out.append(PreparedSlice(split, image, crop_mask, {
            "name": f"{volume.patient}_{slice_index:04d}", "patient": volume.patient, "slice": slice_index,
            "split": split, "crop_top": top, "crop_left": left, "crop_bottom": top + opts.crop[0],
            "crop_right": left + opts.crop[1], "centred_on": how, "pancreas_pixels": int(mask.sum()),
            "pancreas_kept": round(float(crop_mask.sum()) / float(mask.sum()), 4),
            "spacing_row_mm": round(float(spacing[0]), 5), "spacing_col_mm": round(float(spacing[1]), 5),
            "image_source": volume.image_source, "label_source": volume.label_source}))
    for own, body in pending:                          # only a fully processed patient informs the prior
        prior.add(own, body)
    return out


def prepare(train_cases: list[Case], val_cases: list[Case], opts: Options, sink: Callable[[PreparedSlice], None],
            skipped: list[Case] = (), progress: Callable[[str], None] | None = None) -> Report:
    """Run the pipeline over already split cases: training patients first (they build the crop
    prior), then validation patients. Each slice goes to ``sink``; a case raising CaseError is
    skipped and recorded; ``skipped`` lists cases already known to be unusable (discovery). Any
    other exception from one case (a reader's bug, a file nothing checked for) is recorded the same
    way with its type, so one bad patient never stops the batch; a DataError that is not a
    CaseError concerns every case (pydicom missing) and stops it. DataError when no training or no
    validation slice remains."""
    opts.check()
    report = Report(skipped=[(f"patient {c.patient}", c.problem) for c in skipped])
    prior = BodyPrior()
    for split, cases in (("train", train_cases), ("val", val_cases)):
        if split == "val":
            _require_slices(report, "train")           # the validation crops need the training prior
        for case in cases:
            try:
                volume = case.load(case) if case.load else load_case(case)
                slices = process_volume(volume, split, opts, prior)
            except CaseError as err:
                report.skipped.append((f"patient {case.patient}", str(err)))
            except DataError:
                raise                                  # not this case's fault: every case would fail
            except Exception as err:                   # noqa: BLE001 - one case's surprise must not end the batch
                report.skipped.append((f"patient {case.patient}", _unexpected(case, err)))
            else:
                for item in slices:
                    sink(item)
                    report.kept[split].append(item.row["pancreas_kept"])
                report.patients[split].append(case.patient)
                report.slices[split] += len(slices)
            if progress:
                progress(case.patient)
    _require_slices(report, "val")
    report.prior = prior.relative if prior.count else None
    return report


def _unexpected(case: Case, err: Exception) -> str:
    """One line for an exception no check anticipated: the case's files, the type and the message."""
    files = " + ".join(str(p) for p in (case.image, case.label) if p is not None) or f"patient {case.patient}"
    text = " ".join(str(err).split()) or "no message"
    return f"{files}: unexpected error while reading or processing ({type(err).__name__}: {text})"


def _require_slices(report: Report, split: str) -> None:
    """DataError, with the first reasons cases were skipped, when a split came out empty."""
    if not report.slices[split]:
        reasons = "; ".join(reason for _, reason in report.skipped[:3]) or "no pancreas slices"
        word = "training" if split == "train" else "validation"
        raise DataError(f"no {word} slice could be prepared ({reasons})")


class Collector:
    """A sink keeping the prepared slices in memory, per split."""

    def __init__(self):
        self.items = {"train": [], "val": []}

    def __call__(self, item: PreparedSlice) -> None:
        self.items[item.split].append(item)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """(images float32 [N,h,w], masks uint8 [N,h,w], names, spacings [N,2] mm) of one split."""
        items = self.items[split]
        return (np.stack([i.image for i in items]), np.stack([i.mask for i in items]),
                [i.row["name"] for i in items],
                np.array([[i.row["spacing_row_mm"], i.row["spacing_col_mm"]] for i in items], float))
