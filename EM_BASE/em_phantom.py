"""The EM phantom: synthetic electron-microscopy sections with their cell / membrane labels, for
runs and tests that have no ISBI data (config ``data_source: phantom``; em_data.py splits it by
section like the ISBI stack).

Cells are a warped random Voronoi tessellation, membranes dark borders of varying thickness, with
organelles, blur and noise. Deterministic from the seed; section i depends only on (seed, i).

Imported by its plain name ``em_phantom``, with EM_BASE on sys.path (unetq.paths.base_module).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from unetq.data import DataError


def _smooth_field(rng: np.random.Generator, shape: tuple, sigma: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation (correlation length ~sigma).

    Wide fields are drawn on a coarse grid and upsampled: filtering full-size noise with a large
    sigma dominated the phantom's run time.
    """
    step = max(1, int(sigma // 2))
    coarse = [-(-n // step) + 1 for n in shape] if step > 1 else list(shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma / step, mode="wrap")
    if step > 1:
        field = ndimage.zoom(field, step, order=1)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def _spaced_points(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """About ``count`` random points [k,2] kept apart by a random minimum distance each, so the
    tessellation mixes large and small cells without the slivers of fully random seeds."""
    candidates = rng.uniform(0, size, size=(3 * count, 2))
    spacing = rng.uniform(0.35, 1.0, size=3 * count) * size / np.sqrt(count)
    kept = [candidates[0]]
    for point, gap in zip(candidates[1:], spacing[1:]):
        if len(kept) >= count:
            break
        if np.min(np.hypot(*(np.asarray(kept) - point).T)) >= gap:
            kept.append(point)
    return np.asarray(kept)


def _voronoi_cells(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cell id per pixel: nearest seed point, on a smoothly warped grid so that the borders curve
    like neurite outlines instead of being straight Voronoi edges."""
    points = _spaced_points(rng, size, max(2, int(rng.integers(50, 80) * (size / 200.0) ** 2)))
    seeds = np.ones((size, size), dtype=bool)
    seeds[points[:, 0].astype(int), points[:, 1].astype(int)] = False
    _, (rows, cols) = ndimage.distance_transform_edt(seeds, return_indices=True)
    cells = rows * size + cols
    # displacement ~3 px over ~20 px: curved borders without folding the cells over each other
    warp = [_smooth_field(rng, (size, size), size / 10.0) * size / 70.0 for _ in range(2)]
    grid = np.mgrid[0:size, 0:size].astype(np.float64)
    return ndimage.map_coordinates(cells, [grid[0] + warp[0], grid[1] + warp[1]], order=0, mode="nearest")


def _membranes(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    """Membrane mask: the cell borders widened by a thickness that varies smoothly in space, then
    smoothed so that junctions of three cells swell as they do in EM."""
    border = np.zeros(cells.shape, dtype=bool)
    border[:-1] |= cells[:-1] != cells[1:]
    border[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    distance = ndimage.distance_transform_edt(~border)
    thickness = 1.4 + 0.5 * _smooth_field(rng, cells.shape, cells.shape[0] / 10.0)
    membrane = distance < np.clip(thickness, 1.0, 3.0)
    # the border itself stays membrane: smoothing alone would open gaps in the thinnest stretches
    return (ndimage.gaussian_filter(membrane.astype(np.float32), 1.0) > 0.4) | border


def _organelles(rng: np.random.Generator, inside: np.ndarray) -> np.ndarray:
    """Soft dark blobs (mitochondria) inside cells, weight in [0, 1]; the label stays 'cell'."""
    size = inside.shape[0]
    n_blobs = int(rng.integers(10, 25) * (size / 200.0) ** 2) + 1
    centres = np.ones(inside.shape, dtype=bool)
    centres[rng.integers(0, size, n_blobs), rng.integers(0, size, n_blobs)] = False
    distance, (rows, cols) = ndimage.distance_transform_edt(centres, return_indices=True)
    radius = rng.uniform(2.0, 6.0, size=inside.shape)[rows, cols]   # one radius per blob (at its centre)
    return np.clip(radius - distance, 0.0, 1.0) * inside


def _phantom_section(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One EM-like section: (image float32 [size,size] in [0,1], label uint8, 1 = cell interior)."""
    cells = _voronoi_cells(rng, size)
    membrane = _membranes(rng, cells)
    cell_tone = rng.uniform(0.45, 0.7, size=cells.max() + 1)[cells]   # each cell its own grey
    vesicles = _smooth_field(rng, membrane.shape, 1.0) > 1.5            # small round granules
    image = cell_tone + 0.04 * _smooth_field(rng, membrane.shape, 2.0) - 0.15 * vesicles
    image -= 0.3 * _organelles(rng, ~membrane)
    image = np.where(membrane, rng.uniform(0.12, 0.25), image)
    image = ndimage.gaussian_filter(image, rng.uniform(0.7, 1.2))      # microscope blur
    image += 0.05 * rng.standard_normal(image.shape)                   # shot noise
    return np.clip(image, 0.0, 1.0).astype(np.float32), (~membrane).astype(np.uint8)


def make_phantom(n: int, size: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic EM sections of ``size`` x ``size``, deterministic from ``seed``.

    Returns (images float32 [n,size,size] in [0,1], labels uint8 [n,size,size], 1 = cell interior).
    Cells are a warped random Voronoi tessellation with dark membranes of varying thickness along
    the borders, dark organelles inside, blur and noise; ~75-80 % of the pixels are cell, as in ISBI.
    Section i depends only on (seed, i), so the first sections do not change when n grows.
    """
    if n < 1 or size < 8:
        raise DataError(f"phantom: need n >= 1 and size >= 8, got n={n}, size={size}")
    pairs = [_phantom_section(np.random.default_rng([seed, i]), size) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
