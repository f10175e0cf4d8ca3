"""One Pancreas-CT case read and checked: its image and label in display orientation (read by
nih_scans.py), the label on the image's voxel grid, the image in Hounsfield units, and the pancreas
mask checked against what the image shows (:func:`load_case`, :func:`pancreas_mask`).

A label whose axes look transposed, flipped or shifted relative to the image is refused with a message
saying which (never silently "fixed": a wrong guess would train on misplaced masks). Labels whose voxels
fall mostly in air are refused as misaligned too, and so are labels whose DATA look flipped or transposed
although the headers agree: their left-right / anterior-posterior flip or in-plane transpose fits the
image's soft tissue clearly better (:func:`check_label_content`). Each refusal is a CaseError.

Imported by its plain name ``nih_labels``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from nih_scans import CaseError, read_nifti, read_scan, to_display, voxel_sizes   # beside this file (sys.path)

AXIS_NAMES = ("columns (right -> left)", "rows (anterior -> posterior)", "slices (inferior -> superior)")
BODY_HU = -500.0                    # above: tissue; below: air (finds the body outline)


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


# --------------------------------------------------------------------------- one case: read, oriented, aligned

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


# --------------------------------------------------------------------------- the label's content

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
# flip (or transpose) back does show the step. Measured on the sample (3 mm) and 20 phantom
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
