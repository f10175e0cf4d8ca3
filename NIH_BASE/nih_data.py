"""NIH data: Pancreas-CT (NIH / TCIA) slices for the quantized U-Net, from three sources, all through
one pipeline (``nih_pancreas_ct.py`` beside this file: readers, label check, windowing, ROI crops, split).

Sources (config key ``data_source``):
    phantom  ``make_phantom_volume``: synthetic abdominal CT in HU with a pancreas-like structure,
             deterministic from ``seed`` (no data needed); ``phantom_patients`` patients
    sample   the real TotalSegmentator CT in ``../shared/data/pancreas_ct_totalseg`` (pancreas =
             label 7, 3 mm voxels). It is ONE patient, so it is split by slice block: its last
             ``sample_val_slices`` pancreas slices (the superior end) validate. Adjacent blocks of one
             scan are not independent: a smoke test of real anatomy, not a benchmark.
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

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from unetq.config import ConfigError, Field
from unetq.data import DataBundle, DataError, SliceDataset
from unetq.paths import PROJECT_ROOT, shared_data_dir

import nih_pancreas_ct as pct   # beside this file: its folder is on sys.path (unetq.paths.base_module)

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
PHANTOM_SHAPE = (512, 512)
PHANTOM_SPACING = (0.8, 0.8, 2.0)   # mm (row, col, slice), NIH-like


# --------------------------------------------------------------------------- phantom

def _ellipse(shape, cy, cx, ry, rx, angle=0.0):
    """(box slices, mask) of a filled ellipse, evaluated on its bounding box only (painting the
    full 512x512 grid for every organ dominated the phantom's run time)."""
    reach = max(ry, rx) + 1
    top, bottom = max(int(cy - reach), 0), min(int(cy + reach) + 2, shape[0])
    left, right = max(int(cx - reach), 0), min(int(cx + reach) + 2, shape[1])
    yy, xx = np.ogrid[top:bottom, left:right]
    dy, dx = yy - cy, xx - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (slice(top, bottom), slice(left, right)), (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0


def _paint(image, value, box_mask, within=None):
    """Set the ellipse's pixels to ``value`` (only where ``within`` is true, if given); returns the
    painted full-size mask."""
    box, mask = box_mask
    if within is not None:
        mask = mask & within[box]
    image[box][mask] = value
    painted = np.zeros(image.shape, bool)
    painted[box] = mask
    return painted


def _tube(shape, points, radii):
    """Union of discs of ``radii`` centred on ``points`` [k, 2] (row, col): a curved tube."""
    reach = radii.max() + 1
    top, left = np.maximum(np.floor(points.min(axis=0) - reach).astype(int), 0)
    bottom, right = np.minimum(np.ceil(points.max(axis=0) + reach).astype(int) + 1, shape)
    mask = np.zeros(shape, bool)
    if bottom <= top or right <= left:
        return mask
    yy, xx = np.ogrid[top:bottom, left:right]
    inside = np.zeros((bottom - top, right - left), bool)
    for (py, px), r in zip(points, radii):
        inside |= (yy - py) ** 2 + (xx - px) ** 2 <= r * r
    mask[top:bottom, left:right] = inside
    return mask


def _centreline(rng) -> np.ndarray:
    """Pancreas axis from head to tail in body units (v down, u toward the image's right), 41 points.
    Head beside the duodenum (image left = patient's right), neck in front of the vessels, tail
    toward the spleen; each patient's control points are jittered."""
    control = np.array([[0.14, -0.24], [-0.04, -0.06], [-0.02, 0.18], [0.14, 0.42]])
    control += rng.uniform(-0.04, 0.04, control.shape)
    s = np.linspace(0.0, 1.0, len(control))
    t = np.linspace(0.0, 1.0, 41)
    line = np.stack([np.interp(t, s, control[:, k]) for k in range(2)], axis=1)
    return ndimage.gaussian_filter1d(line, 3.0, axis=0, mode="nearest")   # round the corners


def _patient_anatomy(rng) -> dict:
    """Per-patient constants: body size, organ tones, pancreas axis and size, bowel loop positions."""
    h, w = PHANTOM_SHAPE
    return {
        "cy": h * 0.5 + rng.uniform(-10, 10), "cx": w * 0.5 + rng.uniform(-8, 8),
        "ry": rng.uniform(112, 140), "rx": rng.uniform(160, 198), "fat": rng.uniform(10, 28),
        "phase": rng.uniform(0, 2 * np.pi), "pancreas_hu": rng.uniform(30, 60), "liver_hu": rng.uniform(55, 75),
        "vessel_hu": rng.uniform(150, 220), "noise": rng.uniform(10, 18),
        "axis": _centreline(rng), "r_head": rng.uniform(16, 22), "r_tail": rng.uniform(9, 12),
        "bowel": [(rng.uniform(-0.75, -0.2), rng.uniform(-0.45, 0.5), rng.uniform(12, 22), rng.random() < 0.4,
                   rng.uniform(15, 40)) for _ in range(int(rng.integers(4, 9)))],
        "slices": int(rng.integers(8, 15)),
    }


def _organs(image, a, cy, cx, ry, rx, t, inner):
    """Muscle, spine, kidneys, liver, spleen, stomach, bowel and the great vessels of one slice."""
    shape = image.shape
    spine = cy + 0.45 * ry                                                 # centre of the vertebral body
    for side in (-1, 1):                                                   # paraspinal muscles, kidneys
        _paint(image, 50.0, _ellipse(shape, spine + 40, cx + side * 0.2 * rx, 24, 30), inner)
        _paint(image, 145.0, _ellipse(shape, cy + 0.42 * ry, cx + side * 0.42 * rx, 36, 24, side * 0.4), inner)
    _paint(image, 650.0, _ellipse(shape, spine, cx, 25, 25))                             # vertebra: cortex
    _paint(image, 250.0, _ellipse(shape, spine, cx, 21, 21))                             # ... and marrow
    _paint(image, 500.0, _ellipse(shape, spine + 44, cx, 9, 26))                         # posterior arch
    _paint(image, 15.0, _ellipse(shape, spine + 30, cx, 9, 9))                           # spinal canal
    scale = 0.6 + 0.4 * min(max(t, 0.0), 1.0)                                              # liver grows upward
    _paint(image, a["liver_hu"], _ellipse(shape, cy - 0.05 * ry, cx - 0.5 * rx, 0.72 * ry * scale,
                                          0.45 * rx * scale, 0.2), inner)
    if t > 0.4:
        _paint(image, 55.0, _ellipse(shape, cy + 0.18 * ry, cx + 0.62 * rx, 0.33 * ry, 0.18 * rx, -0.5), inner)
    if t > 0.3:
        stomach = _ellipse(shape, cy - 0.45 * ry, cx + 0.3 * rx, 0.24 * ry, 0.3 * rx)
        _paint(image, 25.0, stomach, inner)
        _paint(image, -900.0, _ellipse(shape, cy - 0.6 * ry, cx + 0.3 * rx, 0.08 * ry, 0.18 * rx), inner)
    for v, u, r, gas, hu in a["bowel"]:
        _paint(image, hu, _ellipse(shape, cy + v * ry, cx + u * rx, r, r), inner)
        if gas:
            _paint(image, -850.0, _ellipse(shape, cy + v * ry, cx + u * rx, 0.55 * r, 0.55 * r), inner)
    _paint(image, a["vessel_hu"], _ellipse(shape, spine - 42, cx + 0.06 * rx, 13, 13))         # aorta
    _paint(image, a["vessel_hu"] - 40, _ellipse(shape, spine - 38, cx - 0.16 * rx, 10, 14))    # IVC


def _pancreas(image, a, cy, cx, ry, rx, t, rng):
    """Paint the visible part of the pancreas (head inferior, tail superior) with its lobulated
    texture, the duodenum beside the head and the veins along it; returns the pancreas label mask."""
    shape = image.shape
    axis = a["axis"]
    s = np.linspace(0.0, 1.0, len(axis))
    visible = (s >= 0.75 * t - 0.15) & (s <= 0.75 * t + 0.25)
    points = np.stack([cy + axis[:, 0] * ry, cx + axis[:, 1] * rx], axis=1)
    radii = (a["r_head"] * (1 - s) + a["r_tail"] * s) * (1 + 0.12 * np.sin(9 * s + 4 * t + a["phase"]))
    if s[visible].min() < 0.3:                                                 # duodenum beside the head
        head = points[0]
        _paint(image, 30.0, _ellipse(shape, head[0] + 4, head[1] - a["r_head"] - 12, 13, 13))
    gland = _tube(shape, points[visible], radii[visible])
    image[gland] = a["pancreas_hu"]
    if gland.any():                                                            # fat between the lobules
        top, left, bottom, right = pct.box_of(gland)
        box = (slice(top, bottom), slice(left, right))
        clefts = ndimage.gaussian_filter(rng.standard_normal((bottom - top, right - left)), 1.5) < -0.3
        image[box][gland[box] & clefts] = -60.0
    veins = np.zeros(shape, bool)
    tail = visible & (s > 0.35)
    if tail.any():                                                             # splenic vein, behind the body
        veins |= _tube(shape, points[tail] + np.array([radii[tail].mean() + 3, 0]), np.full(tail.sum(), 4.0))
    if visible[10:16].any():                                                   # mesenteric vessels at the neck
        neck = points[13]
        veins |= _tube(shape, np.array([[neck[0] + radii[13] + 7, neck[1]]]), np.array([6.0]))
    image[veins] = a["vessel_hu"] - 20
    return gland & ~veins


def _phantom_slice(a, z, rng) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice (HU float32, pancreas mask); t in [0, 1] over the pancreas slices."""
    t = (z - 1) / max(a["slices"] - 1, 1)
    wobble = 1 + 0.02 * np.sin(0.4 * z + a["phase"])
    cy, cx, ry, rx = a["cy"], a["cx"], a["ry"] * wobble, a["rx"] * wobble
    image = np.full(PHANTOM_SHAPE, -1000.0, np.float32)
    _paint(image, 150.0, _ellipse(PHANTOM_SHAPE, cy + ry + 28, cx, 6, 0.8 * rx))          # the table
    _paint(image, -100.0, _ellipse(PHANTOM_SHAPE, cy, cx, ry, rx))                         # subcutaneous fat
    _paint(image, 50.0, _ellipse(PHANTOM_SHAPE, cy, cx, ry - a["fat"], rx - a["fat"]))     # abdominal wall
    inner = _paint(image, -90.0, _ellipse(PHANTOM_SHAPE, cy, cx, ry - a["fat"] - 9, rx - a["fat"] - 9))
    _organs(image, a, cy, cx, ry, rx, t, inner)
    mask = np.zeros(PHANTOM_SHAPE, bool)
    if 0.0 <= t <= 1.0:
        mask = _pancreas(image, a, cy, cx, ry, rx, t, rng)
    image = ndimage.gaussian_filter(image, 0.7)                                            # scanner blur
    image += a["noise"] * rng.standard_normal(PHANTOM_SHAPE, dtype=np.float32)
    return image, mask


def make_phantom_volume(patient: int, seed: int = 0, label_value: int = 1) -> "pct.Volume":
    """Synthetic abdominal CT of one patient, deterministic from (seed, patient).

    512x512 axial slices at 0.8 mm in HU (air -1000, fat about -100, muscle 50, liver 55-75, vessels
    150-220, bone 250-650, noise 10-18 HU), in display orientation (anterior up, patient's right on
    the image's left): body with subcutaneous fat and abdominal wall, spine, kidneys, liver, spleen,
    stomach and bowel loops (some with gas), aorta and IVC, a table below the body, and an elongated
    lobulated pancreas (30-60 HU) with the duodenum beside its head and the splenic / mesenteric
    veins along it. 8-14 slices show pancreas (head inferior, tail superior) plus one empty slice at
    each end. The label volume holds ``label_value`` on the pancreas, 0 elsewhere.
    """
    rng = np.random.default_rng([seed, patient])
    anatomy = _patient_anatomy(rng)
    slices = [_phantom_slice(anatomy, z, rng) for z in range(anatomy["slices"] + 2)]
    dtype = np.uint8 if label_value < 256 else np.int32
    return pct.Volume(f"{patient:04d}", np.stack([s[0] for s in slices]),
                      np.stack([s[1] for s in slices]).astype(dtype) * dtype(label_value), PHANTOM_SPACING,
                      f"phantom(seed={seed}, patient={patient})", f"phantom(seed={seed}, patient={patient})")


def phantom_cases(n: int, seed: int, label_value: int) -> list:
    """``n`` phantom patients numbered 1..n, each generated when the pipeline loads it."""
    return [pct.Case(f"{i:04d}", i, load=lambda case: make_phantom_volume(case.number, seed, label_value))
            for i in range(1, n + 1)]


# --------------------------------------------------------------------------- sources

def options(cfg) -> "pct.Options":
    """The pipeline options of a config (``label_value`` and ``spacing_mm`` resolved for the source)."""
    where = cfg.source or "config"
    if not cfg.hu_max > cfg.hu_min:
        raise ConfigError(f"{where}: keys 'hu_min'/'hu_max': {cfg.hu_min:g}..{cfg.hu_max:g} is not a window; "
                          f"allowed: hu_min < hu_max")
    for key in ("crop_height", "crop_width"):
        if cfg[key] % 8:
            raise ConfigError(f"{where}: key {key!r}: {cfg[key]} is not allowed; allowed: a multiple of 8 (the "
                              f"U-Net pools three times)")
    sample = cfg.data_source == "sample"
    label_value = cfg.label_value if cfg.label_value is not None else (SAMPLE_LABEL if sample else 1)
    spacing = cfg.spacing_mm if cfg.spacing_mm is not None else (SAMPLE_SPACING if sample else None)
    return pct.Options(label_value=label_value, hu_window=(cfg.hu_min, cfg.hu_max), intensity=cfg.intensity,
                       crop=(cfg.crop_height, cfg.crop_width), spacing_mm=spacing, val_crop=cfg.val_crop)


def _shown(path) -> str:
    """A path as a reader sees it: relative to the project root when it sits beside it."""
    try:
        return os.path.join("..", str(Path(path).resolve().relative_to(PROJECT_ROOT.parent)))
    except ValueError:
        return str(path)


def _ids(cases) -> str:
    """'0001-0018' for a run of patients, else the first few."""
    names = [c.patient for c in cases]
    numbers = [c.number for c in cases]
    if None not in numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{names[0]}-{names[-1]}" if len(names) > 1 else names[0]
    return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")


def _phantom(cfg, opts) -> tuple:
    cases = phantom_cases(cfg.phantom_patients, cfg.seed, opts.label_value)
    train, val = pct.split_patients(cases, cfg.val_fraction)
    text = (f"NIH phantom (seed {cfg.seed}): {len(cases)} synthetic patients, {PHANTOM_SHAPE[0]}x{PHANTOM_SHAPE[1]} "
            f"at {PHANTOM_SPACING[0]:g} mm; split by patient: train {_ids(train)} / val {_ids(val)}")
    return train, val, [], text, []


def _sample(cfg, opts) -> tuple:
    """The one-patient sample, split by slice block (see the module docstring)."""
    root = cfg.path("data_path") or shared_data_dir() / "pancreas_ct_totalseg"
    image, label = (root / name for name in SAMPLE_FILES)
    if not image.is_file() or not label.is_file():
        raise DataError(f"{root}: the Pancreas-CT sample ({', '.join(SAMPLE_FILES)}) is missing (it exists only "
                        f"beside the developers' checkout, in ../shared/data); use data_source: phantom, or "
                        f"data_source: real with data_path")
    volume = pct.load_case(pct.Case("sample", None, image, label))
    zs = np.flatnonzero(pct.pancreas_mask(volume, opts.label_value).any(axis=(1, 2)))
    k = cfg.sample_val_slices
    if k >= len(zs):
        raise ConfigError(f"{cfg.source or 'config'}: key 'sample_val_slices': {k} leaves no training slice; "
                          f"allowed: 1 to {len(zs) - 1} (the sample has {len(zs)} pancreas slices)")
    cut = int(zs[-k])

    def block(first, last):
        def load(case):
            return pct.Volume("sample", volume.hu[first:last], volume.label[first:last], volume.spacing,
                              volume.image_source, volume.label_source, z_offset=first)
        return pct.Case("sample", None, image, label, load=load)

    sp = volume.spacing
    text = (f"Pancreas-CT sample ({_shown(root)}, TotalSegmentator label {opts.label_value}): ONE patient, "
            f"{sp[0]:g}x{sp[1]:g}x{sp[2]:g} mm; split by slice block: train slices {zs[0]}-{zs[-k - 1]} / "
            f"val slices {cut}-{zs[-1]} (adjacent blocks of one scan, not independent)")
    return [block(0, cut)], [block(cut, len(volume.hu))], [], text, []


def _raw(cfg, opts, root: Path) -> tuple:
    cases, problems, excluded = pct.find_cases(root, exclude=pct.parse_exclude(cfg.exclude_patients))
    train, val = pct.split_patients(cases, cfg.val_fraction)
    text = (f"Pancreas-CT ({_shown(root)}): {len(cases)} patients; split by patient: train {_ids(train)} / "
            f"val {_ids(val)}")
    notes = [f"excluded patients: {', '.join(map(str, excluded))}"] if excluded else []
    return train, val, problems, text, notes


def _prepared(cfg, root: Path) -> DataBundle:
    """A folder written by pre-processing/nih_pancreas.py, with its own split and geometry."""
    data = pct.read_prepared(root)
    info = data["info"]
    sets = {split: SliceDataset(*data[split][:3], spacings=data[split][3], seed=cfg.seed) for split in ("train", "val")}
    text = (f"Pancreas-CT prepared ({_shown(root)}): {len(sets['train'])} train / {len(sets['val'])} val slices "
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
        if pct.is_prepared(root):
            return _prepared(cfg, root)
        train, val, problems, text, notes = _raw(cfg, opts, root)
    collector = pct.Collector()
    report = pct.prepare(train, val, opts, collector, problems)
    sets = {}
    for split in ("train", "val"):
        images, masks, names, spacings = collector.arrays(split)
        sets[split] = SliceDataset(images, masks, names, spacings=spacings, seed=cfg.seed)
    notes = notes + _report_notes(report) + _mask_notes(sets["train"].masks, sets["val"].masks)
    return DataBundle(train=sets["train"], val=sets["val"], source=cfg.data_source,
                      description=f"{text}; {report.summary()}; {opts.describe()}", notes=notes)
