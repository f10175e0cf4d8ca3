"""GM challenge files: the names (``siteN-scXX-image.nii.gz``, ``siteN-scXX-mask-rR.nii.gz``; site,
subject and rater ids), the NIfTI reader, the one mask-value rule and the check that a mask lies on its
image's grid. gm_data.py builds the datasets from what this reads; gm_phantom.py writes files that
this reads back.

Imported by its plain name ``gm_nifti``, with GM_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetq.data import DataError, binary_mask


def parse_ids(value) -> list[int]:
    """``"1-3,5"``, ``5``, ``[1, 2]`` -> sorted unique ids in 1..99; ValueError otherwise."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    ids: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(item)
        text = str(item).strip()
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        low, high = (int(match[1]), int(match[2])) if match else (int(text), int(text))
        if not 1 <= low <= high <= 99:
            raise ValueError(text)
        ids.update(range(low, high + 1))
    if not ids:
        raise ValueError(value)
    return sorted(ids)


def format_ids(ids) -> str:
    """[1, 2, 3, 5] -> "1-3,5"."""
    ids, runs = sorted(set(ids)), []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


GM_LABEL = 1
WM_LABEL = 2        # some challenge copies also mark white matter


def label_volume(mask: np.ndarray, path) -> np.ndarray:
    """The one mask rule of every GM reader, training and validation alike: label values 0, 1 (gray
    matter) and 2 (white matter, in some copies) as they are; a binary 0/255 mask with 255 = gray
    matter (what :func:`unetq.data.binary_mask` reads for EM). Anything else (0/0.5, 0/3, ...) is
    refused: ``mask == 1`` would turn it into an empty target and a Dice of 0 without a word."""
    values = np.unique(mask)
    if set(values.tolist()) <= {0, GM_LABEL, WM_LABEL}:
        return mask.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return binary_mask(mask, str(path))
    found = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise DataError(f"{path}: a gray-matter mask must hold 0/1 (2 = white matter in some copies) or 0/255, "
                    f"found values {found}")


SAMPLE_FILES = ("t2s_uncropped.nii.gz", "t2s_uncropped_gmseg_manual.nii.gz")
IMAGE_RE = re.compile(r"site(\d+)-sc(\d+)-image\.nii(\.gz)?")
MASK_RE = re.compile(r"site(\d+)-sc(\d+)-mask-r(\d+)\.nii(\.gz)?")


@dataclass
class Subject:
    """The files of one subject of one site: its image and its masks by rater."""

    site: int
    subject: int
    image: Path | None = None
    masks: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"site{self.site}-sc{self.subject:02d}"


