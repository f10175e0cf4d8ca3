"""Pancreas-CT (NIH / TCIA) volumes -> 2-D training slices: the readers, the label check and the
pipeline shared by ``pre-processing/nih_pancreas.py`` and ``NIH_BASE/nih_data.py``.

Reading
    DICOM series (pydicom, optional; a clear message when it is missing): one folder per patient
    (``PANCREAS_0001/.../*.dcm``, any depth); slices sorted by their position along the slice
    normal (not by file name or InstanceNumber); HU = stored * RescaleSlope + RescaleIntercept.
    Refused, naming the folder or file: mixed series, a modality other than CT, missing or
    duplicated slices, a malformed geometry header (PixelSpacing not 2 positive numbers,
    ImagePositionPatient not 3, ImageOrientationPatient not 6 or degenerate), inconsistent
    geometry, undecodable pixels.
    NIfTI (nibabel): images in HU, labels ``label0001.nii.gz`` (integer values; the pancreas is
    ``label_value``: 1 in NIH, 7 in the TotalSegmentator sample).

Orientation
    Every volume is put into one display orientation using its own header: arrays [Z, H, W] of
    axial slices, rows anterior -> posterior, columns patient right -> left (the radiological
    view), slices inferior -> superior. A label must then lie on its image's voxel grid; a label
    whose axes look transposed, flipped or shifted relative to the image is refused with a message
    saying which (never silently "fixed": a wrong guess would train on misplaced masks). Labels
    whose voxels fall mostly in air are refused as misaligned too, and so are labels whose DATA look
    flipped or transposed although the headers agree: their left-right / anterior-posterior flip
    or in-plane transpose fits the image's soft tissue clearly better (:func:`check_label_content`).

Pipeline (:func:`prepare`)
    pancreas slices only -> optional in-plane resampling (``spacing_mm``) -> intensity (HU window
    to [0, 1], default -100..240; or the original's clip to [0, 255] HU + per-slice min-max stretch)
    -> ROI crop H x W (the paper's 112 x 176). Training slices are centred on their own pancreas;
    validation slices on a label-free centre (the mean training pancreas position relative to the
    body's bounding box), or on their own pancreas with ``val_crop: legacy_gt`` (the original, which
    leaks the validation label into the input). Patients are split deterministically: the last
    ``val_fraction`` of them by patient number validate.

A case that cannot be used raises :class:`CaseError`; :func:`prepare` skips it, records why and goes
on with the others, as it does for any unexpected exception of one case (recorded with its type).
Problems that concern every case (no pydicom, bad options) raise DataError and stop the run.

Imported by its plain name ``nih_pancreas_ct``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from unetq.data import DataError, binary_mask, read_gray, resize, window

DISPLAY_AXCODES = ("L", "P", "S")   # voxel (x, y, z) toward patient Left, Posterior, Superior
AXIS_NAMES = ("columns (right -> left)", "rows (anterior -> posterior)", "slices (inferior -> superior)")
BODY_HU = -500.0                    # above: tissue; below: air (finds the body outline)
UNIT_TOLERANCE = 0.01               # ImageOrientationPatient: direction cosines of length 1 +- this
PAPER_CROP = (112, 176)             # the paper's ROI, H x W
LAYOUT = {"train": ("data", "mask"), "val": ("val_img", "val_mask")}
MANIFEST = "manifest.csv"
INFO = "preprocessing.json"

DICOM_DIR = re.compile(r"^pancreas[_-]?(\d+)$", re.IGNORECASE)
IMAGE_FILE = re.compile(r"^(?:pancreas[_-]?|image[_-]?|img[_-]?)(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
LABEL_FILE = re.compile(r"^label[_-]?(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


class CaseError(DataError):
    """One patient cannot be used; :func:`prepare` skips it and records the message."""


# --------------------------------------------------------------------------- data structures

@dataclass
class Scan:
    """A volume as stored: array in NIfTI voxel order [x, y, z] and its voxel -> RAS+ mm affine."""

    array: np.ndarray
    affine: np.ndarray
    source: str
    files: list = field(default_factory=list)       # DICOM: the files in slice order
    positions: list = field(default_factory=list)   # DICOM: slice positions along the normal (mm)


@dataclass
class Volume:
    """One patient in display orientation: hu float32 [Z, H, W], label integer [Z, H, W] (raw values),
    spacing (row, col, slice) in mm. z_offset: index of slice 0 in the full scan."""

    patient: str
    hu: np.ndarray
    label: np.ndarray
    spacing: tuple
    image_source: str
    label_source: str
    z_offset: int = 0


@dataclass
class Case:
    """One patient to process: image + label files, or a custom ``load(case) -> Volume`` (phantom,
    sample blocks). ``problem`` set at discovery: the case is skipped with that message."""

    patient: str
    number: Optional[int] = None
    image: Optional[Path] = None
    label: Optional[Path] = None
    load: Optional[Callable[["Case"], Volume]] = None
    problem: Optional[str] = None


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
        if any(s < 8 or s % 8 for s in self.crop):
            raise DataError(f"crop {self.crop[0]}x{self.crop[1]}: height and width must be multiples of 8 "
                            f"(the U-Net pools three times), at least 8")
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


# --------------------------------------------------------------------------- DICOM

def _pydicom():
    """The optional DICOM reader, imported only when DICOM input is met."""
    try:
        import pydicom
    except ImportError:
        raise DataError("reading DICOM needs the optional package pydicom: pip install pydicom "
                        "(or convert the series to NIfTI and give those instead)") from None
    return pydicom


def _files_below(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, in a stable order."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return found


def _read_headers(folder: Path) -> list:
    """(path, dataset without pixels) of every DICOM file below ``folder``; other files are ignored."""
    pydicom = _pydicom()
    headers = []
    for path in _files_below(folder):
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except pydicom.errors.InvalidDicomError:
            continue                                    # not DICOM (a README, a thumbnail): not ours
        except Exception as err:                        # noqa: BLE001 - any reader failure is this file's
            raise CaseError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from None
    if not headers:
        raise CaseError(f"{folder}: no DICOM files found")
    return headers


def _attr(path: Path, ds, name: str):
    try:
        value = ds.get(name)
    except Exception as err:                            # noqa: BLE001 - pydicom converts values on access
        raise CaseError(f"{path}: DICOM attribute {name} cannot be read ({type(err).__name__}: {err})") from None
    if value is None or value == "":
        raise CaseError(f"{path}: DICOM attribute {name} is missing (needed to place the slice)")
    return value


def _numbers(path: Path, ds, name: str, count: int, meaning: str) -> np.ndarray:
    """A multi-valued numeric attribute as ``count`` finite floats, or CaseError naming the file
    (pydicom returns one value as a bare number, several as a list)."""
    value = _attr(path, ds, name)
    items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        numbers = np.array([float(v) for v in items], float)
    except (TypeError, ValueError):
        raise CaseError(f"{path}: DICOM attribute {name} is {value!r}, not numbers ({count} expected: "
                        f"{meaning})") from None
    if numbers.size != count or not np.isfinite(numbers).all():
        shown = "\\".join(f"{v:g}" for v in numbers)
        raise CaseError(f"{path}: DICOM attribute {name} has {numbers.size} value{'' if numbers.size == 1 else 's'} "
                        f"({shown}); expected {count} finite numbers ({meaning})")
    return numbers


def _check_orientation(path: Path, iop: np.ndarray) -> None:
    """CaseError unless ImageOrientationPatient holds two unit direction cosines at right angles:
    their cross product is the slice normal that orders the slices, so a degenerate one (parallel
    or zero directions) would put every slice at one position."""
    lengths = np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])
    normal = float(np.linalg.norm(np.cross(iop[:3], iop[3:])))
    if max(abs(n - 1.0) for n in lengths) > UNIT_TOLERANCE or abs(normal - 1.0) > UNIT_TOLERANCE:
        shown = "\\".join(f"{v:g}" for v in iop)
        raise CaseError(f"{path}: degenerate ImageOrientationPatient ({shown}): the row and column directions "
                        f"have lengths {lengths[0]:.3f} and {lengths[1]:.3f} and their cross product a norm of "
                        f"{normal:.3f} (all must be 1: unit vectors at right angles), so the slice normal and "
                        f"the slice order are undefined")


def _geometry(path: Path, ds) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(Rows, Columns, ImageOrientationPatient [6], PixelSpacing [2]) of one header, checked:
    two positive spacings and a usable orientation, else CaseError naming the file."""
    rows, cols = int(_attr(path, ds, "Rows")), int(_attr(path, ds, "Columns"))
    spacing = _numbers(path, ds, "PixelSpacing", 2, "row spacing, column spacing in mm")
    if not (spacing > 0).all():
        raise CaseError(f"{path}: DICOM attribute PixelSpacing is {spacing[0]:g}\\{spacing[1]:g}; both spacings "
                        f"must be positive (mm)")
    iop = _numbers(path, ds, "ImageOrientationPatient", 6, "row and column direction cosines")
    _check_orientation(path, iop)
    return rows, cols, iop, spacing


