"""Quantizers: the spec's golden table, hand-derived golden values, properties, gradients."""

import numpy as np
import pytest
import torch

from unetq.quantize import binary, fixed_point, int_quant, pow2_limit, ternary

X = [-20.3, -3.7, -0.3, 0.1, 0.77, 0.97, 1.0, 1.3, 15.99, 100.0]

# docs/method.md's golden table, verbatim (paper mode).
GOLDEN = {
    (4, 4): [-15.3125, -3.6875, -0.3125, 0.125, 0.75, 1.0, 1, 1.3125, 16, 15],
    (0, 4): [-0.3125, -0.6875, -0.3125, 0.125, 0.75, 1.0, 0, 0.3125, 1.0, 0],
    (6, 0): [-20, -3, 0, 0, 0, 0, 1, 1, 15, 63],
}


def q(values, i, f, mode="paper", dtype=torch.float32):
    return fixed_point(torch.tensor(values, dtype=dtype), i, f, mode).tolist()


@pytest.mark.parametrize("fmt", list(GOLDEN))
def test_golden_table_of_the_spec(fmt):
    assert q(X, *fmt) == GOLDEN[fmt]


# Derived by hand from Eq. 1-4 (a = |x|, integer part truncated and saturated at 2^i - 1,
# fraction rounded half-to-even to 2^-f and allowed to carry to 1.0).
HAND = [
    # Q0.2, step 1/4: 0.3*4 = 1.2 -> 1; 0.4*4 = 1.6 -> 2; 0.9*4 = 3.6 -> 4 (carry to 1.0);
    # 1.2 wraps to .2 -> .8 -> 1; 0.625*4 = 2.5 -> 2 (half to even); 0.125*4 = .5 -> 0; .375*4 = 1.5 -> 2
    (0, 2, [0.3, 0.4, 0.9, 1.2, -0.625, 0.125, 0.375], [0.25, 0.5, 1.0, 0.25, -0.5, 0.0, 0.5]),
    # Q0.8, step 1/256: .1*256 = 25.6 -> 26; .999*256 = 255.744 -> 256 (1.0); frac(3.14159)*256 = 36.25 -> 36;
    # 1/512*256 = .5 -> 0; 3/512*256 = 1.5 -> 2
    (0, 8, [0.5, 0.1, -0.999, 3.14159, 1 / 512, 3 / 512], [0.5, 26 / 256, -1.0, 36 / 256, 0.0, 2 / 256]),
    # Q8.0: truncate toward zero, saturate at 255
    (8, 0, [300.7, -300.7, 2.9, -2.9, 0.99, 255.5, 127.99], [255, -255, 2, -2, 0, 255, 127]),
    # Q2.0: saturate at 3
    (2, 0, [2.9, 3.99, 4.5, -7.0, 0.5], [2, 3, 3, -3, 0]),
    # Q8.8: 1000.3 -> 255 + round(.3*256 = 76.8)/256; 3.14159 -> 3 + 36/256; .998*256 = 255.49 -> 255;
    # 255.999 -> 255 + 1.0 (the fraction's carry is not re-saturated)
    (8, 8, [1000.3, -3.14159, 0.998, 0.999, 255.999], [255 + 77 / 256, -(3 + 36 / 256), 255 / 256, 1.0, 256.0]),
]


@pytest.mark.parametrize("i,f,xs,expected", HAND)
def test_hand_golden_paper_mode(i, f, xs, expected):
    assert q(xs, i, f) == pytest.approx(expected, abs=0)


SATURATING = [
    # Q4.4: top = 255/16; 1.3*16 = 20.8 -> 21; .97*16 = 15.52 -> 16; 15.99*16 = 255.84 -> 256 -> 255
    (4, 4, [-20.3, 1.3, 0.97, 15.99, 100.0], [-255 / 16, 21 / 16, 1.0, 255 / 16, 255 / 16]),
    # Q0.4: top = 15/16; -.3*16 = -4.8 -> -5; 1/32*16 = .5 -> 0; 3/32*16 = 1.5 -> 2
    (0, 4, [1.3, -0.3, 1 / 32, 3 / 32, 0.97], [15 / 16, -5 / 16, 0.0, 2 / 16, 15 / 16]),
    # Q6.0: round half to even, saturate at 63
    (6, 0, [1.5, 2.5, -20.3, 100.0, 0.3, -0.7], [2, 2, -20, 63, 0, -1]),
]


@pytest.mark.parametrize("i,f,xs,expected", SATURATING)
def test_hand_golden_saturating(i, f, xs, expected):
    assert q(xs, i, f, "saturating") == expected


