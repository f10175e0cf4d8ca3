"""GM data: the Spinal Cord Gray Matter Segmentation challenge 2016 (MRI), its NIfTI reader, the
paper's slice pipeline and split, the real SCT sample and a synthetic phantom.

Sources (config key ``data_source``):
    phantom  ``write_phantom``: synthetic cord cross-sections written as challenge-named NIfTI files
             into a temporary folder and read back with the same reader as real data (no data needed)
    sample   one real T2* scan, ``../shared/data/scgm_sct_t2s`` (developers' machines only): one
             subject, one rater, so the split is BY SLICE (not the paper's protocol; see build_datasets)
    real     ``data_path``: a challenge folder of ``siteN-scXX-image.nii.gz`` +
             ``siteN-scXX-mask-rR.nii.gz`` (site N, subject XX, rater R)

Pipeline (the paper's, after the original medicaltorch-style code): axial slices along axis 2;
target = gray matter (mask == 1; some copies mark white matter = 2); one (image, mask) pair per rater
(or a majority-vote mask: ``rater_mode``); subjects 1-8 train, 9-10 validate (``train_subjects``,
``val_subjects``, over ``sites``); each slice optionally resampled to ``resample_mm`` in-plane (the
paper: 0.25 mm), centre-cropped to ``crop_size`` (zero padding); training slices without gray matter
or with an all-zero input are dropped, validation slices are all kept. Training augmentation (elastic,
random affine, channel shift) and per-slice instance normalisation run per item (unetq.transforms).

Imported by its plain name ``gm_data``, with GM_BASE on sys.path (the script's folder; tests and
tools use unetq.paths.base_module). ``python gm_data.py phantom DIR`` writes the phantom files.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetq.config import ConfigError, Field
from unetq.data import DataBundle, DataError, SliceDataset, binary_mask
from unetq.paths import PROJECT_ROOT, shared_data_dir
from unetq.transforms import (CenterCrop, ChannelShift, Compose, ElasticTransform, InstanceNorm, RandomAffine,
                              resample)


# --------------------------------------------------------------------------- config keys

@dataclass(frozen=True)
class IdsField(Field):
    """A config key holding a set of ids (sites, subjects): ``1-8``, ``1,3,5``, ``[9, 10]``, or
    ``all`` when ``allow_all``. Stored in the canonical text form (``1-3,5``)."""

    allow_all: bool = False

    def allowed(self) -> str:
        return "ids 1-99 like 1-8 or 1,3,5" + (" or all" if self.allow_all else "")

    def _parse_ids(self, value):
        if self.allow_all and str(value).strip().lower() == "all":
            return "all"
        try:
            ids = parse_ids(value)
        except ValueError:
            raise ValueError("is not a list of ids") from None
        return format_ids(ids)


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


FIELDS: tuple[Field, ...] = (
    IdsField("sites", "ids", "all", "challenge sites used (all = every site found)", allow_all=True),
    IdsField("train_subjects", "ids", "1-8", "subjects (XX of scXX) that train, every chosen site (the paper: 1-8)"),
    IdsField("val_subjects", "ids", "9-10", "subjects that validate (the paper: 9-10)"),
    Field("rater_mode", "choice", "each",
          "each: one (image, mask) pair per rater (the paper) | majority: one pair per slice, gray matter "
          "where more than half of the raters marked it", choices=("each", "majority")),
    Field("resample_mm", "float", 0.25,
          "in-plane pixel size (mm) every slice is resampled to (the paper: 0.25); 0 keeps each site's own",
          low=0.0, high=10.0),
    Field("crop_size", "int", 200, "centre crop in pixels, zero padding where a slice is smaller (the paper: 200)",
          low=16, high=4096),
    Field("augment", "bool", True, "training augmentation: elastic (p 0.3), random affine, channel shift"),
    Field("sample_val_slices", "int", 3,
          "data_source sample (ONE subject): the LAST N of its slices validate (a split by slice, not the paper's)",
          low=1, high=1000),
    Field("phantom_subjects", "int", 10, "phantom subjects with masks per site (data_source: phantom)",
          low=1, high=99),
    Field("phantom_slices", "int", 10, "axial slices per phantom volume", low=2, high=500),
)

# The paper's training augmentation (docs/datasets.md, GM); validation gets the normalisation only.
TRAIN_AUGMENTATION = (ElasticTransform(alpha_range=(28.0, 30.0), sigma_range=(3.5, 4.0), p=0.3),
                      RandomAffine(degrees=4.6, translate=(0.03, 0.03), scale=(0.98, 1.02), order=0),
                      ChannelShift(-0.1, 0.1))
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


# --------------------------------------------------------------------------- reading NIfTI

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
# another tool differs by rounding (1e-6 mm on the SCT sample); a real mismatch (a flip, a shift, a
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


def majority(masks: list[np.ndarray]) -> np.ndarray:
    """Voxels marked by MORE than half of the binary ``masks`` (a 2-2 tie of 4 raters is background)."""
    return (2 * np.sum(masks, axis=0) > len(masks)).astype(np.uint8)


# --------------------------------------------------------------------------- slices

@dataclass
class SliceSet:
    """Slices as fed to the network, with their spacing (mm, rows/cols) and names."""

    images: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    spacings: list = field(default_factory=list)
    names: list = field(default_factory=list)
    dropped_no_gm: int = 0
    dropped_empty_input: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def dataset(self, transform, seed: int) -> SliceDataset:
        return SliceDataset(np.stack(self.images), np.stack(self.masks), self.names,
                            np.asarray(self.spacings), transform=transform, seed=seed)


def add_volume(out: SliceSet, image: np.ndarray, labels: dict, zooms: tuple, prefix: str, cfg,
               filtered: bool, slices=None) -> None:
    """Append the axial slices (axis 2) of one volume to ``out``: one pair per entry of ``labels``
    ({tag: binary target [X,Y,Z]}), resampled to cfg.resample_mm and centre-cropped to cfg.crop_size.
    ``filtered`` drops pairs with no gray matter or an all-zero input (training)."""
    crop = CenterCrop(cfg.crop_size, cfg.crop_size)
    for k in range(image.shape[2]) if slices is None else slices:
        img, spacing = image[:, :, k], zooms[:2]
        if cfg.resample_mm > 0:
            img, new_spacing = resample(img, spacing, cfg.resample_mm)
        for tag, target in labels.items():
            mask = target[:, :, k].astype(np.uint8)
            if cfg.resample_mm > 0:
                mask, _ = resample(mask, spacing, cfg.resample_mm, nearest=True)
            c_img, c_mask = crop(img, mask)
            if filtered and not c_img.any():
                out.dropped_empty_input += 1
                continue
            if filtered and not c_mask.any():
                out.dropped_no_gm += 1
                continue
            out.images.append(c_img.astype(np.float32))
            out.masks.append(c_mask)
            out.spacings.append(new_spacing if cfg.resample_mm > 0 else spacing)
            out.names.append(f"{prefix}-{tag}-z{k:02d}")


def targets(masks: dict, rater_mode: str) -> dict:
    """{tag: gray-matter target} of one subject: one per rater ('r1'...) or the majority ('maj')."""
    gm = {f"r{r}": (m == GM_LABEL) for r, m in masks.items()}
    if rater_mode == "majority":
        return {"maj": majority(list(gm.values()))}
    return gm


def mask_values(masks: dict) -> set:
    """The distinct values found in the mask volumes (logged: GM = 1, some copies mark WM = 2)."""
    values: set = set()
    for m in masks.values():
        values.update(np.unique(m).tolist())
    return values


# --------------------------------------------------------------------------- phantom

# site: (in-plane mm, slice mm, matrix rows x cols): challenge-like geometries, one per "site".
PHANTOM_SITES = {
    1: (0.5, 5.0, (100, 100)),
    2: (0.5, 7.5, (128, 112)),
    3: (0.25, 2.5, (200, 200)),
    4: (0.3, 5.0, (160, 160)),
}
WM_LABEL_SITE = 4       # this site's masks also mark white matter = 2, as some challenge copies do
PHANTOM_RATERS = 4

# Gray-matter "butterfly" in the cord's frame, as fractions of the cord's half-axes:
# (centre x, centre y, radius x, radius y, tilt in degrees); x is left-right, y grows dorsally.
_BUTTERFLY = (
    (0.0, 0.02, 0.30, 0.08, 0.0),       # grey commissure
    (-0.20, 0.02, 0.12, 0.28, 0.0),     # intermediate columns
    (0.20, 0.02, 0.12, 0.28, 0.0),
    (-0.30, -0.32, 0.15, 0.27, -30.0),  # ventral horns, broad
    (0.30, -0.32, 0.15, 0.27, 30.0),
    (-0.22, 0.42, 0.07, 0.36, 25.0),    # dorsal horns, thin
    (0.22, 0.42, 0.07, 0.36, -25.0),
)


def _ellipse_level(x, y, cx, cy, rx, ry, tilt_deg):
    """~signed distance (mm) to an ellipse: negative inside. (r - 1) * min radius is exact for a
    circle and close enough near the boundary of a mild ellipse."""
    t = np.deg2rad(tilt_deg)
    dx, dy = x - cx, y - cy
    u = (np.cos(t) * dx + np.sin(t) * dy) / rx
    v = (-np.sin(t) * dx + np.cos(t) * dy) / ry
    return (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)


@functools.lru_cache(maxsize=64)
def _spread(n: int, cells: int) -> np.ndarray:
    """[n, cells + 1] Gaussian weights spreading ``cells + 1`` coarse nodes over ``n`` pixels."""
    pos = np.linspace(0.0, cells, n)[:, None] - np.arange(cells + 1)[None, :]
    w = np.exp(-0.5 * (pos / 0.6) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _smooth(rng, shape, cells: int) -> np.ndarray:
    """A smooth random field of ~unit amplitude: coarse noise ((cells + 1)^2 nodes over the slice)
    spread by separable Gaussian weights (two small matrix products: cheaper than any filter)."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    field = _spread(shape[0], cells) @ coarse @ _spread(shape[1], cells).T
    return field / (field.std() + 1e-12)


