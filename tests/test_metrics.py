"""Tests of unetq.metrics: hand-worked cases, brute-force Hausdorff / Rand index, aggregation."""

import itertools
import math

import numpy as np
import pytest

from unetq import metrics as M

# ---------------------------------------------------------------------------------------------
# A 4x4 example worked out by hand.
#   gt          pred        TP: (0,0) (0,1) (1,0)            -> 3
#   1 1 0 0     1 1 1 0     FP: (0,2) (3,3)                  -> 2
#   1 1 0 0     1 0 0 0     FN: (1,1)                        -> 1
#   0 0 0 0     0 0 0 0     TN: 16 - 6                       -> 10
#   0 0 0 0     0 0 0 1
# dice = 6/9   precision = 3/5   recall = 3/4   specificity = 10/12   iou = 3/6   accuracy = 13/16
# Rand: N = 16, C(16,2) = 120; cells 3,2,1,10 -> C2: 3+1+0+45 = 49
#       pred rows 5, 11 -> 10 + 55 = 65;  gt columns 4, 12 -> 6 + 66 = 72
#       RI = (120 + 2*49 - 65 - 72) / 120 = 81/120
# Boundaries: every gt pixel (2x2 block) and every pred pixel is a boundary pixel.
#   pred -> gt: (0,0) 0, (0,1) 0, (0,2) 1, (1,0) 0, (3,3) -> (1,1) = sqrt(8)
#   gt -> pred: (0,0) 0, (0,1) 0, (1,0) 0, (1,1) -> (0,1) or (1,0) = 1
#   HD = sqrt(8)
#   HD95 "max": pred->gt sorted 0,0,0,1,sqrt8 at rank 0.95*4 = 3.8 -> 1 + 0.8 (sqrt8 - 1)
#               gt->pred sorted 0,0,0,1 at rank 0.95*3 = 2.85 -> 0.85;  max -> 1 + 0.8 (sqrt8 - 1)
#   HD95 "pooled": 0,0,0,0,0,0,1,1,sqrt8 at rank 0.95*8 = 7.6 -> 1 + 0.6 (sqrt8 - 1)
# ---------------------------------------------------------------------------------------------
GT4 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
PRED4 = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
S8 = math.sqrt(8.0)


def test_hand_4x4_confusion_and_fractions():
    assert M.confusion(PRED4, GT4) == (3, 2, 1, 10)
    assert M.dice(PRED4, GT4) == pytest.approx(6 / 9)
    assert M.precision(PRED4, GT4) == pytest.approx(3 / 5)
    assert M.recall(PRED4, GT4) == pytest.approx(3 / 4)
    assert M.specificity(PRED4, GT4) == pytest.approx(10 / 12)
    assert M.iou(PRED4, GT4) == pytest.approx(3 / 6)
    assert M.accuracy(PRED4, GT4) == pytest.approx(13 / 16)
    assert M.rand_index(PRED4, GT4) == pytest.approx(81 / 120)


def test_hand_4x4_hausdorff():
    assert M.hausdorff(PRED4, GT4) == pytest.approx(S8)
    assert M.hausdorff(GT4, PRED4) == pytest.approx(S8)  # symmetric
    assert M.hausdorff(PRED4, GT4, percentile=95) == pytest.approx(1 + 0.8 * (S8 - 1))
    assert M.hausdorff(PRED4, GT4, percentile=95, mode="pooled") == pytest.approx(1 + 0.6 * (S8 - 1))


def test_hand_4x4_slice_metrics_and_input_types():
    as_int = M.slice_metrics(PRED4, GT4)
    as_bool = M.slice_metrics(PRED4.astype(bool), GT4.astype(bool))
    assert as_int == as_bool
    assert as_int["dice"] == pytest.approx(6 / 9)
    assert as_int["rand_index"] == pytest.approx(81 / 120)
    assert as_int["hd"] == pytest.approx(S8)
    assert as_int["hd95"] == pytest.approx(1 + 0.8 * (S8 - 1))
    assert as_int["empty_gt"] is False and as_int["empty_pred"] is False