POW2 = [
    # Q4.4: M = 8 + 15/16. log2 .3 = -1.74 -> -2; log2 .75 = -.42 -> 0; log2 3 = 1.58 -> 2; log2 5 = 2.32 -> 2;
    # log2 6 = 2.58 -> 3; log2 12 = 3.58 -> 4 -> 16 -> clamp; log2 .01 = -6.64 -> -7
    (4, 4, [0.3, 0.75, 3.0, 5.0, 6.0, 12.0, -0.01, 0.0], [0.25, 1.0, 4.0, 4.0, 8.0, 8.9375, -1 / 128, 0.0]),
    # Q0.4: M = 15/16; no smallest step: 1e-6 -> 2^-20
    (0, 4, [0.75, 0.3, 0.05, -2.0, 1e-6], [0.9375, 0.25, 0.0625, -0.9375, 2.0 ** -20]),
    # Q6.0: M = 32; magnitudes below 1 are kept as powers of two (paper mode would give 0)
    (6, 0, [0.3, 100.0, 20.0, -0.6], [0.25, 32.0, 16.0, -0.5]),
    # Q2.0: M = 2; Q0.0: M = 0
    (2, 0, [1.3, 3.0], [1.0, 2.0]),
    (0, 0, [1.3, -3.0], [0.0, 0.0]),
]


@pytest.mark.parametrize("i,f,xs,expected", POW2)
def test_hand_golden_pow2(i, f, xs, expected):
    assert q(xs, i, f, "pow2") == expected


def test_pow2_limit_matches_spec():
    assert pow2_limit(4, 4) == 8.9375 and pow2_limit(0, 4) == 0.9375 and pow2_limit(6, 0) == 32


# ------------------------------------------------------------------ properties

def numpy_eq_1_4(x: np.ndarray, i: int, f: int) -> np.ndarray:
    """A literal transcription of Eq. 1-4 (same dtype as x)."""
    def rc(v, n):
        return np.round(np.clip(v, 0, 2.0 ** n - 1) * 2.0 ** n) / 2.0 ** n

    a = np.abs(x)
    xi = np.floor(a)
    xf = a - xi
    s = np.sign(x)
    return (s * rc(xi, i) + s * rc(xf, f)).astype(x.dtype)


FORMATS = [(i, f) for i in range(0, 9) for f in range(0, 9) if i + f > 0]


@pytest.mark.parametrize("i,f", FORMATS)
def test_paper_mode_equals_numpy_transcription(i, f):
    rng = np.random.default_rng(1000 * i + f)
    x = np.concatenate([rng.normal(0, 1, 3000), rng.normal(0, 2.0 ** i, 3000),
                        rng.integers(-300, 300, 500) / 2.0 ** rng.integers(0, 10, 500)]).astype(np.float32)
    got = fixed_point(torch.from_numpy(x), i, f).numpy()
    np.testing.assert_array_equal(got, numpy_eq_1_4(x, i, f))


@pytest.mark.parametrize("i,f", FORMATS)
def test_saturating_properties(i, f):
    rng = np.random.default_rng(7 + i * 31 + f)
    top = (2 ** (i + f) - 1) / 2 ** f
    x = torch.from_numpy(np.sort(rng.uniform(-2 * top - 1, 2 * top + 1, 5000)).astype(np.float32))
    y = fixed_point(x, i, f, "saturating")
    assert torch.all(y[1:] >= y[:-1]), "monotone"
    assert torch.equal(fixed_point(y, i, f, "saturating"), y), "idempotent"
    assert torch.equal(y * 2 ** f, torch.round(y * 2 ** f)), "on the 2^-f grid"
    assert y.abs().max() <= top, "within the representable range"
    inside = x.abs() <= top
    assert torch.all((y - x)[inside].abs() <= 2.0 ** -(f + 1)), "rounds to nearest inside the range"


@pytest.mark.parametrize("mode", ["paper", "saturating", "pow2"])
def test_fixed_point_gradient_is_identity(mode):
    x = torch.randn(500, dtype=torch.float64, requires_grad=True) * 3
    x.retain_grad()
    g = torch.randn(500, dtype=torch.float64)
    fixed_point(x, 2, 3, mode).backward(g)
    assert torch.equal(x.grad, g)


def test_int_and_ternary_gradients_are_identity():
    for fn in (lambda t: int_quant(t, 4), ternary):
        w = torch.randn(8, 4, 3, 3, requires_grad=True)
        g = torch.randn_like(w)
        fn(w).backward(g)
        assert torch.equal(w.grad, g)