def _anatomy(rng) -> dict:
    """Per-subject shape and contrast parameters."""
    return {"a": rng.uniform(5.5, 7.0), "b": rng.uniform(3.6, 4.6), "tilt": rng.uniform(-8, 8),
            "centre": rng.uniform(-1.5, 1.5, 2), "drift": rng.uniform(-0.1, 0.1, 2),
            "gm_scale": rng.uniform(0.9, 1.1, (len(_BUTTERFLY), 2)),
            "tones": {"wm": rng.uniform(0.40, 0.48), "gm": rng.uniform(0.58, 0.66), "csf": rng.uniform(0.85, 1.0),
                      "tissue": rng.uniform(0.25, 0.35), "bone": rng.uniform(0.08, 0.15)},
            "noise": rng.uniform(0.02, 0.04), "raters": rng.uniform(-0.15, 0.15, PHANTOM_RATERS)}


def _levels(anat: dict, k: int, n: int, spacing: float, shape: tuple) -> dict:
    """Signed-distance levels (mm, negative inside) of the structures on slice k of n."""
    rows, cols = shape
    swell = 1.0 + 0.08 * np.sin(np.pi * (k + 0.5) / n)          # the cord thickens mid-volume
    a, b = anat["a"] * swell, anat["b"] * swell
    cx, cy = anat["centre"] + anat["drift"] * k
    # NIfTI axis 0 runs left-right and axis 1 antero-posterior (as in the challenge and SCT files)
    x, y = np.meshgrid((np.arange(rows) - (rows - 1) / 2) * spacing, (np.arange(cols) - (cols - 1) / 2) * spacing,
                       indexing="ij")
    t = np.deg2rad(anat["tilt"])
    u = np.cos(t) * (x - cx) + np.sin(t) * (y - cy)             # the cord's own frame (mm)
    v = -np.sin(t) * (x - cx) + np.cos(t) * (y - cy)
    cord = _ellipse_level(u, v, 0, 0, a, b, 0)
    # the gray matter lies inside the cord: its ellipses are evaluated on the cord's bounding box only
    rr, cc = np.nonzero(cord < spacing)
    box = (slice(rr.min(), rr.max() + 1), slice(cc.min(), cc.max() + 1)) if len(rr) else (slice(0, 0),) * 2
    gm = np.full(shape, np.inf)
    for (px, py, rx, ry, tilt), (sx, sy) in zip(_BUTTERFLY, anat["gm_scale"]):
        gm[box] = np.minimum(gm[box], _ellipse_level(u[box], v[box], px * a, py * b, rx * a * sx, ry * b * sy, tilt))
    return {"cord": cord, "gm": np.maximum(gm, cord),             # gray matter stays inside the cord
            "csf": _ellipse_level(u, v, 0, 0.3, a * 1.35, b * 1.45, 0),
            "canal": _ellipse_level(u, v, 0, 0.3, a * 1.9, b * 2.1, 0),   # inner edge of the vertebral ring
            "bone": _ellipse_level(u, v, 0, 0.3, a * 2.5, b * 2.8, 0)}


