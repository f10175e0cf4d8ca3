"""The GM phantom: synthetic spinal cord cross-sections with four raters' gray-matter masks, written
as challenge-named NIfTI files (config ``data_source: phantom``), so that gm_data.py reads them with
the same reader as real challenge data. Deterministic from the seed.

Imported by its plain name ``gm_phantom``, with GM_BASE on sys.path (unetq.paths.base_module).
``python gm_phantom.py DIR [SEED]`` writes the phantom's files into DIR.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from unetq.data import DataError

from gm_nifti import format_ids   # beside this file: its folder is on sys.path


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


def main(argv=None) -> int:
    """``python gm_phantom.py DIR [SEED]``: write the phantom's challenge files into DIR."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python gm_phantom.py DIR [SEED]", file=sys.stderr)
        return 2
    paths = write_phantom(argv[0], seed=int(argv[1]) if len(argv) == 2 else 0)
    print(f"wrote {len(paths)} files into {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