def _position(path: Path, ds) -> np.ndarray:
    """ImagePositionPatient: the x, y, z (mm, LPS) of the slice's first voxel."""
    return _numbers(path, ds, "ImagePositionPatient", 3, "x, y, z of the first voxel in mm")


def _check_series(folder: Path, headers: list) -> tuple[np.ndarray, np.ndarray]:
    """One CT series with one valid geometry, or CaseError naming the problem. Returns the series'
    (ImageOrientationPatient [6], PixelSpacing [2])."""
    uids = Counter(str(ds.get("SeriesInstanceUID", "?")) for _, ds in headers)
    if len(uids) > 1:
        shown = ", ".join(f"...{uid[-10:]} ({n} files)" for uid, n in uids.most_common(4))
        raise CaseError(f"{folder}: mixed series: {len(uids)} SeriesInstanceUIDs in one folder ({shown}); "
                        f"keep one CT series per patient folder")
    modalities = sorted({str(ds.get("Modality", "") or "missing") for _, ds in headers})
    if modalities != ["CT"]:
        raise CaseError(f"{folder}: modality {', '.join(modalities)}, not CT (Pancreas-CT needs CT images "
                        f"in Hounsfield units)")
    first_path, first = headers[0]
    reference = _geometry(first_path, first)
    for path, ds in headers[1:]:
        rows, cols, iop, spacing = _geometry(path, ds)      # every header: one malformed file refuses the case
        if (rows, cols) != reference[:2]:
            raise CaseError(f"{folder}: {path.name} is {rows}x{cols} but {first_path.name} is "
                            f"{reference[0]}x{reference[1]}; one series has one slice size")
        if not np.allclose(iop, reference[2], atol=1e-4) or not np.allclose(spacing, reference[3], rtol=1e-4):
            raise CaseError(f"{folder}: {path.name} has another orientation or pixel spacing than "
                            f"{first_path.name}; one series has one geometry")
    return reference[2], reference[3]