def _phantom_slice(rng, anat: dict, k: int, n: int, spacing: float, shape: tuple) -> tuple[np.ndarray, dict]:
    """(image [rows, cols] in ~[0, 1], levels) of one axial slice. Slice 0 lies beyond the gray
    matter's extent: its cord is all white matter, so its empty masks are right, not a rater's gap."""
    lv = _levels(anat, k, n, spacing, shape)
    if k == 0:
        lv["gm"] = np.full(shape, np.inf)
    # partial volume: the covered fraction of a pixel, from the signed distance of its centre
    f = {name: np.clip(0.5 - level / spacing, 0.0, 1.0) for name, level in lv.items()}
    tone = anat["tones"]
    tissue = tone["tissue"] * (1 + 0.15 * _smooth(rng, shape, 6))
    image = (tone["gm"] * f["gm"] + tone["wm"] * (f["cord"] - f["gm"]) + tone["csf"] * (f["csf"] - f["cord"])
             + tissue * (f["canal"] - f["csf"]) + tone["bone"] * (f["bone"] - f["canal"]) + tissue * (1 - f["bone"]))
    image = image * (1 + 0.2 * _smooth(rng, shape, 2))            # coil bias field
    noise = anat["noise"] * rng.standard_normal((2, *shape))
    return np.hypot(image + noise[0], noise[1]), lv                # Rician magnitude noise