def test_empty_gt_and_empty_pred():
    z = np.zeros((5, 6), dtype=bool)
    s = M.slice_metrics(z, z)
    # Paper convention: zero denominators give 0, so Dice is 0 even for a correct empty prediction.
    assert s["dice"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0 and s["iou"] == 0.0
    assert s["specificity"] == 1.0 and s["accuracy"] == 1.0
    assert s["hd"] == 0.0 and s["hd95"] == 0.0
    assert s["rand_index"] == 1.0
    assert s["empty_gt"] is True and s["empty_pred"] is True


def test_exactly_one_mask_empty_gives_nan_hausdorff():
    z = np.zeros((5, 5), dtype=int)
    p = z.copy()
    p[2, 2] = 1
    assert math.isnan(M.hausdorff(p, z))
    assert math.isnan(M.hausdorff(z, p, percentile=95))
    s = M.slice_metrics(p, z)
    assert math.isnan(s["hd"]) and math.isnan(s["hd95"])
    assert s["dice"] == 0.0 and s["empty_gt"] is True and s["empty_pred"] is False


def test_one_pixel_masks_exact_euclidean_distance():
    a = np.zeros((8, 8), dtype=bool)
    b = np.zeros((8, 8), dtype=bool)
    a[1, 2] = True
    b[4, 6] = True  # offset (3, 4) -> 5
    assert M.hausdorff(a, b) == pytest.approx(5.0)
    assert M.hausdorff(a, b, percentile=95) == pytest.approx(5.0)
    assert M.hausdorff(a, b, percentile=95, mode="pooled") == pytest.approx(5.0)


def test_anisotropic_spacing_gives_mm():
    a = np.zeros((8, 8), dtype=bool)
    b = np.zeros((8, 8), dtype=bool)
    a[0, 0] = True
    b[3, 4] = True
    # rows 3 * 2.0 mm = 6 mm, cols 4 * 0.5 mm = 2 mm -> sqrt(36 + 4)
    assert M.hausdorff(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.sqrt(40.0))
    s = M.slice_metrics(a, b, spacing=(2.0, 0.5))
    assert s["hd"] == pytest.approx(math.sqrt(40.0))
    # Swapping the spacing axes changes the answer: rows 3 * 0.5, cols 4 * 2 -> sqrt(2.25 + 64)
    assert M.hausdorff(a, b, spacing=(0.5, 2.0)) == pytest.approx(math.sqrt(66.25))


def test_disjoint_masks():
    a = np.zeros((6, 10), dtype=bool)
    b = np.zeros((6, 10), dtype=bool)
    a[1:3, 0:2] = True  # 2x2 block at rows 1-2, cols 0-1
    b[1:3, 7:9] = True  # 2x2 block at rows 1-2, cols 7-8
    s = M.slice_metrics(a, b)
    assert s["dice"] == 0.0 and s["iou"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0
    assert s["specificity"] == pytest.approx(52 / 56)
    assert s["accuracy"] == pytest.approx(52 / 60)
    # Farthest boundary pixel (col 0) to the nearest one (col 7, same row) is 7.
    assert s["hd"] == pytest.approx(7.0)


def test_identical_masks():
    rng = np.random.default_rng(5)
    m = rng.random((9, 9)) > 0.5
    s = M.slice_metrics(m, m)
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["accuracy"] == 1.0
    assert s["hd"] == 0.0 and s["hd95"] == 0.0
    assert s["rand_index"] == 1.0


def test_boundary_excludes_interior_and_counts_image_edge():
    m = np.zeros((5, 5), dtype=bool)
    m[0:4, 0:4] = True
    b = M.boundary(m)
    # Interior (all four neighbours inside the mask): (1,1) (1,2) (2,1) (2,2); the top/left edge
    # pixels are boundary because outside the image counts as background.
    expected = m.copy()
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(b, expected)


def test_rand_index_tiny_and_swapped_labels():
    assert M.rand_index(np.array([[1]]), np.array([[0]])) == 1.0  # N < 2
    m = np.array([[1, 0], [0, 1]])
    # Swapping labels keeps the same partition: every pair agrees.
    assert M.rand_index(m, 1 - m) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        M.confusion(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        M.hausdorff(PRED4, GT4, mode="mean")
    with pytest.raises(ValueError):
        M.hausdorff(PRED4, GT4, percentile=101)
    with pytest.raises(ValueError):
        M.hausdorff(PRED4, GT4, spacing=(1.0, 0.0))


# ---------------------------------------------------------------------------------------------
# Brute-force references, written independently of the library (no scipy).
# ---------------------------------------------------------------------------------------------
def brute_boundary_points(mask):
    """Boundary pixel coordinates by an explicit loop over pixels and their 4-neighbours."""
    h, w = mask.shape
    pts = []
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < h and 0 <= cc < w) or not mask[rr, cc]:
                    pts.append((r, c))
                    break
    return np.array(pts, dtype=float).reshape(-1, 2)


def brute_hausdorff(a, b, percentile, spacing, mode):
    pa, pb = brute_boundary_points(a), brute_boundary_points(b)
    if len(pa) == 0 and len(pb) == 0:
        return 0.0
    if len(pa) == 0 or len(pb) == 0:
        return float("nan")
    scale = np.array(spacing if spacing is not None else (1.0, 1.0))
    diff = (pa[:, None, :] - pb[None, :, :]) * scale
    dist = np.sqrt((diff**2).sum(axis=-1))
    d_ab, d_ba = dist.min(axis=1), dist.min(axis=0)
    if percentile is None:
        return max(d_ab.max(), d_ba.max())
    if mode == "max":
        return max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))
    return np.percentile(np.concatenate([d_ab, d_ba]), percentile)


