"""The quantizers of the paper, as autograd functions with straight-through gradients.

Public entry points (stable; tools outside the package call them):

    fixed_point(x, i_bits, f_bits, mode="paper")   Qi.f fixed point, modes paper | saturating | pow2
    int_quant(x, bits)                             the original INT quantizer (not rescaled back)
    binary(x)                                      sign(x), hard-tanh straight-through gradient
    ternary(w)                                     TWN ternary weights, per output filter

Every function takes a torch tensor of any float dtype on any device and returns a tensor of the
same shape, dtype and device. None of them syncs with the host (no ``.item()``, no data-dependent
Python branches), and each forward allocates only the temporaries its math needs.

The math is docs/method.md sections 1-2. In short, for the default ``paper`` mode (Eq. 1-4):

    a = |x|,  x_i = floor(a),  x_f = a - x_i
    RC(v, n) = round(clamp(v, 0, 2^n - 1) * 2^n) / 2^n          (round half to even)
    Q(x; i, f) = sign(x) * (RC(x_i, i) + RC(x_f, f))

Because the integer part is an integer, RC(x_i, i) is simply min(x_i, 2^i - 1); and the fraction
is below 1 <= 2^f - 1 whenever f >= 1, so RC(x_f, f) is round(x_f * 2^f) / 2^f (which may round up
to exactly 1.0: the paper's carry is not re-saturated), and 0 when f = 0. The code below uses these
simplifications; the tests compare it against a literal transcription of Eq. 1-4.
"""

from __future__ import annotations

from typing import Callable

import torch

FIXED_MODES = ("paper", "saturating", "pow2")


# --------------------------------------------------------------------------------------------
# Forward maths (no autograd). Each returns a new tensor; temporaries are updated in place.
# --------------------------------------------------------------------------------------------

def _paper_forward(x: torch.Tensor, i_bits: int, f_bits: int) -> torch.Tensor:
    """Eq. 1-4 on signed parts: sign(x) min(floor|x|, 2^i - 1) = trunc(clamp(x, +-(2^i - 1))) and
    sign(x) round(frac|x| 2^f) / 2^f = round(frac(x) 2^f) / 2^f (round half to even is odd-symmetric),
    so no abs/copysign passes are needed. frac and trunc are exact in floating point, and clamping
    before truncating is the same as after because the bound is an integer.

    Speed (profiled on CPU): ``torch.trunc`` is a slow scalar loop on CPU (~20x a clamp), while
    ``div_(1, rounding_mode="trunc")`` is vectorised and exact (x / 1 = x), keeping the sign of zero.
    The integer part is one allocation + one in-place pass, the fraction one allocation + two in-place
    passes, and the two are summed by ``add_(alpha=2^-f)`` (exact: scaling by a power of two)."""
    if f_bits > 0:
        scale = float(2 ** f_bits)
        r = torch.frac(x).mul_(scale).round_()   # round(frac(x) 2^f), an integer count of 2^-f steps
        if i_bits > 0:
            return _trunc_clamped(x, float(2 ** i_bits - 1)).add_(r, alpha=1.0 / scale)
        return r.mul_(1.0 / scale)
    if i_bits > 0:
        return _trunc_clamped(x, float(2 ** i_bits - 1))
    return torch.zeros_like(x)                   # Q0.0 keeps nothing


def _trunc_clamped(x: torch.Tensor, bound: float) -> torch.Tensor:
    """trunc(clamp(x, -bound, bound)) in a new tensor (= clamp(trunc(x)) for an integer bound)."""
    return torch.clamp(x, -bound, bound).div_(1.0, rounding_mode="trunc")


def _saturating_forward(x: torch.Tensor, i_bits: int, f_bits: int) -> torch.Tensor:
    """sign(x) * min(round(|x| 2^f), 2^(i+f) - 1) / 2^f; round-half-even is odd-symmetric, so
    rounding x * 2^f directly and clamping both sides gives the same values in fewer passes."""
    scale = float(2 ** f_bits)
    top = float(2 ** (i_bits + f_bits) - 1)
    return (x * scale).round_().clamp_(-top, top).mul_(1.0 / scale)