def phantom_subject(seed: int, site: int, subject: int, n_slices: int, with_masks: bool = True) -> dict:
    """One synthetic subject of one site, deterministic from (seed, site, subject).

    Returns {"image": int16 [rows, cols, n_slices], "masks": {rater: uint8 volume}, "zooms": (mm)}.
    Axial cord cross-sections: an elliptical cord of white matter with a butterfly of gray matter,
    a bright CSF sheath, a dark vertebral ring, textured tissue, a smooth bias field and Rician
    noise. Each of the 4 raters draws the gray matter slightly differently (a rater-wide offset of
    the boundary, +-0.15 mm, and a smooth local wobble); slice 0 shows no gray matter and has empty
    masks, so validation holds slices without gray matter. Site 4's masks also mark white matter = 2.
    """
    spacing, thickness, shape = PHANTOM_SITES[site]
    rng = np.random.default_rng([seed, site, subject])
    anat = _anatomy(rng)
    image = np.zeros((*shape, n_slices), dtype=np.int16)
    masks = {r: np.zeros((*shape, n_slices), dtype=np.uint8) for r in range(1, PHANTOM_RATERS + 1)}
    for k in range(n_slices):
        slice_, lv = _phantom_slice(rng, anat, k, n_slices, spacing, shape)
        image[:, :, k] = np.clip(np.rint(slice_ * 1000), 0, 32767).astype(np.int16)
        for r in masks:
            wobble = 0.08 * _smooth(rng, shape, 5)              # drawn always: the stream stays aligned
            if k == 0 or not with_masks:
                continue
            gm_r = lv["gm"] + anat["raters"][r - 1] + wobble < 0
            masks[r][:, :, k] = gm_r
            if site == WM_LABEL_SITE:
                masks[r][:, :, k][(lv["cord"] < 0) & ~gm_r] = 2
    return {"image": image, "masks": masks if with_masks else {}, "zooms": (spacing, spacing, thickness)}