def _sort_by_position(folder: Path, headers: list, iop: np.ndarray,
                      pixel_spacing: np.ndarray) -> tuple[list, np.ndarray, float]:
    """Headers sorted along the slice normal of ``iop`` (checked by :func:`_check_series`), their
    positions (mm) and the slice step (mm). Duplicated, missing or irregularly spaced slices raise
    CaseError naming them."""
    ds0 = headers[0][1]
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([float(np.dot(_position(p, ds), normal)) for p, ds in headers])
    order = np.argsort(positions, kind="stable")
    headers, positions = [headers[i] for i in order], positions[order]
    if len(headers) == 1:
        return headers, positions, float(ds0.get("SliceThickness") or 1.0)
    gaps = np.diff(positions)
    pixel = float(np.min(pixel_spacing))
    name = [path.name for path, _ in headers]
    duplicated = np.flatnonzero(gaps < 1e-3 * pixel)
    if duplicated.size:
        i = duplicated[0]
        raise CaseError(f"{folder}: duplicated slice: {name[i]} and {name[i + 1]} are both at position "
                        f"{positions[i]:.2f} mm")
    step = float(np.median(gaps))
    missing = np.flatnonzero(gaps > 1.5 * step)
    if missing.size:
        i = missing[0]
        raise CaseError(f"{folder}: missing slice(s): a gap of {gaps[i]:.2f} mm between {name[i]} "
                        f"({positions[i]:.2f} mm) and {name[i + 1]} ({positions[i + 1]:.2f} mm) where the series "
                        f"steps {step:.2f} mm (about {int(round(gaps[i] / step)) - 1} slice(s) missing)")
    irregular = np.flatnonzero(np.abs(gaps - step) > 0.2 * step)
    if irregular.size:
        i = irregular[0]
        raise CaseError(f"{folder}: irregular slice spacing: {gaps[i]:.2f} mm after {name[i]} where the series "
                        f"steps {step:.2f} mm")
    return headers, positions, step