def pow2_limit(i_bits: int, f_bits: int) -> float:
    """The clamp M of pow2 mode: [i>0] 2^(i-1) + [f>0] (1 - 2^-f)."""
    m = 0.0
    if i_bits > 0:
        m += 2.0 ** (i_bits - 1)
    if f_bits > 0:
        m += 1.0 - 2.0 ** (-f_bits)
    return m


def _pow2_forward(x: torch.Tensor, i_bits: int, f_bits: int) -> torch.Tensor:
    """Signed nearest power of two, 2^round(log2|x|) (0 stays 0: log2 0 = -inf, 2^-inf = 0),
    clamped to +-M. This is what the authors' EM code really ran."""
    m = pow2_limit(i_bits, f_bits)
    return x.abs().log2_().round_().exp2_().copysign_(x).clamp_(-m, m)   # one allocation


_FIXED_FORWARD = {"paper": _paper_forward, "saturating": _saturating_forward, "pow2": _pow2_forward}


def _int_forward(x: torch.Tensor, bits: int) -> torch.Tensor:
    """floor(2^n (v - min) / (max - min)) - 2^(n-1) over the whole tensor, not rescaled back.

    A constant tensor (max == min) has no scale: every element maps to -2^(n-1), the limit of the
    formula as its numerator (v - min) is 0. Written without a host sync: the scale is chosen by
    ``torch.where`` on the device.
    """
    lo, hi = torch.aminmax(x.detach())
    span = hi - lo
    # divide by the span itself, not multiply by a rounded 1/span: the reciprocal's rounding put
    # values on an integer boundary (the maximum itself) one code low. 2^n (x - lo) is exact.
    # A constant tensor has x - lo = 0 everywhere, so dividing it by 1 instead of 0 gives 0.
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return (x - lo).mul_(float(2 ** bits)).div_(safe).floor_().sub_(float(2 ** (bits - 1)))


def _binary_forward(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x)


def _ternary_forward(w: torch.Tensor) -> torch.Tensor:
    """TWN (Li & Liu 2016), one (delta, alpha) per output filter (dim 0):
    delta_o = 0.7 mean|W_o|, alpha_o = mean of |W_o| where |W_o| > delta_o,
    W_t = alpha_o sign(W) [|W| > delta_o]. A filter with no entry above delta (all zeros) gets 0."""
    a = w.abs()
    dims = tuple(range(1, w.dim())) if w.dim() > 1 else (0,)
    delta = a.mean(dim=dims, keepdim=True).mul_(0.7)
    # the mask as 0./1. in w's dtype: arithmetic with a bool tensor ran several times slower (the
    # mixed-dtype kernels are not vectorised) and the sums of 0/1 and of a*1/a*0 are exact anyway
    keep = torch.gt(a, delta, out=torch.empty_like(a))
    count = keep.sum(dim=dims, keepdim=True).clamp_(min=1)
    alpha = a.mul_(keep).sum(dim=dims, keepdim=True).div_(count)    # |W| is not needed after this
    # sign * keep * alpha in the buffer of |W|: multiplying by {-1, 0, 1} is exact in any order
    return torch.sign(w, out=a).mul_(keep).mul_(alpha)


# --------------------------------------------------------------------------------------------
# Autograd wrappers: straight-through estimators.
# --------------------------------------------------------------------------------------------

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _in_float32(forward: Callable[..., torch.Tensor], x: torch.Tensor, *args) -> torch.Tensor:
    """``forward(x, *args)``, computed in float32 for float16 / bfloat16 inputs and cast back.

    Why: the bounds of a wide format (Q8.8's 2^16 - 1 codes, 2^n (x - min) for INTn) overflow
    float16, and log2 / round in 8-11 significant bits pick other powers of two and grid points
    than the format defines. The result is the format's value rounded once to x's dtype (exact
    whenever the format fits the dtype, e.g. Q6.0 and Q0.4). float32 and float64 run as they are."""
    if x.dtype in _HALF_DTYPES:
        return forward(x.float(), *args).to(x.dtype)
    return forward(x, *args)


