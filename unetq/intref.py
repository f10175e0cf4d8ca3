"""An integer-only reference forward of a FIXED-point U-Net: the proof that fake quantization
simulates real fixed-point hardware.

For FIXED weights and activations in ``paper`` or ``saturating`` mode, every quantized value is an
integer code times a power of two: a weight is c_w * 2^-f_w, an activation c_a * 2^-f_a. This module
runs the U-Net on those codes:

* each of the 12 quantized convs: integer codes times integer codes, accumulated in int64 (nine
  shifted int64 matrix products, one per 3x3 tap; no float anywhere), then ONE rescale per layer,
  acc * 2^-(f_w + s_in), plus the float bias;
* activation, BatchNorm (in eval mode, with running statistics) and dropout (eval: identity) stay
  float, in float64, using the model's own modules; the activation quantizer's output is turned
  back into integer codes (checked exact);
* max-pooling works on the codes; the bilinear x2 upsampling (align_corners False) is done on the
  codes too: along each axis an output is (3 c[j] + c[j -+ 1]) / 4 with the edge replicated, so the
  upsampled codes are integers at scale 2^-(s + 4); the skip connection's codes are shifted to that
  scale before the concatenation;
* the float layers (the first block's two convs, the head) are float64 convs, as in the model.

:func:`integer_forward` equals the fake-quantized model run in float64 (``model.double()``) bit for
bit: in float64 every product of codes is exact and every partial sum is exact while the accumulated
integer stays below 2^53, whatever the summation order (:func:`accumulator_bounds` gives the worst
case per layer). One caveat, about the bias only: the float conv may add the bias before the sum is
complete; that stays exact while the bias's bits and the accumulator's bits fit in 53 together,
which holds for biases of ordinary size (not for, say, 1e-12 next to a sum of 1e4).

Where float32 fake quantization stops being exact: float32 has a 24-bit significand, so a conv
computed in float32 equals the integer result only while every partial sum |acc| < 2^24 (in code
units, 2^-(f_w + s_in)), i.e. worst case fan_in * max|c_w| * max|c_a| < 2^24, and only with an
algorithm that just multiplies and adds (a Winograd or FFT conv, or TF32 on recent GPUs, which
rounds inputs to 11 significant bits, breaks it earlier). The paper's a6.0/w0.4 (paper mode)
stays below 2^24 in the encoder (enc2.conv1: 576 * 16 * 63 < 2^20) but not in the worst case of
the decoder, whose inputs are upsampled codes (dec3.conv1: 4608 * 16 * 1008 ~ 2^26.1); Q8.8 x Q8.8
is past it from the first layer (products alone reach 2^34). Beyond the bound the float32 fake-quant
model is a close approximation of the fixed-point network, not the network itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import QuantConv2d, QuantFormat
from .memory import fixed_magnitude_max

UPSAMPLE_BITS = 4          # bilinear x2 in 2-D: weights (3 or 4)/4 per axis -> codes scale by 2^4


@dataclass
class Codes:
    """An activation map as integer codes: value = codes * 2^-scale."""

    codes: torch.Tensor    # int64
    scale: int

    def value(self) -> torch.Tensor:
        """The float64 values (exact while |codes| < 2^53)."""
        return self.codes.double() * 2.0 ** -self.scale


def _check_model(model) -> tuple[QuantFormat, QuantFormat]:
    wf, af = model.weight_format, model.activation_format
    for role, fmt in (("weights", wf), ("activations", af)):
        if fmt.kind != "fixed" or fmt.mode not in ("paper", "saturating"):
            raise ValueError(f"the integer reference needs FIXED paper or saturating {role}, got {fmt.describe()}")
    if model.training:
        raise ValueError("the integer reference runs the model in eval mode (BatchNorm running statistics); "
                         "call model.eval() first")
    return wf, af


def weight_codes(conv: QuantConv2d) -> torch.Tensor:
    """The quantized weights of ``conv`` as int64 codes (value = code * 2^-f), checked exact."""
    fmt = conv.fmt
    with torch.no_grad():
        q = conv.quantized_weight().double()
    return _to_codes(q, fmt.f_bits, f"{fmt.describe()} weights")


def _to_codes(q: torch.Tensor, f_bits: int, what: str) -> torch.Tensor:
    scaled = q * 2.0 ** f_bits
    codes = torch.round(scaled)
    if not torch.equal(codes, scaled):
        raise ValueError(f"{what}: a value is off the 2^-{f_bits} grid")
    return codes.to(torch.int64)


def int_conv3x3(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """3x3 convolution with zero padding 1 on int64 tensors, in int64: x (N, C, H, W), w (O, C, 3, 3)
    -> (N, O, H, W). Written as nine shifted int64 matrix products (one per tap), independent of
    torch's conv kernels."""
    n, c, h, wd = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    out = torch.zeros(n, w.shape[0], h * wd, dtype=torch.int64)
    for dy in range(3):
        for dx in range(3):
            patch = xp[:, :, dy:dy + h, dx:dx + wd].reshape(n, c, h * wd)
            out += torch.matmul(w[:, :, dy, dx], patch)
    return out.reshape(n, w.shape[0], h, wd)


