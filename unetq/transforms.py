"""Paired augmentation for 2-D slices: every transform maps (image, mask, rng) -> (image, mask).

Geometric transforms move the image and the mask with ONE set of random parameters (one
displacement field, one affine matrix), so the pair stays aligned; masks are interpolated with
nearest neighbour and stay binary. Randomness comes only from the ``rng`` argument: the
``np.random.Generator`` that :class:`unetq.data.SliceDataset` seeds per (seed, epoch, index), which
makes an epoch repeatable whatever the number of DataLoader workers.

    CenterCrop(200, 200)      centre crop, zero padding where the slice is smaller (deterministic)
    ElasticTransform(...)     smoothed random displacement field, applied with probability p
    RandomAffine(...)         rotation, translation, scale about the slice centre
    ChannelShift(...)         adds one random constant to the image
    InstanceNorm()            (x - mean) / std per slice; a constant slice becomes zeros
    Compose([...])            applies them in order

``resample`` (not random) brings a slice to a given pixel spacing; it is used when reading data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .data import center_crop

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Compose:
    """Apply ``transforms`` in order, each with the same generator."""

    transforms: tuple

    def __init__(self, transforms: Sequence):
        object.__setattr__(self, "transforms", tuple(transforms))

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask

    def describe(self) -> str:
        """One line naming the transforms in order (for the run log; their parameters are in the code)."""
        return " -> ".join(type(t).__name__ for t in self.transforms) or "none"


@dataclass(frozen=True)
class CenterCrop:
    """Centre crop to (height, width), zero-padding symmetrically where the slice is smaller."""

    height: int
    width: int

    def __call__(self, image, mask, rng=None) -> Pair:
        size = (self.height, self.width)
        return center_crop(image, size), center_crop(mask, size)


def _displaced(array: np.ndarray, coords: list, order: int) -> np.ndarray:
    out = ndimage.map_coordinates(array, coords, order=order, mode="reflect")
    return out.astype(array.dtype, copy=False)


@dataclass(frozen=True)
class ElasticTransform:
    """Elastic deformation (Simard et al. 2003) with probability ``p``.

    One displacement field per call, alpha * gaussian_filter(U(-1, 1), sigma) for rows and for
    columns, with alpha ~ U(alpha_range) and sigma ~ U(sigma_range) in pixels. The SAME field moves
    the image (``order``: 1 = bilinear) and the mask (nearest, so it stays binary); the original
    GM code drew a second field for the mask, which misaligned the pair.
    """

    alpha_range: tuple = (28.0, 30.0)
    sigma_range: tuple = (3.5, 4.0)
    p: float = 0.3
    order: int = 1

    def field(self, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        """The displacement field [2, H, W] (rows, cols) of one call, in pixels."""
        alpha = rng.uniform(*self.alpha_range)
        sigma = rng.uniform(*self.sigma_range)
        return np.stack([ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, shape), sigma, mode="constant") * alpha
                         for _ in range(2)])

    def __call__(self, image, mask, rng) -> Pair:
        if rng.random() >= self.p:
            return image, mask
        shift = self.field(image.shape, rng)
        grid = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
        coords = [grid[0] + shift[0], grid[1] + shift[1]]
        return _displaced(image, coords, self.order), _displaced(mask, coords, 0)


def apply_affine(array: np.ndarray, angle_deg: float, translate: tuple = (0.0, 0.0), scale: float = 1.0,
                 order: int = 0) -> np.ndarray:
    """Rotate by ``angle_deg`` (counter-clockwise as displayed, rows pointing down), scale and then
    translate by (rows, cols) pixels, about the centre of the slice; outside is filled with 0."""
    theta = math.radians(angle_deg)
    # Forward map in (row, col). With x = col and y = -row (up on screen), the counter-clockwise
    # rotation x' = x c - y s, y' = x s + y c reads row' = row c - col s, col' = row s + col c.
    forward = scale * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inverse = np.linalg.inv(forward)
    centre = (np.array(array.shape[-2:], dtype=np.float64) - 1.0) / 2.0
    # scipy maps OUTPUT coordinates to input ones: in = inverse @ (out - centre - t) + centre
    offset = centre - inverse @ (centre + np.asarray(translate, dtype=np.float64))
    out = ndimage.affine_transform(array, inverse, offset=offset, order=order, mode="constant", cval=0.0)
    return out.astype(array.dtype, copy=False)


@dataclass(frozen=True)
class RandomAffine:
    """Random rotation (+-degrees), translation (+-translate as a fraction of the size) and scale,
    drawn once per call and applied to image and mask alike (``order`` for the image: 0 = nearest,
    as the original GM pipeline; the mask is always nearest)."""

    degrees: float = 4.6
    translate: tuple = (0.03, 0.03)
    scale: tuple = (0.98, 1.02)
    order: int = 0

    def params(self, shape: tuple, rng: np.random.Generator) -> tuple[float, tuple, float]:
        """(angle in degrees, (row, col) shift in pixels, scale) of one call."""
        angle = rng.uniform(-self.degrees, self.degrees)
        shift = tuple(rng.uniform(-f * n, f * n) for f, n in zip(self.translate, shape[-2:]))
        return angle, shift, rng.uniform(*self.scale)

    def __call__(self, image, mask, rng) -> Pair:
        angle, shift, scale = self.params(image.shape, rng)
        return (apply_affine(image, angle, shift, scale, self.order),
                apply_affine(mask, angle, shift, scale, 0))


@dataclass(frozen=True)
class ChannelShift:
    """Add one constant ~ U(low, high) to every pixel of the image (the mask is unchanged).

    Note: followed by :class:`InstanceNorm` (as in the GM pipeline) the shift cancels exactly."""

    low: float = -0.1
    high: float = 0.1

    def __call__(self, image, mask, rng) -> Pair:
        return (image + np.float32(rng.uniform(self.low, self.high))).astype(image.dtype, copy=False), mask


@dataclass(frozen=True)
class InstanceNorm:
    """Per-slice (x - mean) / std. A slice whose std is below ``eps`` (e.g. an all-zero padded
    slice) becomes x - mean, i.e. zeros, instead of dividing by ~0."""

    eps: float = 1e-8

    def __call__(self, image, mask, rng=None) -> Pair:
        x = np.asarray(image, dtype=np.float64)
        mean, std = x.mean(), x.std()
        out = (x - mean) / std if std > self.eps else x - mean
        return out.astype(np.float32), mask


def resample(array: np.ndarray, spacing: Sequence[float], target: float, nearest: bool = False
             ) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample a 2-D slice of pixel size ``spacing`` (rows, cols; mm) to about ``target`` mm.

    The new size is round(n * spacing / target) per axis and pixel EDGES stay aligned
    (``grid_mode``), so the field of view is kept; the exact new spacing, n * spacing / new_n, is
    returned with the array. Images are interpolated linearly; label maps (``nearest=True``) by
    nearest neighbour and keep their values.
    """
    shape = np.array(array.shape[-2:])
    sp = np.asarray(spacing, dtype=np.float64)
    new_shape = np.maximum(1, np.rint(shape * sp / target)).astype(int)
    zoom = new_shape / shape
    out = ndimage.zoom(array, zoom, order=0 if nearest else 1, mode="nearest", grid_mode=True)
    out = out[: new_shape[0], : new_shape[1]]
    return out.astype(array.dtype, copy=False), tuple(float(v) for v in shape * sp / new_shape)