def _save_nifti(array: np.ndarray, zooms: tuple, path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), str(path))


def write_phantom(folder, seed: int = 0, subjects: int = 10, slices: int = 10, sites=None) -> list[Path]:
    """Write the phantom as challenge files into ``folder``: for every site (default 1-4) and
    subject 1..``subjects``, ``siteN-scXX-image.nii.gz`` + ``siteN-scXX-mask-r{1..4}.nii.gz``, plus
    one unlabeled test image ``siteN-sc{subjects+1}-image.nii.gz`` per site (as the challenge's
    subjects 11-20). Deterministic from ``seed``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for site in sites or sorted(PHANTOM_SITES):
        if site not in PHANTOM_SITES:
            raise DataError(f"phantom: no site {site}; the phantom has sites {format_ids(PHANTOM_SITES)}")
        for subject in range(1, subjects + 2):
            labeled = subject <= subjects
            subj = phantom_subject(seed, site, subject, slices, with_masks=labeled)
            stem = folder / f"site{site}-sc{subject:02d}"
            _save_nifti(subj["image"], subj["zooms"], Path(f"{stem}-image.nii.gz"))
            written.append(Path(f"{stem}-image.nii.gz"))
            for rater, mask in subj["masks"].items():
                _save_nifti(mask, subj["zooms"], Path(f"{stem}-mask-r{rater}.nii.gz"))
                written.append(Path(f"{stem}-mask-r{rater}.nii.gz"))
    return written


# --------------------------------------------------------------------------- build_datasets

def _shown(path: Path) -> str:
    """A path as a reader sees it: relative to the project root when it sits beside it."""
    try:
        return os.path.join("..", str(Path(path).resolve().relative_to(PROJECT_ROOT.parent)))
    except ValueError:
        return str(path)


def _fmt_zooms(zooms) -> str:
    return "x".join(f"{z:g}" for z in np.round(zooms, 3))


def load_challenge(folder, cfg) -> tuple[SliceSet, SliceSet, list[str]]:
    """Read a challenge folder with cfg's sites, subject split and rater mode.

    Returns (train, val, notes). Only the chosen subjects' files are read."""
    subjects = scan_challenge(folder)
    train_ids, val_ids = parse_ids(cfg.train_subjects), parse_ids(cfg.val_subjects)
    shared = sorted(set(train_ids) & set(val_ids))
    if shared:
        raise ConfigError(f"keys 'train_subjects' ({cfg.train_subjects}) and 'val_subjects' ({cfg.val_subjects}) "
                          f"share subject(s) {format_ids(shared)}; a subject must be in one split only")
    found_sites = sorted({site for site, _ in subjects})
    sites = found_sites if cfg.sites == "all" else parse_ids(cfg.sites)
    missing_sites = sorted(set(sites) - set(found_sites))
    if missing_sites:
        raise DataError(f"{folder}: no files of site(s) {format_ids(missing_sites)} (key 'sites'); sites found: "
                        f"{format_ids(found_sites)}")
    train, val, values, zooms_by_site, notes = SliceSet(), SliceSet(), set(), {}, []
    used = [subj for (site, number), subj in sorted(subjects.items())
            if site in sites and number in set(train_ids) | set(val_ids)]
    for subj in used:
        image, masks, zooms = read_subject(subj)
        values |= mask_values(masks)
        zooms_by_site.setdefault(subj.site, set()).add(tuple(np.round(zooms, 3)))
        is_train = subj.subject in train_ids
        add_volume(train if is_train else val, image, targets(masks, cfg.rater_mode), zooms, subj.name, cfg,
                   filtered=is_train)
    for site in sites:
        for role, ids in (("train", train_ids), ("validation", val_ids)):
            absent = [i for i in ids if (site, i) not in subjects]
            if absent:
                notes.append(f"site {site}: {role} subject(s) {format_ids(absent)} not in the folder")
    for split, slices, ids in (("training", train, train_ids), ("validation", val, val_ids)):
        if not len(slices):
            raise DataError(f"{folder}: no {split} slices for subjects {format_ids(ids)} of site(s) "
                            f"{format_ids(sites)} (keys 'sites', 'train_subjects', 'val_subjects')")
    notes.insert(0, "voxel size (mm) per site: " + "; ".join(
        f"site{s} " + ", ".join(_fmt_zooms(z) for z in sorted(zs)) for s, zs in sorted(zooms_by_site.items())))
    notes.insert(1, _values_note(values))
    rater_note = _raters_note(used, cfg.rater_mode)
    if rater_note:
        notes.insert(2, rater_note)
    return train, val, notes


