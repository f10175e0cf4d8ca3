"""Per-slice segmentation metrics and their aggregation over a validation set (docs/method.md section 5).

Inputs are 2-D binary masks (numpy, bool or 0/1 integers; any non-zero value counts as foreground).

Overlap metrics are fractions in [0, 1] computed from the confusion counts of one slice:
    dice = 2TP / (2TP + FP + FN)     precision = TP / (TP + FP)     recall = TP / (TP + FN)
    specificity = TN / (TN + FP)     iou = TP / (TP + FP + FN)      accuracy = (TP + TN) / N
Zero-denominator rule: ANY zero denominator gives 0. This is the paper's convention; it means a
slice with empty ground truth scores Dice 0 even when the prediction is empty too. Because that
drags the mean down, ``MetricAggregator`` also reports every metric over the slices with non-empty
ground truth only (``dice_nonempty``, ``precision_nonempty``, ..., ``hd95_nonempty``).

Hausdorff distance (``hausdorff``): the real symmetric Hausdorff distance between mask boundaries.
The boundary of a mask is its pixels with at least one 4-connected neighbour outside the mask;
pixels beyond the image edge count as background, so mask pixels on the edge are boundary pixels.
Distances are Euclidean between pixel centres, in pixels, or in mm when ``spacing`` (row, col) is
given. Empty-mask rules: both masks empty -> 0.0 (perfect agreement); exactly one empty -> nan
(undefined: there is no boundary to measure to). The aggregator counts the nan slices
(``n_hd_undefined``) and leaves them out of the Hausdorff means.

HD95 default: ``mode="max"``, the larger of the two directed 95th percentiles. It is the direct
analogue of the classic Hausdorff (the max of the two directed maxima) and it does not let the longer
boundary outvote the shorter one, which pooling both distance sets does. ``mode="pooled"`` (the 95th
percentile of both directed sets together) is available for comparison with tools that use it.

Rand index (``rand_index``): the real pair-counting Rand index of the two binary labelings of the N
pixels, i.e. the fraction of the C(N, 2) pixel pairs on which both labelings agree (same / different).
(The original code's "hausdorff" compared image rows and its "rand index" was pixel accuracy; those
are not reproduced under these names.)
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

DISTANCE_KEYS = ("hd", "hd95")
HD_MODES = ("max", "pooled")

# 4-connectivity: a pixel stays interior only if its up/down/left/right neighbours are foreground.
_CROSS = ndimage.generate_binary_structure(2, 1)


def _as_mask(x) -> np.ndarray:
    """A boolean view of a binary mask (non-zero = foreground)."""
    return np.asarray(x).astype(bool, copy=False)


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays, checked to have the same shape."""
    p, g = _as_mask(pred), _as_mask(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


def _ratio(num: float, den: float) -> float:
    """num / den, or 0.0 when den == 0 (the paper's zero-denominator convention)."""
    return float(num) / float(den) if den else 0.0


def confusion(pred, gt) -> tuple[int, int, int, int]:
    """Confusion counts (tp, fp, fn, tn) of a predicted mask against the ground truth, as ints."""
    p, g = _pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    n_pred = int(np.count_nonzero(p))
    n_gt = int(np.count_nonzero(g))
    fp, fn = n_pred - tp, n_gt - tp
    tn = p.size - tp - fp - fn
    return tp, fp, fn, tn


# The overlap formulas, written once, on the confusion counts of one slice. The named metrics below and
# slice_metrics (which counts once and applies all of them) both use these.

def _dice_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _precision_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tp, tp + fp)


def _recall_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tp, tp + fn)


def _specificity_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tn, tn + fp)


def _iou_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tp, tp + fp + fn)


def _accuracy_of(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tp + tn, tp + fp + fn + tn)


def _comb2(n: int) -> int:
    """C(n, 2) with Python ints (exact, no overflow)."""
    return n * (n - 1) // 2


def _rand_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    """Rand index from the 2x2 contingency table; 1.0 when there are fewer than 2 pixels."""
    pairs = _comb2(tp + fp + fn + tn)
    if pairs == 0:
        return 1.0
    same_both = sum(_comb2(c) for c in (tp, fp, fn, tn))
    same_pred = _comb2(tp + fp) + _comb2(fn + tn)
    same_gt = _comb2(tp + fn) + _comb2(fp + tn)
    # agreements = pairs together in both + pairs apart in both
    #            = same_both + (pairs - same_pred - same_gt + same_both)
    return (pairs + 2 * same_both - same_pred - same_gt) / pairs


_FROM_COUNTS = {"dice": _dice_of, "precision": _precision_of, "recall": _recall_of,
                "specificity": _specificity_of, "iou": _iou_of, "accuracy": _accuracy_of,
                "rand_index": _rand_from_counts}
FRACTION_KEYS = tuple(_FROM_COUNTS)
# Keys that result() produces besides the per-slice ones; an ``extra`` key may not reuse them.
_RESULT_ONLY_KEYS = (*(f"{k}_nonempty" for k in FRACTION_KEYS + DISTANCE_KEYS),
                     "n_slices", "n_empty_gt", "n_empty_pred", "n_hd_undefined")