class _FixedPointSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, i_bits, f_bits, mode):
        return _in_float32(_FIXED_FORWARD[mode], x, i_bits, f_bits)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None            # identity: no tensor saved, nothing allocated


class _IntSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits):
        return _in_float32(_int_forward, x, bits)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _BinarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _binary_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _hardtanh_ste(grad, x)


def _hardtanh_ste(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * [|x| <= 1] in one fused pass. ``hardtanh_backward`` zeroes the gradient where
    x <= lo or x >= hi; with hi = 1 + eps (the next value of x's dtype above 1) and lo = -hi that is
    exactly |x| > 1, so |x| = 1 keeps its gradient as the spec says. (grad * mask took three passes
    and two temporaries.) A NaN x may keep its gradient instead of zeroing it; its forward is NaN."""
    hi = 1.0 + torch.finfo(x.dtype).eps
    return torch.ops.aten.hardtanh_backward(grad, x, -hi, hi)


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return _ternary_forward(w)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _check_bits(name: str, value: int, low: int = 0, high: int = 23) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def fixed_point(x: torch.Tensor, i_bits: int, f_bits: int, mode: str = "paper") -> torch.Tensor:
    """Quantize ``x`` to the fixed-point format Qi.f (``i_bits`` integer, ``f_bits`` fraction bits).

    Modes (docs/method.md section 1):
      * ``paper``: the paper's Eq. 1-4 bit for bit: integer part truncated toward zero and
        saturated at 2^i - 1 (with i = 0 it wraps: Q0.4(1.3) = 0.3125), fraction rounded to
        2^-f (half to even) and allowed to carry up to 1.0. Needs 1 + i + f bits (sign-magnitude).
      * ``saturating``: round to nearest on the 2^-f grid, saturate at +-(2^(i+f) - 1) / 2^f.
      * ``pow2``: signed nearest power of two, clamped to +-M (see :func:`pow2_limit`).

    Gradient: straight-through (identity).
    """
    _check_bits("i_bits", i_bits)
    _check_bits("f_bits", f_bits)
    if i_bits + f_bits > 23:
        # float32 has a 24-bit significand: beyond that Qi.f values stop being exact.
        raise ValueError(f"i_bits + f_bits must be <= 23 to stay exact in float32, got {i_bits + f_bits}")
    if mode not in _FIXED_FORWARD:
        raise ValueError(f"fixed-point mode must be one of {', '.join(FIXED_MODES)}, got {mode!r}")
    return _FixedPointSTE.apply(x, i_bits, f_bits, mode)


def int_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The original INT quantizer: floor(2^n (x - min x) / (max x - min x)) - 2^(n-1), with min and
    max over the whole tensor, NOT rescaled back (outputs are integers in [-2^(n-1), 2^(n-1)]).

    A constant tensor maps to -2^(n-1) everywhere (no NaN). Gradient: straight-through (identity).
    """
    _check_bits("bits", bits, low=1)
    return _IntSTE.apply(x, bits)


def binary(x: torch.Tensor) -> torch.Tensor:
    """BNN quantizer: sign(x) with sign(0) = 0. Gradient: hard-tanh STE, g * [|x| <= 1]."""
    return _BinarySTE.apply(x)


def ternary(w: torch.Tensor) -> torch.Tensor:
    """TWN ternary weights alpha_o * {-1, 0, +1} with per-output-filter threshold and scale
    (dim 0 indexes the filters). Gradient: straight-through (identity)."""
    return _TernarySTE.apply(w)