def upsample_codes(a: Codes) -> Codes:
    """Bilinear x2 upsampling (align_corners False) on integer codes, exactly: per axis, output
    2j = (3 c[j] + c[j-1]) / 4 and 2j+1 = (3 c[j] + c[j+1]) / 4, the edge replicated."""
    c = a.codes
    for dim in (2, 3):
        n = c.shape[dim]
        prev = torch.cat([c.narrow(dim, 0, 1), c.narrow(dim, 0, n - 1)], dim=dim)
        nxt = torch.cat([c.narrow(dim, 1, n - 1), c.narrow(dim, n - 1, 1)], dim=dim)
        even, odd = 3 * c + prev, 3 * c + nxt
        c = torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)
    return Codes(c, a.scale + UPSAMPLE_BITS)


def concat_codes(a: Codes, b: Codes) -> Codes:
    """Channel concatenation of two code maps at a common scale (the finer one)."""
    scale = max(a.scale, b.scale)
    return Codes(torch.cat([a.codes << (scale - a.scale), b.codes << (scale - b.scale)], dim=1), scale)


def _quantize_codes(y: torch.Tensor, quant, af: QuantFormat) -> Codes:
    return Codes(_to_codes(quant(y), af.f_bits, f"{af.describe()} activations"), af.f_bits)


def _stage(block, k: int, x, af: QuantFormat) -> Codes:
    """Stage k of a block: conv -> activation -> BatchNorm -> (dropout) -> activation quantizer.
    ``x`` is Codes for a quantized conv (FIXED: _check_model made sure), a float64 tensor or Codes
    for a float conv (the first block's plain nn.Conv2d)."""
    conv = getattr(block, f"conv{k}")
    if isinstance(conv, QuantConv2d):
        acc = int_conv3x3(x.codes, weight_codes(conv))
        if acc.abs().max() >= 2 ** 53:
            raise ValueError("an accumulator reached 2^53: beyond exact float64 rescaling")
        y = acc.double() * 2.0 ** -(x.scale + conv.fmt.f_bits) + conv.bias.view(1, -1, 1, 1)
    else:
        y = conv(x.value() if isinstance(x, Codes) else x)
    y = getattr(block, f"act{k}")(y)
    y = getattr(block, f"bn{k}")(y)
    return _quantize_codes(y, getattr(block, f"quant{k}"), af)


def _block(block, x, af: QuantFormat) -> Codes:
    return _stage(block, 2, _stage(block, 1, x, af), af)


def _pool(a: Codes) -> Codes:
    return Codes(F.max_pool2d(a.codes, 2), a.scale)


@torch.no_grad()
def integer_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The logits of ``model`` (a FIXED paper/saturating U-Net in eval mode) computed with integer
    arithmetic in every quantized conv; float64 for BatchNorm, activations and the float layers.
    Equal, bit for bit, to ``model.double()(x.double())`` (see the module docstring). Runs on the
    CPU whatever the model's device (CUDA has no int64 matmul); the logits come back on x's device."""
    _, af = _check_model(model)
    m = copy.deepcopy(model).cpu().double()
    _check_bounds(m)
    device, x = x.device, x.detach().cpu().double()
    e1 = _block(m.enc1, x, af)
    e2 = _block(m.enc2, _pool(e1), af)
    e3 = _block(m.enc3, _pool(e2), af)
    b = _block(m.bottom, _pool(e3), af)
    d3 = _block(m.dec3, concat_codes(upsample_codes(b), e3), af)
    d2 = _block(m.dec2, concat_codes(upsample_codes(d3), e2), af)
    d1 = _block(m.dec1, concat_codes(upsample_codes(d2), e1), af)
    return m.head(d1.value()).to(device)


def accumulator_bounds(model) -> list[dict]:
    """Per quantized conv: fan_in, the largest weight and input codes the formats allow, the worst-
    case |accumulator| (fan_in * max|c_w| * max|c_in|, in codes) and whether it stays below 2^24
    (exact in float32) and 2^53 (exact in float64)."""
    af = model.activation_format
    a_max = fixed_magnitude_max(af)
    upsampled = {"dec3", "dec2", "dec1"}
    rows = []
    for name, conv in model.quantized_convs():
        block, stage = name.split(".")
        # a decoder block's first conv sees upsampled codes (x 2^4) and shifted skip codes
        in_max = a_max * 2 ** UPSAMPLE_BITS if block in upsampled and stage == "conv1" else a_max
        fan_in = conv.in_channels * 9
        bound = fan_in * fixed_magnitude_max(conv.fmt) * in_max
        rows.append({"layer": name, "fan_in": fan_in, "max_weight_code": fixed_magnitude_max(conv.fmt),
                     "max_input_code": in_max, "bound": bound, "float32_exact": bound < 2 ** 24,
                     "float64_exact": bound < 2 ** 53})
    return rows


def _check_bounds(model) -> None:
    worst = max(r["bound"] for r in accumulator_bounds(model))
    if worst >= 2 ** 63:
        raise ValueError(f"worst-case accumulator {worst} does not fit int64")