def test_binary_forward_and_hardtanh_ste():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = binary(x)
    assert y.tolist() == [-1, -1, -1, 0, 1, 1, 1]
    y.backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0, 3, 3, 3, 3, 3, 0]


def test_int_golden_and_constant_tensor():
    v = torch.tensor([-1, -0.5, 0, 0.2, 0.5, 1])
    assert int_quant(v, 4).tolist() == [-8, -4, 0, 1, 4, 8]
    const = int_quant(torch.full((3, 3), 0.7), 4)
    assert torch.isfinite(const).all() and const.eq(-8).all()


def test_ternary_matches_direct_per_filter_computation():
    torch.manual_seed(3)
    w = torch.randn(6, 3, 3, 3)
    w[2] = 0.0                                   # an all-zero filter must not give NaN
    got = ternary(w)
    for o in range(6):
        a = w[o].abs().flatten().tolist()
        delta = 0.7 * sum(a) / len(a)
        above = [v for v in a if v > delta]
        alpha = sum(above) / len(above) if above else 0.0
        expect = [alpha * (1 if v > 0 else -1) if abs(v) > delta else 0.0 for v in w[o].flatten().tolist()]
        assert got[o].flatten().tolist() == pytest.approx(expect, rel=1e-6, abs=1e-7)
    assert set(torch.unique(got[0].abs()).tolist()) <= {0.0, got[0].abs().max().item()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["paper", "saturating", "pow2"])
def test_other_dtypes_agree_with_float32_on_exact_inputs(dtype, mode):
    # multiples of 1/64 in [-4, 4] are exact in every dtype, so the results must agree
    x32 = torch.arange(-256, 257, dtype=torch.float32) / 64
    y = fixed_point(x32.to(dtype), 1, 3, mode)
    assert y.dtype == dtype
    assert torch.equal(y.float(), fixed_point(x32, 1, 3, mode))


def test_bad_widths_and_modes_are_refused():
    x = torch.zeros(3)
    for args in ((-1, 4), (0, 24), (12, 12), (1.5, 2)):
        with pytest.raises(ValueError):
            fixed_point(x, *args)
    with pytest.raises(ValueError, match="paper, saturating, pow2"):
        fixed_point(x, 1, 1, "nearest")
    with pytest.raises(ValueError):
        int_quant(x, 0)


def test_output_is_a_new_tensor_and_input_untouched():
    x = torch.tensor([0.3, -1.7, 2.2])
    before = x.clone()
    for mode in ("paper", "saturating", "pow2"):
        fixed_point(x, 1, 2, mode)
    int_quant(x, 3)
    ternary(x.view(3, 1))
    assert torch.equal(x, before)


def _int_numpy(x: np.ndarray, n: int) -> np.ndarray:
    """docs/method.md's INT formula written out in numpy, in x's own precision."""
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.full_like(x, -(2.0 ** (n - 1)))
    return np.floor(x.dtype.type(2.0 ** n) * (x - lo) / (hi - lo)) - x.dtype.type(2.0 ** (n - 1))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12])
def test_int_equals_a_numpy_transcription_and_maps_the_extremes(n):
    rng = np.random.default_rng(n)
    for _ in range(200):
        x = (rng.normal(size=97) * rng.uniform(0.01, 20)).astype(np.float32)
        got = int_quant(torch.from_numpy(x), n).numpy()
        np.testing.assert_array_equal(got, _int_numpy(x, n))
        # the minimum maps to -2^(n-1) and the maximum to exactly +2^(n-1), never one code low
        assert got[x.argmin()] == -(2 ** (n - 1)) and got[x.argmax()] == 2 ** (n - 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", [(8, 8, "saturating"), (8, 8, "paper"), (16, 0, "paper"), (8, 8, "pow2"),
                                 (0, 4, "pow2"), (6, 0, "saturating")])
def test_half_dtypes_compute_the_float32_format_and_round_once(dtype, fmt):
    # wide formats overflow float16 bounds and log2 in 8-11 bits picks other powers of two:
    # the result must be the float32 value of the format, rounded once to the half dtype
    torch.manual_seed(0)
    x = (torch.randn(4096) * 40).to(dtype)
    i, f, mode = fmt
    y = fixed_point(x, i, f, mode)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert torch.equal(y, fixed_point(x.float(), i, f, mode).to(dtype))
    assert torch.equal(int_quant(x, 16), int_quant(x.float(), 16).to(dtype))
