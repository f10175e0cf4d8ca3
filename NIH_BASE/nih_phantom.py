"""The NIH phantom: synthetic abdominal CT patients in Hounsfield units with a pancreas label, for runs
and tests that have no Pancreas-CT data (config ``data_source: phantom``). Each patient is a
:class:`nih_labels.Volume` in display orientation that goes through the same pipeline as real data
(label check, window, crops, split). Deterministic from (seed, patient).

Imported by its plain name ``nih_phantom``, with NIH_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nih_labels import Case, Volume   # beside this file (sys.path)
from nih_prepare import box_of

PHANTOM_SHAPE = (512, 512)
PHANTOM_SPACING = (0.8, 0.8, 2.0)   # mm (row, col, slice), NIH-like


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
        top, left, bottom, right = box_of(gland)
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


def make_phantom_volume(patient: int, seed: int = 0, label_value: int = 1) -> Volume:
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
    return Volume(f"{patient:04d}", np.stack([s[0] for s in slices]),
                      np.stack([s[1] for s in slices]).astype(dtype) * dtype(label_value), PHANTOM_SPACING,
                      f"phantom(seed={seed}, patient={patient})", f"phantom(seed={seed}, patient={patient})")


def phantom_cases(n: int, seed: int, label_value: int) -> list:
    """``n`` phantom patients numbered 1..n, each generated when the pipeline loads it."""
    return [Case(f"{i:04d}", i, load=lambda case: make_phantom_volume(case.number, seed, label_value))
            for i in range(1, n + 1)]