def _raters_note(subjects: list, rater_mode: str) -> str | None:
    """A note naming the subjects that lack a rater's mask file which other subjects have (the
    challenge has 4 raters everywhere): they then give fewer pairs (each) or a vote over fewer
    raters (majority), which would otherwise go unnoticed. None when every subject has every rater."""
    raters = set().union(*(s.masks for s in subjects)) if subjects else set()
    lacking = [(s, sorted(raters - set(s.masks))) for s in subjects if raters - set(s.masks)]
    if not lacking:
        return None
    shown = ", ".join(f"{s.name} lacks rater{'s' if len(r) > 1 else ''} {format_ids(r)} (no "
                      f"{s.name}-mask-r{r[0]}.nii.gz{' ...' if len(r) > 1 else ''})" for s, r in lacking[:8])
    more = f" and {len(lacking) - 8} more subject(s)" if len(lacking) > 8 else ""
    effect = ("those subjects give fewer (image, mask) pairs" if rater_mode == "each"
              else "their majority vote is over fewer raters")
    return f"raters differ between subjects (raters found: {format_ids(raters)}): {shown}{more}; {effect}"


def _values_note(values: set) -> str:
    shown = ", ".join(f"{v:g}" for v in sorted(values)[:10]) + (" ..." if len(values) > 10 else "")
    return f"mask values found: {shown}; target = gray matter (mask == {GM_LABEL})"


def load_sample(folder, cfg) -> tuple[SliceSet, SliceSet, list[str], str]:
    """The real SCT T2* sample: ONE subject and ONE rater, so subjects cannot be split; the LAST
    cfg.sample_val_slices slices validate and the others train (a split by slice)."""
    folder = Path(folder)
    image_path, mask_path = (folder / name for name in SAMPLE_FILES)
    for path in (image_path, mask_path):
        if not path.is_file():
            raise DataError(f"{path}: missing (the GM sample is {SAMPLE_FILES[0]} + {SAMPLE_FILES[1]}, in "
                            f"../shared/data/scgm_sct_t2s beside the developers' checkout); use data_source: phantom, "
                            f"or data_source: real with a challenge folder in data_path")
    image, zooms, affine = read_nifti(image_path)
    mask, _, mask_affine = read_nifti(mask_path)
    if mask.shape != image.shape:
        raise DataError(f"{mask_path}: shape {'x'.join(map(str, mask.shape))} does not match its image "
                        f"{image_path.name} ({'x'.join(map(str, image.shape))})")
    check_same_grid(image_path, affine, mask_path, mask_affine, image.shape, zooms)
    mask = label_volume(mask, mask_path)
    n = image.shape[2]
    if not 1 <= cfg.sample_val_slices < n:
        raise ConfigError(f"key 'sample_val_slices': {cfg.sample_val_slices} does not fit the sample's {n} slices; "
                          f"allowed: 1 to {n - 1}")
    train_k, val_k = range(n - cfg.sample_val_slices), range(n - cfg.sample_val_slices, n)
    train, val = SliceSet(), SliceSet()
    labels = {"r1": mask == GM_LABEL}
    add_volume(train, image, labels, zooms, "sct_t2s", cfg, filtered=True, slices=train_k)
    add_volume(val, image, labels, zooms, "sct_t2s", cfg, filtered=False, slices=val_k)
    text = (f"SCT T2* sample ({_shown(folder)}): 1 subject, 1 rater, {n} axial slices "
            f"{image.shape[0]}x{image.shape[1]} at {_fmt_zooms(zooms)} mm; NOT the paper's protocol: split by "
            f"slice, train slices 0-{n - cfg.sample_val_slices - 1} / val slices {n - cfg.sample_val_slices}-{n - 1}")
    notes = [f"voxel size (mm): {_fmt_zooms(zooms)}", _values_note(mask_values({1: mask}))]
    return train, val, notes, text