def scan_challenge(folder) -> dict[tuple[int, int], Subject]:
    """The challenge files of ``folder`` by (site, subject), names parsed, nothing read yet.

    Refuses a missing folder, a folder with no challenge files, a mask whose image is missing
    and two files for one role (``.nii`` beside ``.nii.gz``), naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (a GM challenge folder holds siteN-scXX-image.nii.gz "
                        f"+ siteN-scXX-mask-rR.nii.gz)")
    subjects: dict[tuple[int, int], Subject] = {}
    for path in sorted(folder.iterdir()):
        image, mask = IMAGE_RE.fullmatch(path.name), MASK_RE.fullmatch(path.name)
        match = image or mask
        if match is None or not path.is_file():
            continue
        key = (int(match[1]), int(match[2]))
        subj = subjects.setdefault(key, Subject(*key))
        held = subj.image if image else subj.masks.get(int(mask[3]))
        if held is not None:
            raise DataError(f"{folder}: two files for one volume: {held.name} and {path.name}")
        if image:
            subj.image = path
        else:
            subj.masks[int(mask[3])] = path
    if not subjects:
        hint = "; it holds the SCT sample: use data_source: sample" if (folder / SAMPLE_FILES[0]).is_file() else ""
        raise DataError(f"{folder}: no GM challenge files (expected siteN-scXX-image.nii.gz with "
                        f"siteN-scXX-mask-rR.nii.gz, e.g. site1-sc01-image.nii.gz, site1-sc01-mask-r1.nii.gz){hint}")
    for subj in subjects.values():
        if subj.image is None:
            first = subj.masks[min(subj.masks)]
            raise DataError(f"{first}: its image {subj.name}-image.nii.gz is missing")
    return subjects


def read_nifti(path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """A 3-D NIfTI volume as float32 [X, Y, Z] (scaling applied), its voxel size in mm and the
    header's voxel -> mm affine (4x4, to check that a mask lies on its image's grid).

    A 2-D file counts as one slice and trailing axes of length 1 are dropped; anything else that
    is not 3-D, and any unreadable or truncated file, raises DataError naming the file.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        kind = img.get_data_dtype()
        if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating) or kind == np.bool_):
            raise DataError(f"{path}: voxel type {kind} is not a real number type (expected integers or floats)")
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, float)
    except DataError:
        raise
    except Exception as err:  # nibabel raises many types (OSError, EOFError, zlib.error, ImageFileError ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: unreadable NIfTI file ({reason})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume (x, y, axial slices), got shape {tuple(data.shape)}")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: the volume holds NaN or infinite values")
    zooms = (zooms + (1.0, 1.0, 1.0))[:3]
    if not all(z > 0 for z in zooms[:2]):
        raise DataError(f"{path}: invalid voxel size {zooms} (the in-plane pixel size must be positive)")
    return data, zooms, affine


# A mask must lie on its image's grid. Headers store the affine in float32, so a copy written by
# another tool differs by rounding (1e-6 mm on the SCT sample); a genuine mismatch (a flip, a shift, a
# mask of another scan) moves the grid by a voxel or more. So: at most a tenth of the smallest voxel
# size anywhere in the volume (the largest displacement of an affine map over a box is at a corner).
GRID_TOLERANCE = 0.1


def grid_mismatch_mm(image_affine, mask_affine, shape) -> float:
    """The largest distance (mm) between where the two affines put one voxel of a ``shape`` volume."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij")).reshape(3, -1).T
    points = np.c_[corners, np.ones(len(corners))] @ (np.asarray(mask_affine) - np.asarray(image_affine)).T
    return float(np.max(np.linalg.norm(points[:, :3], axis=1)))


def check_same_grid(image_path, image_affine, mask_path, mask_affine, shape, zooms) -> None:
    """DataError naming both files when the mask's header puts it elsewhere than its image."""
    moved = grid_mismatch_mm(image_affine, mask_affine, shape)
    if moved > GRID_TOLERANCE * min(zooms[:2]):
        raise DataError(f"{mask_path}: its header places the mask up to {moved:.3g} mm away from its image "
                        f"{Path(image_path).name} (the voxel -> mm affines differ); a mask must share its image's "
                        f"grid (flipped, shifted or drawn on another scan?)")


def read_subject(subj: Subject) -> tuple[np.ndarray, dict, tuple]:
    """(image [X,Y,Z], {rater: mask values [X,Y,Z]}, voxel size) of one subject; the masks must
    exist and have the image's shape and grid (affine)."""
    if not subj.masks:
        raise DataError(f"{subj.image}: no mask files ({subj.name}-mask-rR.nii.gz) for this training or "
                        f"validation subject (the challenge's subjects 11-20 have none: leave them out of "
                        f"train_subjects / val_subjects)")
    image, zooms, affine = read_nifti(subj.image)
    masks = {}
    for rater, path in sorted(subj.masks.items()):
        mask, _, mask_affine = read_nifti(path)
        if mask.shape != image.shape:
            raise DataError(f"{path}: shape {'x'.join(map(str, mask.shape))} does not match its image "
                            f"{subj.image.name} ({'x'.join(map(str, image.shape))})")
        check_same_grid(subj.image, affine, path, mask_affine, image.shape, zooms)
        masks[rater] = label_volume(mask, path)
    return image, masks, zooms

