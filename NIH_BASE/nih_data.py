"""NIH data: Pancreas-CT (NIH / TCIA) slices for the quantized U-Net, from three sources, all through
one pipeline, in the modules beside this file: nih_scans.py (DICOM / NIfTI readers, orientation),
nih_labels.py (label checks), nih_patients.py (finding cases, patient split), nih_prepare.py
(windowing, ROI crops), nih_layout.py (the prepared folder) and nih_phantom.py (the phantom).

Sources (config key ``data_source``):
    phantom  ``nih_phantom.make_phantom_volume``: synthetic abdominal CT in HU with a pancreas-like
             structure, deterministic from ``seed`` (no data needed); ``phantom_patients`` patients
    sample   the TotalSegmentator CT bundled in ``../shared/data/pancreas_ct_totalseg`` (pancreas =
             label 7, 3 mm voxels). It is ONE patient, so it is split by slice block: its last
             ``sample_val_slices`` pancreas slices (the superior end) validate. Adjacent blocks of one
             scan are not independent: a smoke test on anatomy (not a phantom), not a benchmark.
    real     ``data_path``: a folder prepared by ``pre-processing/nih_pancreas.py`` (data/, mask/,
             val_img/, val_mask/, manifest.csv; its own split), or the raw data (``PANCREAS_NNNN/``
             DICOM folders or NIfTI images, ``labelNNNN.nii.gz`` labels), prepared in memory.

Every source goes through the same steps: pancreas slices (label == ``label_value``), HU window
``hu_min``..``hu_max`` to [0, 1] (or ``intensity: legacy_clip``), ROI crop ``crop_height`` x
``crop_width`` (the paper's 112 x 176): training slices centred on their pancreas, validation slices
on a label-free centre (``val_crop: body``) or on their label (``legacy_gt``, the original). The split
is by patient: the last ``val_fraction`` of the patients validate (the sample excepted, see above).

Imported by its plain name ``nih_data``, with NIH_BASE on sys.path (the script's folder; tests and
tools use unetq.paths.base_module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetq.config import ConfigError, Field
from unetq.data import DataBundle, DataError, SliceDataset, shown_path
from unetq.paths import shared_data_dir

import nih_phantom   # beside this file: its folder is on sys.path (unetq.paths.base_module)
from nih_labels import Case, Volume, load_case, pancreas_mask
from nih_layout import is_prepared, read_prepared
from nih_patients import find_cases, parse_exclude, split_patients
from nih_prepare import Collector, Options, crop_problem, prepare

FIELDS: tuple[Field, ...] = (
    Field("label_value", "int", None, "pancreas value in the label volumes; null: 1 (NIH, the phantom), "
          "7 with data_source sample (TotalSegmentator)", low=1, high=2**31 - 1, nullable=True),
    Field("hu_min", "float", -100.0, "lower end of the HU window (maps to 0)", low=-4000, high=4000),
    Field("hu_max", "float", 240.0, "upper end of the HU window (maps to 1)", low=-4000, high=4000),
    Field("intensity", "choice", "window", "window (hu_min..hu_max -> [0, 1]) | legacy_clip (the original: "
          "HU clipped to 0..255, min-max per slice)", choices=("window", "legacy_clip")),
    Field("crop_height", "int", 112, "ROI height in pixels, a multiple of 8 (the paper: 112)", low=8, high=4096),
    Field("crop_width", "int", 176, "ROI width in pixels, a multiple of 8 (the paper: 176)", low=8, high=4096),
    Field("val_crop", "choice", "body", "validation ROI centre: body (label-free: the mean training pancreas "
          "position in the body box) | legacy_gt (the original: on the validation label)",
          choices=("body", "legacy_gt")),
    Field("val_fraction", "float", 0.1, "the last fraction of the patients (by number) validate", low=0.01,
          high=0.9),
    Field("spacing_mm", "float", None, "resample slices in-plane to this pixel size (mm) before cropping; "
          "null: native (the paper), 1.0 for the 3 mm sample", low=0.05, high=20.0, nullable=True),
    Field("exclude_patients", "str", "25,70", "patient numbers left out of raw NIH data (25 and 70 are "
          "usually dropped); none: keep all", nullable=True),
    Field("phantom_patients", "int", 20, "number of phantom patients (data_source: phantom)", low=2, high=10000),
    Field("sample_val_slices", "int", 5, "data_source sample (one patient): its last N pancreas slices "
          "(superior end) validate", low=1, high=10000),
)

SAMPLE_FILES = ("example_ct_sm.nii.gz", "example_seg.nii.gz")
SAMPLE_LABEL = 7          # TotalSegmentator's pancreas
SAMPLE_SPACING = 1.0      # mm: the 3 mm sample resampled to about NIH's pixel size (0.66-0.98 mm); see the README


# --------------------------------------------------------------------------- sources

def options(cfg) -> Options:
    """The pipeline options of a config (``label_value`` and ``spacing_mm`` resolved for the source)."""
    where = cfg.source or "config"
    if not cfg.hu_max > cfg.hu_min:
        raise ConfigError(f"{where}: keys 'hu_min'/'hu_max': {cfg.hu_min:g}..{cfg.hu_max:g} is not a window; "
                          f"allowed: hu_min < hu_max")
    for key in ("crop_height", "crop_width"):
        problem = crop_problem(cfg[key], f"key {key!r}")
        if problem:
            raise ConfigError(f"{where}: {problem}")
    sample = cfg.data_source == "sample"
    label_value = cfg.label_value if cfg.label_value is not None else (SAMPLE_LABEL if sample else 1)
    spacing = cfg.spacing_mm if cfg.spacing_mm is not None else (SAMPLE_SPACING if sample else None)
    return Options(label_value=label_value, hu_window=(cfg.hu_min, cfg.hu_max), intensity=cfg.intensity,
                       crop=(cfg.crop_height, cfg.crop_width), spacing_mm=spacing, val_crop=cfg.val_crop)


def _ids(cases) -> str:
    """'0001-0018' for a run of patients, else the first few."""
    names = [c.patient for c in cases]
    numbers = [c.number for c in cases]
    if None not in numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{names[0]}-{names[-1]}" if len(names) > 1 else names[0]
    return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")


def _phantom(cfg, opts) -> tuple:
    cases = nih_phantom.phantom_cases(cfg.phantom_patients, cfg.seed, opts.label_value)
    train, val = split_patients(cases, cfg.val_fraction)
    shape = nih_phantom.PHANTOM_SHAPE
    text = (f"NIH phantom (seed {cfg.seed}): {len(cases)} synthetic patients, {shape[0]}x{shape[1]} "
            f"at {nih_phantom.PHANTOM_SPACING[0]:g} mm; split by patient: train {_ids(train)} / val {_ids(val)}")
    return train, val, [], text, []


def _sample(cfg, opts) -> tuple:
    """The one-patient sample, split by slice block (see the module docstring)."""
    root = cfg.path("data_path") or shared_data_dir() / "pancreas_ct_totalseg"
    image, label = (root / name for name in SAMPLE_FILES)
    if not image.is_file() or not label.is_file():
        raise DataError(f"{root}: the Pancreas-CT sample ({', '.join(SAMPLE_FILES)}) is missing (it exists only "
                        f"beside the developers' checkout, in ../shared/data); use data_source: phantom, or "
                        f"data_source: real with data_path")
    volume = load_case(Case("sample", None, image, label))
    zs = np.flatnonzero(pancreas_mask(volume, opts.label_value).any(axis=(1, 2)))
    k = cfg.sample_val_slices
    if k >= len(zs):
        raise ConfigError(f"{cfg.source or 'config'}: key 'sample_val_slices': {k} leaves no training slice; "
                          f"allowed: 1 to {len(zs) - 1} (the sample has {len(zs)} pancreas slices)")
    cut = int(zs[-k])

    def block(first, last):
        def load(case):
            return Volume("sample", volume.hu[first:last], volume.label[first:last], volume.spacing,
                              volume.image_source, volume.label_source, z_offset=first)
        return Case("sample", None, image, label, load=load)

    sp = volume.spacing
    text = (f"Pancreas-CT sample ({shown_path(root)}, TotalSegmentator label {opts.label_value}): ONE patient, "
            f"{sp[0]:g}x{sp[1]:g}x{sp[2]:g} mm; split by slice block: train slices {zs[0]}-{zs[-k - 1]} / "
            f"val slices {cut}-{zs[-1]} (adjacent blocks of one scan, not independent)")
    return [block(0, cut)], [block(cut, len(volume.hu))], [], text, []


def _raw(cfg, opts, root: Path) -> tuple:
    cases, problems, excluded = find_cases(root, exclude=parse_exclude(cfg.exclude_patients))
    train, val = split_patients(cases, cfg.val_fraction)
    text = (f"Pancreas-CT ({shown_path(root)}): {len(cases)} patients; split by patient: train {_ids(train)} / "
            f"val {_ids(val)}")
    notes = [f"excluded patients: {', '.join(map(str, excluded))}"] if excluded else []
    return train, val, problems, text, notes


def _prepared(cfg, root: Path) -> DataBundle:
    """A folder written by pre-processing/nih_pancreas.py, with its own split and geometry."""
    data = read_prepared(root)
    info = data["info"]
    sets = {split: SliceDataset(*data[split][:3], spacings=data[split][3], seed=cfg.seed) for split in ("train", "val")}
    text = (f"Pancreas-CT prepared ({shown_path(root)}): {len(sets['train'])} train / {len(sets['val'])} val slices "
            f"{data['train'][0].shape[1]}x{data['train'][0].shape[2]} as stored (its own split)")
    if info.get("description"):
        text += f"; {info['description']}"
    notes = ["the folder's own windowing, crops and split are used; the config's NIH keys are not"]
    notes += [f"skipped when prepared: {s['case']}: {s['reason']}" for s in info.get("skipped", [])[:10]]
    notes += _mask_notes(data["train"][1], data["val"][1])
    return DataBundle(train=sets["train"], val=sets["val"], source=cfg.data_source, description=text, notes=notes)


def _mask_notes(train_masks, val_masks) -> list[str]:
    return [f"pancreas covers {100 * train_masks.mean():.1f} % of the training crop pixels, "
            f"{100 * val_masks.mean():.1f} % of the validation ones"]


def _report_notes(report) -> list[str]:
    notes = []
    if report.prior is not None:
        notes.append(f"body prior: mean training pancreas centre at {report.prior[0]:.3f} (rows) / "
                     f"{report.prior[1]:.3f} (columns) of the body box")
    for split, word in (("train", "training"), ("val", "validation")):
        kept = report.kept[split]
        if kept:
            notes.append(f"{word} crops hold {100 * float(np.mean(kept)):.1f} % of their slice's pancreas pixels "
                         f"(mean; lowest {100 * float(np.min(kept)):.1f} %)")
    notes += [f"skipped: {case}: {reason}" for case, reason in report.skipped[:10]]
    if len(report.skipped) > 10:
        notes.append(f"... and {len(report.skipped) - 10} more skipped case(s)")
    return notes


def build_datasets(cfg) -> DataBundle:
    """The NIH training and validation sets for ``cfg`` (data_source, data_path, seed and the NIH keys
    of FIELDS), as SliceDatasets (spacing in mm, so Hausdorff distances are in mm) in a DataBundle.

    No training transform: the paper's NIH pipeline used no augmentation. Notes give the body prior,
    how much pancreas the crops keep, the pancreas fraction of the crops and any skipped case.
    """
    opts = options(cfg)
    if cfg.data_source == "phantom":
        train, val, problems, text, notes = _phantom(cfg, opts)
    elif cfg.data_source == "sample":
        train, val, problems, text, notes = _sample(cfg, opts)
    else:
        root = cfg.path("data_path")
        if root is None or not root.exists():
            raise DataError(f"{root}: no such folder (key 'data_path')" if root else
                            "key 'data_path' is required when data_source is 'real'")
        if is_prepared(root):
            return _prepared(cfg, root)
        train, val, problems, text, notes = _raw(cfg, opts, root)
    collector = Collector()
    report = prepare(train, val, opts, collector, problems)
    sets = {}
    for split in ("train", "val"):
        images, masks, names, spacings = collector.arrays(split)
        sets[split] = SliceDataset(images, masks, names, spacings=spacings, seed=cfg.seed)
    notes = notes + _report_notes(report) + _mask_notes(sets["train"].masks, sets["val"].masks)
    return DataBundle(train=sets["train"], val=sets["val"], source=cfg.data_source,
                      description=f"{text}; {report.summary()}; {opts.describe()}", notes=notes)