def _hu_pixels(path: Path, pydicom) -> np.ndarray:
    """One slice's pixels in HU (stored value * RescaleSlope + RescaleIntercept), float32 [rows, cols]."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:                            # noqa: BLE001 - any reader failure is this file's
        raise CaseError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from None
    try:
        pixels = ds.pixel_array
    except Exception as err:                            # noqa: BLE001 - decoder plug-ins raise anything
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise CaseError(f"{path}: cannot decode the pixel data (transfer syntax {syntax}: {err})") from None
    if pixels.ndim != 2:
        raise CaseError(f"{path}: expected one 2-D slice per file, got pixel data of shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_dicom_series(folder) -> Scan:
    """Read one CT series (all DICOM files below ``folder``) into HU.

    Slices are ordered by position along the slice normal (cross product of the two
    ImageOrientationPatient directions). The array is [x, y, z] = [column, row, slice] with a RAS+
    affine built from ImagePositionPatient, ImageOrientationPatient and PixelSpacing (DICOM is LPS,
    nibabel RAS: x and y change sign), so it goes through the same orientation code as NIfTI.
    """
    folder = Path(folder)
    pydicom = _pydicom()
    headers = _read_headers(folder)
    iop, (row_spacing, col_spacing) = _check_series(folder, headers)   # between rows, between columns
    headers, positions, step = _sort_by_position(folder, headers, iop, np.array([row_spacing, col_spacing]))
    slices = [_hu_pixels(path, pydicom) for path, _ in headers]
    shape = slices[0].shape
    for (path, _), s in zip(headers, slices):
        if s.shape != shape:
            raise CaseError(f"{path}: pixel data is {s.shape} but the series' first slice is {shape}")
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing            # x: along a row (column index)
    lps[:3, 1] = iop[3:] * row_spacing            # y: down a column (row index)
    lps[:3, 2] = np.cross(iop[:3], iop[3:]) * step
    lps[:3, 3] = _position(*headers[0])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    array = np.stack(slices, axis=-1).transpose(1, 0, 2)     # [row, col, slice] -> [x, y, z]
    return Scan(array, affine, str(folder), files=[p for p, _ in headers], positions=list(positions))


# --------------------------------------------------------------------------- NIfTI and orientation

def read_nifti(path, label: bool = False) -> Scan:
    """A 3-D NIfTI volume: float32 (images, scaling applied) or integers (labels, rounded)."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
        affine = np.asarray(img.affine, float)
    except Exception as err:                            # noqa: BLE001 - nibabel/gzip/zlib raise many types
        raise CaseError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: expected a 3-D volume, got shape {tuple(data.shape)}")
    if label and not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data).astype(np.int32)
    return Scan(np.asarray(data), affine, str(path))


