"""GM data: the Spinal Cord Gray Matter Segmentation challenge 2016 (MRI): the paper's slice pipeline
and split, the config keys, and the training / validation sets of every source. The files are read by
gm_nifti.py and the phantom is written by gm_phantom.py, both beside this file.

Sources (config key ``data_source``):
    phantom  ``gm_phantom.write_phantom``: synthetic cord cross-sections written as challenge-named NIfTI
             files into a temporary folder and read back with the same reader as real data (no data needed)
    sample   one T2* scan bundled in ``../shared/data/scgm_sct_t2s`` (developers' machines only): one
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
tools use unetq.paths.base_module).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetq.config import ConfigError, Field
from unetq.data import DataBundle, DataError, SliceDataset, shown_path
from unetq.paths import shared_data_dir
from unetq.transforms import (CenterCrop, ChannelShift, Compose, ElasticTransform, InstanceNorm, RandomAffine,
                              resample)

import gm_nifti     # beside this file: its folder is on sys.path (unetq.paths.base_module)
import gm_phantom
from gm_nifti import GM_LABEL, format_ids, parse_ids


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


# --------------------------------------------------------------------------- slices

def majority(masks: list[np.ndarray]) -> np.ndarray:
    """Voxels marked by MORE than half of the binary ``masks`` (a 2-2 tie of 4 raters is background)."""
    return (2 * np.sum(masks, axis=0) > len(masks)).astype(np.uint8)


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




# --------------------------------------------------------------------------- build_datasets

def _fmt_zooms(zooms) -> str:
    return "x".join(f"{z:g}" for z in np.round(zooms, 3))


def load_challenge(folder, cfg) -> tuple[SliceSet, SliceSet, list[str]]:
    """Read a challenge folder with cfg's sites, subject split and rater mode.

    Returns (train, val, notes). Only the chosen subjects' files are read."""
    subjects = gm_nifti.scan_challenge(folder)
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
        image, masks, zooms = gm_nifti.read_subject(subj)
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
    """The bundled SCT T2* sample: ONE subject and ONE rater, so subjects cannot be split; the LAST
    cfg.sample_val_slices slices validate and the others train (a split by slice)."""
    folder = Path(folder)
    names = gm_nifti.SAMPLE_FILES
    image_path, mask_path = (folder / name for name in names)
    for path in (image_path, mask_path):
        if not path.is_file():
            raise DataError(f"{path}: missing (the GM sample is {names[0]} + {names[1]}, in "
                            f"../shared/data/scgm_sct_t2s beside the developers' checkout); use data_source: phantom, "
                            f"or data_source: real with a challenge folder in data_path")
    image, zooms, affine = gm_nifti.read_nifti(image_path)
    mask, _, mask_affine = gm_nifti.read_nifti(mask_path)
    if mask.shape != image.shape:
        raise DataError(f"{mask_path}: shape {'x'.join(map(str, mask.shape))} does not match its image "
                        f"{image_path.name} ({'x'.join(map(str, image.shape))})")
    gm_nifti.check_same_grid(image_path, affine, mask_path, mask_affine, image.shape, zooms)
    mask = gm_nifti.label_volume(mask, mask_path)
    n = image.shape[2]
    if not 1 <= cfg.sample_val_slices < n:
        raise ConfigError(f"key 'sample_val_slices': {cfg.sample_val_slices} does not fit the sample's {n} slices; "
                          f"allowed: 1 to {n - 1}")
    train_k, val_k = range(n - cfg.sample_val_slices), range(n - cfg.sample_val_slices, n)
    train, val = SliceSet(), SliceSet()
    labels = {"r1": mask == GM_LABEL}
    add_volume(train, image, labels, zooms, "sct_t2s", cfg, filtered=True, slices=train_k)
    add_volume(val, image, labels, zooms, "sct_t2s", cfg, filtered=False, slices=val_k)
    text = (f"SCT T2* sample ({shown_path(folder)}): 1 subject, 1 rater, {n} axial slices "
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
            f"validation: {len(val)} pairs, unfiltered ({n_empty} without gray matter: metrics.csv's '*_nonempty' "
            f"columns are the means over the other {len(val) - n_empty})"]


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
        return train, val, notes, f"GM challenge ({shown_path(root)}): {split}"
    sites = None if cfg.sites == "all" else parse_ids(cfg.sites)
    with tempfile.TemporaryDirectory(prefix="gm_phantom_") as tmp:
        gm_phantom.write_phantom(tmp, cfg.seed, cfg.phantom_subjects, cfg.phantom_slices, sites)
        train, val, notes = load_challenge(tmp, cfg)
    n_sites = len(sites or gm_phantom.PHANTOM_SITES)
    text = (f"GM phantom (seed {cfg.seed}): {n_sites} site(s) x {cfg.phantom_subjects} subjects "
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