def dice(pred, gt) -> float:
    """Dice 2TP / (2TP + FP + FN); 0 when the denominator is 0."""
    return _dice_of(*confusion(pred, gt))


def precision(pred, gt) -> float:
    """Precision TP / (TP + FP); 0 when the denominator is 0."""
    return _precision_of(*confusion(pred, gt))


def recall(pred, gt) -> float:
    """Recall (sensitivity) TP / (TP + FN); 0 when the denominator is 0."""
    return _recall_of(*confusion(pred, gt))


def specificity(pred, gt) -> float:
    """Specificity TN / (TN + FP); 0 when the denominator is 0."""
    return _specificity_of(*confusion(pred, gt))


def iou(pred, gt) -> float:
    """Intersection over union TP / (TP + FP + FN); 0 when the denominator is 0."""
    return _iou_of(*confusion(pred, gt))


def accuracy(pred, gt) -> float:
    """Pixel accuracy (TP + TN) / N; 0 for an empty image."""
    return _accuracy_of(*confusion(pred, gt))


def rand_index(pred, gt) -> float:
    """Pair-counting Rand index of the two binary labelings of the pixels (1.0 if N < 2)."""
    return _rand_from_counts(*confusion(pred, gt))


def boundary(mask) -> np.ndarray:
    """Boundary of a 2-D mask: foreground pixels with a 4-connected neighbour outside the mask.

    Pixels beyond the image edge count as background (``border_value=0``).
    """
    m = _as_mask(mask)
    if m.ndim != 2:
        raise ValueError(f"boundary expects a 2-D mask, got shape {m.shape}")
    return m & ~ndimage.binary_erosion(m, structure=_CROSS, border_value=0)


def _check_spacing(spacing) -> tuple[float, float] | None:
    """Validate (row, col) spacing: two positive finite numbers, or None."""
    if spacing is None:
        return None
    s = tuple(float(v) for v in np.asarray(spacing, dtype=float).ravel())
    if len(s) != 2 or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be two positive numbers (row, col), got {spacing!r}")
    return s


def _directed_distances(pred, gt, spacing=None):
    """Distances from each boundary pixel of one mask to the other mask's boundary, both ways.

    Returns (d_pred_to_gt, d_gt_to_pred) as float64 arrays, or the string "both_empty" /
    "one_empty" when a mask has no foreground.
    """
    p, g = _pair(pred, gt)
    sp = _check_spacing(spacing)
    bp, bg = boundary(p), boundary(g)
    has_p, has_g = bool(bp.any()), bool(bg.any())
    if not has_p and not has_g:
        return "both_empty"
    if has_p != has_g:
        return "one_empty"
    # The EDT of the complement of a boundary gives, at every pixel, the exact Euclidean
    # distance to the nearest pixel of that boundary; read it at the other boundary.
    dt_to_g = ndimage.distance_transform_edt(~bg, sampling=sp)
    dt_to_p = ndimage.distance_transform_edt(~bp, sampling=sp)
    return dt_to_g[bp].astype(np.float64), dt_to_p[bg].astype(np.float64)


def _reduce_hausdorff(d_pg: np.ndarray, d_gp: np.ndarray, percentile, mode: str) -> float:
    """Combine the two directed distance sets into one (percentile) Hausdorff value."""
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    if mode == "max":
        return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))
    return float(np.percentile(np.concatenate([d_pg, d_gp]), percentile))


def _check_hd_args(percentile, mode: str) -> None:
    """Reject an unknown mode or a percentile outside [0, 100]."""
    if mode not in HD_MODES:
        raise ValueError(f"unknown Hausdorff mode {mode!r}; allowed: {', '.join(HD_MODES)}")
    if percentile is not None and not 0 <= float(percentile) <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")


def hausdorff(pred, gt, percentile=None, spacing=None, mode: str = "max") -> float:
    """Symmetric boundary Hausdorff distance between two 2-D masks (pixels, or mm with spacing).

    percentile=None gives the classic (max) Hausdorff; percentile=95 gives HD95, with
    mode="max" (default: max of the two directed percentiles) or mode="pooled" (percentile of
    both directed distance sets together). Both masks empty -> 0.0; exactly one empty -> nan.
    """
    _check_hd_args(percentile, mode)
    d = _directed_distances(pred, gt, spacing)
    if isinstance(d, str):
        return 0.0 if d == "both_empty" else float("nan")
    return _reduce_hausdorff(d[0], d[1], percentile, mode)