def read_scan(path) -> Scan:
    """An image: a DICOM series folder or a NIfTI file."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise CaseError(f"{path}: not a DICOM folder or a NIfTI file")


def to_display(scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """The scan in display orientation: (array [Z, H, W], affine of its voxel axes (x=W, y=H, z=Z)).

    Rows run anterior -> posterior, columns patient right -> left, slices inferior -> superior,
    whatever the storage order, as the header describes it (axes permuted and flipped, no resampling).
    """
    from nibabel import orientations

    if not abs(np.linalg.det(scan.affine[:3, :3])) > 1e-9:
        raise CaseError(f"{scan.source}: the header has no usable orientation (singular affine)")
    transform = orientations.ornt_transform(orientations.io_orientation(scan.affine),
                                            orientations.axcodes2ornt(DISPLAY_AXCODES))
    array = orientations.apply_orientation(scan.array, transform)
    affine = scan.affine @ orientations.inv_ornt_aff(transform, scan.array.shape)
    return np.ascontiguousarray(array.transpose(2, 1, 0)), affine


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along x, y, z."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _grid(shape) -> str:
    return "x".join(str(n) for n in shape)


def check_alignment(image_shape, image_affine, label_shape, label_affine, where: str) -> None:
    """CaseError unless the label (in display orientation) lies on the image's voxel grid.

    Both shapes are [Z, H, W] and both affines come from :func:`to_display`; the message says
    whether the label looks transposed (same sizes in another order), flipped (its first voxel at
    the image's far end) or shifted, or has another voxel size.
    """
    image_shape, label_shape = tuple(image_shape), tuple(label_shape)
    if image_shape != label_shape:
        how = ("its axes look transposed relative to the image's"
               if sorted(image_shape) == sorted(label_shape) else "the grids differ")
        raise CaseError(f"{where}: the label's grid is {_grid(label_shape)} but the image's is {_grid(image_shape)} "
                        f"(slices x rows x columns, after applying both headers): {how}")
    image_vox, label_vox = voxel_sizes(image_affine), voxel_sizes(label_affine)
    if not np.allclose(image_vox, label_vox, rtol=0.01):
        raise CaseError(f"{where}: the label's voxel size {_grid(np.round(label_vox, 3))} mm differs from the image's "
                        f"{_grid(np.round(image_vox, 3))} mm (x, y, z)")
    cosines = np.sum((image_affine[:3, :3] / image_vox) * (label_affine[:3, :3] / label_vox), axis=0)
    if cosines.min() < 0.999:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, float(cosines.min())))))
        raise CaseError(f"{where}: the label's axes are turned {angle:.1f} degrees from the image's")
    offset = np.linalg.solve(image_affine[:3, :3], label_affine[:3, 3] - image_affine[:3, 3])   # image voxels
    if np.abs(offset).max() > 0.5:
        sizes = (image_shape[2], image_shape[1], image_shape[0])                                   # x, y, z
        flipped = [AXIS_NAMES[a] for a in range(3) if abs(abs(offset[a]) - (sizes[a] - 1)) <= 0.5]
        if flipped:
            raise CaseError(f"{where}: the label looks flipped along {' and '.join(flipped)} relative to the image "
                            f"(its header puts the first voxel at the image's far end)")
        shift = offset * image_vox
        raise CaseError(f"{where}: the label is shifted by ({shift[0]:.1f}, {shift[1]:.1f}, {shift[2]:.1f}) mm "
                        f"(x, y, z) from the image: not on the image's grid")


def _check_hu(hu: np.ndarray, where: str) -> None:
    """CT in Hounsfield units has air near -1000; refuse data that does not (windowed, raw stored values)."""
    low = float(hu.min())
    if low > BODY_HU:
        raise CaseError(f"{where}: the lowest value is {low:g}, not air in Hounsfield units (about -1000): give CT "
                        f"in HU (DICOM: RescaleSlope/Intercept are applied; NIfTI: stored as HU)")


def load_case(case: Case) -> Volume:
    """Read a case's image and label, bring both to display orientation and check they align."""
    image = read_scan(case.image)
    hu, image_affine = to_display(image)
    label = read_nifti(case.label, label=True)
    labels, label_affine = to_display(label)
    check_alignment(hu.shape, image_affine, labels.shape, label_affine, f"{case.label} vs {case.image}")
    _check_hu(hu, str(case.image))
    vox = voxel_sizes(image_affine)
    return Volume(case.patient, hu.astype(np.float32, copy=False), labels,
                  (float(vox[1]), float(vox[0]), float(vox[2])), str(case.image), str(case.label))


# --------------------------------------------------------------------------- finding cases

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


# --------------------------------------------------------------------------- slice geometry

def pancreas_mask(volume: Volume, label_value: int) -> np.ndarray:
    """Boolean [Z, H, W] of the pancreas; CaseError when it is empty, lies mostly in air or looks
    flipped or transposed in its data (:func:`check_label_content`)."""
    mask = volume.label == label_value
    if not mask.any():
        values = np.unique(volume.label)
        shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
        raise CaseError(f"{volume.label_source}: empty label: no voxel has the pancreas value {label_value} "
                        f"(values present: {shown})")
    inside = float(np.mean(volume.hu[mask] > BODY_HU))
    if inside < 0.5:
        raise CaseError(f"{volume.label_source}: {100 * (1 - inside):.0f} % of the pancreas voxels are air in the "
                        f"image: the label looks misaligned with {volume.image_source} (flipped or transposed?)")
    check_label_content(volume, mask)
    return mask


# A label flipped or transposed in its DATA (its header still the image's) passes check_alignment.
# Its content gives it away: a right pancreas label covers soft tissue and its edge follows the
# gland's edge (fat or gas around it), so the tissue share drops from inside the label to a thin
# ring around it. A misplaced label sits on a mix of organs, fat and bowel with no such step; its
# flip (or transpose) back does show the step. Measured on the real sample (3 mm) and 20 phantom
# patients (0.8 mm), see NIH_BASE/README.md: right labels beat every variant by 0.17 or more in contrast;
# flipped / transposed labels are beaten by their undoing variant by 0.17 to 0.64.
SOFT_TISSUE_HU = (-50.0, 250.0)   # pancreas-like: fatty to enhanced parenchyma; not fat (< -50), gas or bone
CONTENT_RING_MM = 4.0             # width of the ring around the label
CONTENT_MARGIN = 0.2              # a variant must gain at least this much contrast ...
CONTENT_MIN_FIT = 0.25            # ... reach at least this contrast itself ...
CONTENT_MIN_GAIN = 0.05           # ... hold a larger share of soft tissue by this much ...
CONTENT_SLICES = 2 / 3            # ... and win on this share of the pancreas slices
CONTENT_MIN_VOXELS = 50           # smaller labels: too few voxels to judge


def soft_tissue(plane: np.ndarray) -> np.ndarray:
    """Boolean [H, W] of one axial slice: HU in SOFT_TISSUE_HU inside the body (the largest
    connected region above -500 HU, so the table and loose objects do not count)."""
    labels, count = ndimage.label(plane > BODY_HU)
    if not count:
        return np.zeros(plane.shape, bool)
    body = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return body & (plane >= SOFT_TISSUE_HU[0]) & (plane <= SOFT_TISSUE_HU[1])


def _disc(radius: int) -> np.ndarray:
    """An in-plane disc structuring element [1, 2r+1, 2r+1]."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (yy ** 2 + xx ** 2 <= radius ** 2)[None]


def label_fit(tissue: np.ndarray, mask: np.ndarray, radius: int) -> tuple[float, float, np.ndarray]:
    """How well ``mask`` [Z, H, W] sits on ``tissue`` (soft tissue inside the body): (share of its
    voxels in tissue, that share minus the share in a ``radius``-pixel ring around it, the same
    contrast per slice). Every slice must hold some of ``mask``."""
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    box = (slice(None), slice(max(rows[0] - radius, 0), rows[-1] + radius + 1),
           slice(max(cols[0] - radius, 0), cols[-1] + radius + 1))
    m, t = mask[box], tissue[box]                       # the label's neighbourhood only: 512x512 slices are slow
    ring = ndimage.binary_dilation(m, _disc(radius)) & ~m
    n_in, n_ring = m.sum(axis=(1, 2)), np.maximum(ring.sum(axis=(1, 2)), 1)
    t_in, t_ring = (t & m).sum(axis=(1, 2)), (t & ring).sum(axis=(1, 2))
    inside = float(t_in.sum() / n_in.sum())
    return inside, inside - float(t_ring.sum() / n_ring.sum()), t_in / n_in - t_ring / n_ring


def content_variants(mask: np.ndarray) -> dict:
    """The label as it would be if its data had been flipped left-right, anterior-posterior or
    transposed in-plane (square slices only: otherwise the grids differ, which check_alignment
    refuses), by the wording of the message."""
    variants = {"flipped left-right": mask[:, :, ::-1], "flipped anterior-posterior": mask[:, ::-1, :]}
    if mask.shape[1] == mask.shape[2]:
        variants["transposed (rows and columns swapped)"] = mask.transpose(0, 2, 1)
    return variants


def check_label_content(volume: Volume, mask: np.ndarray) -> None:
    """CaseError when the label fits the image clearly worse than its own flip or transpose would
    (see the comment above): the label's data look flipped or transposed although the headers
    agree. Refused only when one variant gains CONTENT_MARGIN of contrast, reaches CONTENT_MIN_FIT,
    covers more soft tissue and wins on most slices; labels under CONTENT_MIN_VOXELS are not judged."""
    if mask.sum() < CONTENT_MIN_VOXELS:
        return
    zs = np.flatnonzero(mask.any(axis=(1, 2)))          # the pancreas slices only (in-plane variants keep them)
    m = mask[zs]
    tissue = np.stack([soft_tissue(volume.hu[z]) for z in zs])
    radius = max(1, int(round(CONTENT_RING_MM / min(volume.spacing[:2]))))
    given = label_fit(tissue, m, radius)
    best = None
    for name, variant in content_variants(m).items():
        fit = label_fit(tissue, variant, radius)
        clear = (fit[1] - given[1] >= CONTENT_MARGIN and fit[1] >= CONTENT_MIN_FIT
                 and fit[0] - given[0] >= CONTENT_MIN_GAIN and np.mean(fit[2] > given[2]) >= CONTENT_SLICES)
        if clear and (best is None or fit[1] > best[1][1]):
            best = (name, fit)
    if best is not None:
        name, fit = best
        wins = int(np.sum(fit[2] > given[2]))
        raise CaseError(f"{volume.label_source}: the label's data look {name} relative to {volume.image_source} "
                        f"although the headers agree: {_fit_text(given, True)}; {name}: {_fit_text(fit)}, better on "
                        f"{wins} of {len(zs)} slices; fix the label file (it is not flipped back automatically)")


def _fit_text(fit, full: bool = False) -> str:
    """'94 % against 53 % (contrast +0.40)', with what the numbers are when ``full``."""
    inside, ring = f"{100 * fit[0]:.0f} %", f"{100 * (fit[0] - fit[1]):.0f} %"
    if full:
        low, high = SOFT_TISSUE_HU
        inside = f"{inside} of its voxels lie in soft tissue ({low:g}..{high:g} HU)"
        ring = f"{ring} of a {CONTENT_RING_MM:g} mm ring around it"
    return f"{inside} against {ring} (contrast {fit[1]:+.2f})"


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


# --------------------------------------------------------------------------- the prepared layout on disk

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