def random_masks(n, shape, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        # Vary the density so some masks have interiors and some are sparse or empty.
        da, db = rng.choice([0.0, 0.05, 0.3, 0.6, 0.9], size=2, p=[0.05, 0.2, 0.25, 0.25, 0.25])
        yield rng.random(shape) < da, rng.random(shape) < db


HD_CASES = list(random_masks(50, (12, 12), seed=123))


@pytest.mark.parametrize("spacing", [None, (1.7, 0.6)])
@pytest.mark.parametrize("percentile,mode", [(None, "max"), (95, "max"), (95, "pooled"), (50, "pooled")])
def test_hausdorff_matches_brute_force(percentile, mode, spacing):
    n_defined = 0
    for a, b in HD_CASES:
        got = M.hausdorff(a, b, percentile=percentile, spacing=spacing, mode=mode)
        want = brute_hausdorff(a, b, percentile, spacing, mode)
        if math.isnan(want):
            assert math.isnan(got)
        else:
            n_defined += 1
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert n_defined >= 30  # the random set really exercises the defined case


def test_slice_metrics_hd_fields_match_brute_force():
    for a, b in HD_CASES[:15]:
        s = M.slice_metrics(a, b, spacing=(0.8, 1.3))
        for key, pct in (("hd", None), ("hd95", 95)):
            want = brute_hausdorff(a, b, pct, (0.8, 1.3), "max")
            assert (math.isnan(s[key]) and math.isnan(want)) or s[key] == pytest.approx(want)


def brute_rand_index(a, b):
    la, lb = a.ravel().tolist(), b.ravel().tolist()
    pairs = list(itertools.combinations(range(len(la)), 2))
    agree = sum((la[i] == la[j]) == (lb[i] == lb[j]) for i, j in pairs)
    return agree / len(pairs)


def test_rand_index_matches_brute_force():
    for a, b in random_masks(25, (5, 5), seed=7):
        assert M.rand_index(a, b) == pytest.approx(brute_rand_index(a, b), rel=1e-12)


def test_rand_index_large_image_no_overflow():
    # 2000x2000: C(N, 2) ~ 8e12 exceeds int32; half the pixels wrong in one block.
    n = 2000
    gt = np.zeros((n, n), dtype=bool)
    pred = np.zeros((n, n), dtype=bool)
    pred[: n // 2] = True
    # gt puts every pixel together, so a pair agrees iff pred also puts it together:
    # the pairs inside either half of pred, 2 * C(N/2, 2) of C(N, 2) -> ~0.5
    N = n * n
    want = 2 * math.comb(N // 2, 2) / math.comb(N, 2)
    assert M.rand_index(pred, gt) == pytest.approx(want, rel=1e-12)
    assert 0.49 < want < 0.51


# ---------------------------------------------------------------------------------------------
# Aggregator
# ---------------------------------------------------------------------------------------------
def test_aggregator_means_counts_and_nan_handling():
    z = np.zeros((4, 4), dtype=int)
    one = z.copy()
    one[0, 0] = 1
    agg = M.MetricAggregator()
    agg.add(PRED4, GT4)  # hand example
    agg.add(z, z)  # empty gt, empty pred: dice 0, hd 0
    agg.add(one, z)  # empty gt, non-empty pred: dice 0, hd nan
    r = agg.result()
    assert r["n_slices"] == 3 and len(agg) == 3
    assert r["n_empty_gt"] == 2 and r["n_empty_pred"] == 1 and r["n_hd_undefined"] == 1
    assert r["dice"] == pytest.approx(100 * (6 / 9) / 3)
    assert r["dice_nonempty"] == pytest.approx(100 * 6 / 9)
    # over the one slice with non-empty ground truth: the hand example alone
    assert r["precision_nonempty"] == pytest.approx(100 * 3 / 5)
    assert r["specificity_nonempty"] == pytest.approx(100 * 10 / 12)
    assert r["hd_nonempty"] == pytest.approx(S8)
    assert r["precision"] == pytest.approx(100 * (3 / 5) / 3)
    # specificity: 10/12, 16/16, 15/16
    assert r["specificity"] == pytest.approx(100 * (10 / 12 + 1 + 15 / 16) / 3)
    # rand index: 81/120, 1, and one wrong pixel of 16: pairs broken = 15 -> 105/120
    assert r["rand_index"] == pytest.approx(100 * (81 / 120 + 1 + 105 / 120) / 3)
    # hd: mean over the two defined slices (sqrt8 and 0); the nan slice is excluded
    assert r["hd"] == pytest.approx(S8 / 2)
    assert r["hd95"] == pytest.approx((1 + 0.8 * (S8 - 1)) / 2)
    per = agg.per_slice()
    assert len(per) == 3 and per[0]["dice"] == pytest.approx(6 / 9) and math.isnan(per[2]["hd"])


def test_aggregator_zero_slices():
    r = M.MetricAggregator().result()
    assert r["n_slices"] == 0 and r["n_empty_gt"] == 0 and r["n_hd_undefined"] == 0
    for key in ("dice", "rand_index", "hd", "hd95", "dice_nonempty"):
        assert math.isnan(r[key])


def test_aggregator_all_hd_undefined_and_no_nonempty_gt():
    z = np.zeros((3, 3), dtype=int)
    one = z.copy()
    one[1, 1] = 1
    agg = M.MetricAggregator()
    agg.add(one, z)
    r = agg.result()
    assert math.isnan(r["hd"]) and math.isnan(r["dice_nonempty"]) and r["n_hd_undefined"] == 1
    assert r["dice"] == 0.0


def test_aggregator_add_batch_equals_single_adds_and_spacing_forms():
    cases = HD_CASES[:6]
    preds = np.stack([a for a, _ in cases])
    gts = np.stack([b for _, b in cases])
    spacings = [(1.0 + i / 10, 0.5) for i in range(len(cases))]
    single = M.MetricAggregator()
    for (a, b), sp in zip(cases, spacings):
        single.add(a, b, spacing=sp)
    batch = M.MetricAggregator()
    batch.add_batch(preds, gts, spacings=spacings)
    assert _same(batch.result(), single.result())
    # One spacing for the whole stack equals passing it per slice.
    one, each = M.MetricAggregator(), M.MetricAggregator()
    one.add_batch(preds, gts, spacings=(2.0, 3.0))
    each.add_batch(preds, gts, spacings=[(2.0, 3.0)] * len(cases))
    assert _same(one.result(), each.result())
    with pytest.raises(ValueError):
        batch.add_batch(preds, gts, spacings=[(1.0, 1.0)] * (len(cases) + 1))


def _same(r1, r2):
    """Dicts equal, with nan == nan."""
    return r1.keys() == r2.keys() and all(
        (isinstance(v, float) and math.isnan(v) and math.isnan(r2[k])) or v == pytest.approx(r2[k])
        for k, v in r1.items()
    )


def test_aggregator_extra_values_averaged_as_is():
    agg = M.MetricAggregator()
    agg.add(PRED4, GT4, extra={"dice_05": 0.8})
    agg.add(PRED4, GT4, extra={"dice_05": 0.4})
    agg.add(PRED4, GT4)  # no extra: not counted in the dice_05 mean
    r = agg.result()
    assert r["dice_05"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        agg.add(PRED4, GT4, extra={"dice": 1.0})
