"""Pancreas-CT scans as stored -> arrays in one display orientation: the DICOM series reader, the
NIfTI reader and the reorientation by each file's own header (the first stage of the NIH pipeline;
nih_labels.py checks that a label fits its image).

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
    Every volume is put into one display orientation using its own header (:func:`to_display`):
    arrays [Z, H, W] of axial slices, rows anterior -> posterior, columns patient right -> left (the
    radiological view), slices inferior -> superior.

A case that cannot be used raises :class:`CaseError` (every NIH stage raises it);
``nih_prepare.prepare`` skips that case, records why and goes on with the others. Problems that
concern every case (no pydicom, bad options) raise DataError and stop the run.

Imported by its plain name ``nih_scans``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetq.data import DataError

DISPLAY_AXCODES = ("L", "P", "S")   # voxel (x, y, z) toward patient Left, Posterior, Superior
UNIT_TOLERANCE = 0.01               # ImageOrientationPatient: direction cosines of length 1 +- this


class CaseError(DataError):
    """One patient cannot be used; ``nih_prepare.prepare`` skips it and records the message."""


@dataclass
class Scan:
    """A volume as stored: array in NIfTI voxel order [x, y, z] and its voxel -> RAS+ mm affine."""

    array: np.ndarray
    affine: np.ndarray
    source: str
    files: list = field(default_factory=list)       # DICOM: the files in slice order
    positions: list = field(default_factory=list)   # DICOM: slice positions along the normal (mm)


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