def slice_metrics(pred, gt, spacing=None, hd95_mode: str = "max") -> dict:
    """All metrics of one slice: fractions (FRACTION_KEYS), hd and hd95, empty_gt, empty_pred.

    hd / hd95 are in pixels, or mm when ``spacing`` (row, col) is given; hd95 uses ``hd95_mode``
    ("max" or "pooled", see :func:`hausdorff`).
    """
    _check_hd_args(95, hd95_mode)
    p, g = _pair(pred, gt)
    counts = confusion(p, g)
    out = {key: formula(*counts) for key, formula in _FROM_COUNTS.items()}
    # One pair of distance transforms serves both hd and hd95.
    d = _directed_distances(p, g, spacing)
    if isinstance(d, str):
        out["hd"] = out["hd95"] = 0.0 if d == "both_empty" else float("nan")
    else:
        out["hd"] = _reduce_hausdorff(d[0], d[1], None, "max")
        out["hd95"] = _reduce_hausdorff(d[0], d[1], 95, hd95_mode)
    tp, fp, fn, _ = counts
    out["empty_gt"] = tp + fn == 0
    out["empty_pred"] = tp + fp == 0
    return out


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the non-nan values; nan when there are none (without numpy's empty-mean warning)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


class MetricAggregator:
    """Collects per-slice metrics and averages them over slices (the paper reports x100 means).

    ``result()`` gives: FRACTION_KEYS as per-slice means x100; hd and hd95 as means over the
    slices where they are defined (nan slices excluded, units as given); ``<metric>_nonempty`` = the
    same over the slices with non-empty GT only (nan if none); counts n_slices, n_empty_gt,
    n_empty_pred, n_hd_undefined; and each ``extra`` key averaged as-is (no x100) over the slices
    that carry it, nan values skipped. With no slices, counts are 0 and means are nan.
    """

    def __init__(self, hd95_mode: str = "max") -> None:
        _check_hd_args(95, hd95_mode)
        self.hd95_mode = hd95_mode
        self._rows: list[dict] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, pred, gt, spacing=None, extra: dict | None = None) -> dict:
        """Score one 2-D slice, store and return its metrics dict (plus ``extra`` scalars)."""
        row = slice_metrics(pred, gt, spacing, self.hd95_mode)
        for key, value in (extra or {}).items():
            if key in row or key in _RESULT_ONLY_KEYS:
                raise ValueError(f"extra key {key!r} clashes with a built-in metric")
            row[key] = float(value)
        self._rows.append(row)
        return row

    def add_batch(self, preds, gts, spacings=None) -> None:
        """Score a stack [B, H, W] of slices. ``spacings``: None, one (row, col), or B of them."""
        p, g = _as_mask(preds), _as_mask(gts)
        if p.shape != g.shape or p.ndim != 3:
            raise ValueError(f"expected two [B, H, W] stacks of equal shape, got {p.shape} and {g.shape}")
        for i, sp in enumerate(_per_slice_spacings(spacings, p.shape[0])):
            self.add(p[i], g[i], sp)

    def extend(self, rows: Iterable[dict]) -> None:
        """Add per-slice rows scored elsewhere (as :meth:`per_slice` returns them), e.g. by the other
        processes of a multi-process run."""
        self._rows.extend(dict(r) for r in rows)

    def per_slice(self) -> list[dict]:
        """The stored per-slice metric dicts, in the order they were added (copies)."""
        return [dict(r) for r in self._rows]

    def result(self) -> dict:
        """Aggregated metrics over all slices added so far (see the class docstring)."""
        rows = self._rows
        out = {k: _nanmean(r[k] for r in rows) * 100.0 for k in FRACTION_KEYS}
        for k in DISTANCE_KEYS:
            out[k] = _nanmean(r[k] for r in rows)
        nonempty = [r for r in rows if not r["empty_gt"]]
        for k in FRACTION_KEYS + DISTANCE_KEYS:
            scale = 100.0 if k in FRACTION_KEYS else 1.0
            out[f"{k}_nonempty"] = _nanmean(r[k] for r in nonempty) * scale
        out["n_slices"] = len(rows)
        out["n_empty_gt"] = sum(bool(r["empty_gt"]) for r in rows)
        out["n_empty_pred"] = sum(bool(r["empty_pred"]) for r in rows)
        out["n_hd_undefined"] = sum(math.isnan(r["hd"]) for r in rows)
        for k in self._extra_keys():
            out[k] = _nanmean(r[k] for r in rows if k in r)
        return out

    def _extra_keys(self) -> list[str]:
        """Keys of ``extra`` values seen so far, in first-seen order."""
        builtin = set(FRACTION_KEYS) | set(DISTANCE_KEYS) | {"empty_gt", "empty_pred"}
        keys: dict[str, None] = {}
        for r in self._rows:
            keys.update((k, None) for k in r if k not in builtin)
        return list(keys)


def _per_slice_spacings(spacings, n: int) -> Sequence:
    """Expand None / one (row, col) pair / n pairs into a list of n per-slice spacings."""
    if spacings is None:
        return [None] * n
    arr = np.asarray(spacings, dtype=float)
    if arr.ndim == 1:
        return [tuple(arr)] * n
    if arr.ndim == 2 and arr.shape == (n, 2):
        return [tuple(row) for row in arr]
    raise ValueError(f"spacings must be None, (row, col) or shape ({n}, 2); got shape {arr.shape}")