def _geometry_text(cfg) -> str:
    size = f"centre crop {cfg.crop_size}x{cfg.crop_size}"
    return (f"resampled to {cfg.resample_mm:g} mm in-plane, {size}" if cfg.resample_mm > 0
            else f"native in-plane spacing, {size}")


def _split_notes(train: SliceSet, val: SliceSet) -> list[str]:
    n_empty = sum(not m.any() for m in val.masks)
    return [f"training: {len(train)} pairs kept; dropped {train.dropped_no_gm} without gray matter and "
            f"{train.dropped_empty_input} with an all-zero input",
            f"validation: {len(val)} pairs, unfiltered, {n_empty} without gray matter: 'dice', 'hd95', ... are means "
            f"over all of them; the '_nonempty' columns of metrics.csv ('dice_nonempty', 'hd95_nonempty', ...) "
            f"the means over the {len(val) - n_empty} with gray matter"]


def _transforms(cfg) -> tuple[Compose, Compose]:
    train = Compose([*(TRAIN_AUGMENTATION if cfg.augment else ()), InstanceNorm()])
    return train, Compose([InstanceNorm()])


def _rater_text(cfg) -> str:
    return "one pair per rater" if cfg.rater_mode == "each" else "majority-vote mask of the raters"


def _load(cfg) -> tuple[SliceSet, SliceSet, list[str], str]:
    """Dispatch on cfg.data_source; returns (train, val, notes, description)."""
    if cfg.data_source == "sample":
        return load_sample(cfg.path("data_path") or shared_data_dir() / "scgm_sct_t2s", cfg)
    split = (f"sites {cfg.sites}, train subjects {cfg.train_subjects} / val subjects {cfg.val_subjects}, "
             f"{_rater_text(cfg)}")
    if cfg.data_source == "real":
        root = cfg.path("data_path")
        train, val, notes = load_challenge(root, cfg)
        return train, val, notes, f"GM challenge ({_shown(root)}): {split}"
    sites = None if cfg.sites == "all" else parse_ids(cfg.sites)
    with tempfile.TemporaryDirectory(prefix="gm_phantom_") as tmp:
        write_phantom(tmp, cfg.seed, cfg.phantom_subjects, cfg.phantom_slices, sites)
        train, val, notes = load_challenge(tmp, cfg)
    text = (f"GM phantom (seed {cfg.seed}): {len(sites or PHANTOM_SITES)} site(s) x {cfg.phantom_subjects} subjects "
            f"x {cfg.phantom_slices} slices, 4 raters, written as challenge NIfTI files and read back; {split}")
    return train, val, notes, text


def build_datasets(cfg) -> DataBundle:
    """The GM training and validation sets for ``cfg`` as SliceDatasets in a DataBundle.

    Training items get the paper's augmentation (elastic with one shared field, random affine with
    shared parameters, channel shift; ``augment: false`` turns it off) and instance normalisation;
    validation items instance normalisation only. Spacings are those of the slices as fed to the
    network (after resampling), so Hausdorff distances come out in mm.
    """
    train, val, notes, text = _load(cfg)
    train_tf, val_tf = _transforms(cfg)
    notes = notes + _split_notes(train, val) + [f"training transforms: {train_tf.describe()}"]
    if cfg.augment:
        notes.append("channel shift comes before the instance normalisation, as in the original pipeline, "
                     "which cancels it exactly")
    return DataBundle(
        train=train.dataset(train_tf, cfg.seed),
        val=val.dataset(val_tf, cfg.seed),
        source=cfg.data_source,
        description=f"{text}; {_geometry_text(cfg)}",
        notes=notes,
    )


def main(argv=None) -> int:
    """``python gm_data.py phantom DIR [SEED]``: write the phantom's challenge files into DIR."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3) or argv[0] != "phantom":
        print("usage: python gm_data.py phantom DIR [SEED]", file=sys.stderr)
        return 2
    paths = write_phantom(argv[1], seed=int(argv[2]) if len(argv) == 3 else 0)
    print(f"wrote {len(paths)} files into {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
