"""The ONNX graphs of the quantized U-Net, in three flavours (built here; :mod:`unetq.onnx_export`
writes them, runs them and checks them against PyTorch).

Flavours (docs/onnx.md has the table of what each carries):

* ``reference``: standard ONNX operators only. The quantized weights are float32 constants, every
  activation quantizer is written out (paper mode's truncation and wrap, saturating, pow2, INT's
  per-tensor min/max, BNN's sign). It computes what the fake-quantized model computes in eval mode.
* ``qcdq``: weights as int8 codes with their scale (DequantizeLinear), activations as
  QuantizeLinear -> Clip (the narrow range) -> DequantizeLinear: uniform formats of at most 8 bits.
* ``qonnx``: QONNX ``Quant`` nodes (bit width, signedness, narrow range, scale, rounding mode) for
  every uniform format at any width, for FINN / hls4ml; the weights stay float32 constants.

A flavour that cannot express a format refuses it with one line (:class:`ExportRefused`), never a
silently different graph. BatchNorm is kept as ``BatchNormalization`` (the U-Net puts it after the
activation, so it cannot be folded into the conv; tools that fold it into a threshold can do so).
Input ``image`` is (batch, 1, height, width) with every size dynamic (height and width multiples of
8); output ``logits``. :func:`lower_quant` rewrites a qonnx graph in standard operators.

The ``onnx`` package is optional (training never needs it): :func:`require` imports it when a graph
is built.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Mapping, Sequence

import numpy as np
import torch

from . import __version__, memory
from .layers import QuantConv2d, QuantFormat, TernaryTanh
from .quantize import pow2_limit

FLAVOURS = ("reference", "qcdq", "qonnx")
OPSET = 17
QONNX_DOMAIN = "qonnx.custom_op.general"


class ExportRefused(ValueError):
    """A flavour cannot express the model's format; the message says why and which flavour can."""


class MissingPackage(RuntimeError):
    """An optional package is not installed; the message says what to install."""


def require(module: str):
    """Import an optional package, or raise MissingPackage with the one line that says what to install
    (training never needs these packages, so they are imported only here)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(f"the {module!r} package is needed for this; install it with: "
                             f"pip install {module}") from None


# --------------------------------------------------------------------------------------------
# What each flavour can carry (decided from the formats alone, before anything is built)
# --------------------------------------------------------------------------------------------

def activation_bits(af: QuantFormat) -> int:
    """Signed bits of the activation codes of a uniform format (INT: unsigned n + 1 bits, since its
    codes floor(2^n (x - min) / span) run from 0 to 2^n inclusive)."""
    if af.kind == "fixed":
        return 1 + af.i_bits + (af.f_bits if af.mode == "saturating" else 0)
    if af.kind == "int":
        return af.i_bits + 1
    return 2                                        # BNN: sign in {-1, 0, +1}


def weight_bits(wf: QuantFormat) -> int:
    """Signed (narrow-range) bits of the weight codes: 1 + the magnitude bits."""
    if wf.kind == "fixed":
        mag = memory.fixed_magnitude_max(wf)
    elif wf.kind == "int":
        mag = 2 ** (wf.i_bits - 1)                  # the maximum maps to +2^(n-1), the minimum to -2^(n-1)
    else:
        mag = 1                                     # BNN and Ternary: {-1, 0, +1} (Ternary times alpha)
    return 1 + memory.bits_for(mag + 1)


def refusal(wf: QuantFormat, af: QuantFormat, flavour: str) -> str | None:
    """Why ``flavour`` cannot carry weights ``wf`` / activations ``af`` (None when it can)."""
    if flavour not in FLAVOURS:
        return f"format must be one of {', '.join(FLAVOURS)}, got {flavour!r}"
    if flavour == "reference":
        return None
    if wf.kind == "normal":
        return f"{flavour}: a float32 model has nothing quantized; export the reference flavour"
    if wf.kind == "fixed" and wf.mode == "pow2":
        return (f"{flavour}: pow2 ({wf.describe()}) rounds to powers of two, not to a uniform grid; only "
                f"the reference flavour carries it")
    if af.kind == "fixed" and af.mode == "paper" and af.f_bits > 0:
        return (f"{flavour}: paper-mode activations {af.describe()} keep the fraction when the integer part "
                f"saturates (Q{af.i_bits}.{af.f_bits} wraps at |x| >= 2^{af.i_bits}, e.g. Q0.4(1.3) = 0.3125): "
                f"not a uniform quantizer; only the reference flavour carries it (paper Qi.0 and saturating "
                f"Qi.f fit qcdq and qonnx)")
    if flavour == "qonnx" and af.kind != "ternary" and activation_bits(af) < 2:
        return (f"qonnx: activations {af.describe()} keep nothing, and a 1-bit signed Quant is bipolar (+-1); "
                f"the reference and qcdq flavours carry it")
    if flavour == "qcdq":
        wb = weight_bits(wf)
        if wb > 8:
            return (f"qcdq: weights {wf.describe()} need {wb}-bit codes, more than int8; the qonnx and "
                    f"reference flavours carry them")
        if af.kind != "ternary":                    # Ternary leaves activations float
            ab = activation_bits(af)
            if ab > 8:
                return (f"qcdq: activations {af.describe()} need {ab}-bit codes, more than 8; the qonnx and "
                        f"reference flavours carry them")
    return None


# --------------------------------------------------------------------------------------------
# Weight codes
# --------------------------------------------------------------------------------------------

def weight_grid(fmt: QuantFormat, q: torch.Tensor, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(integer codes, scale) with codes * scale == q exactly. The scale is a scalar (2^-f for FIXED,
    1 for INT and BNN) or one alpha per output filter (Ternary; an all-zero filter gets 1)."""
    q = q.detach().cpu().float().numpy()
    if fmt.kind == "ternary":
        alpha = np.abs(q).reshape(q.shape[0], -1).max(axis=1)
        scale = np.where(alpha > 0, alpha, 1.0).astype(np.float32)
        codes = q / scale.reshape(-1, 1, 1, 1)
        back = np.rint(codes).astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    else:
        scale = np.array(2.0 ** -fmt.f_bits if fmt.kind == "fixed" else 1.0, dtype=np.float32)
        codes = q / scale
        back = np.rint(codes).astype(np.float32) * scale
    limit = 2 ** (weight_bits(fmt) - 1) - 1
    if not np.array_equal(back, q) or np.abs(codes).max(initial=0) > limit:
        raise ExportRefused(f"{name}: the quantized weights are not codes of {fmt.describe()} times "
                            f"{'one scale per filter' if fmt.kind == 'ternary' else 'its scale'}; only the "
                            f"reference flavour carries them")
    return np.rint(codes).astype(np.int64), scale


# --------------------------------------------------------------------------------------------
# Graph building
# --------------------------------------------------------------------------------------------

class _Graph:
    """Nodes and initializers under construction; every helper returns its output's name."""

    def __init__(self, onnx_mod):
        self.onnx = onnx_mod
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs) -> str:
        self.count += 1
        out = out or f"t{self.count}_{op_type.lower()}"
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=f"n{self.count}_{op_type}",
                                                     domain=domain or None, **attrs))
        return out

    def trunc(self, x: str) -> str:
        """trunc(x) = sign(x) floor(|x|), which ONNX lacks. A zero may come out as +0.0 where
        PyTorch keeps -0.0 (equal values; ONNX Runtime does not keep the sign of zero here)."""
        return self.op("Mul", self.op("Sign", x), self.op("Floor", self.op("Abs", x)))

    def clip(self, x: str, lo: float, hi: float, dtype=np.float32) -> str:
        return self.op("Clip", x, self.const(lo, dtype), self.const(hi, dtype))


# ---- activation quantizers, one function per flavour ---------------------------------------

def _act_reference(g: _Graph, x: str, af: QuantFormat) -> str:
    """The activation quantizer in standard operators, in the order of :mod:`unetq.quantize`."""
    if af.kind == "fixed" and af.mode == "paper":
        i, f = af.i_bits, af.f_bits
        if f == 0 and i == 0:                     # Q0.0 keeps nothing
            return g.op("ConstantOfShape", g.op("Shape", x))
        whole = g.trunc(g.clip(x, -(2.0 ** i - 1), 2.0 ** i - 1)) if i > 0 else None
        if f == 0:
            return whole
        frac = g.op("Sub", x, g.trunc(x))
        part = g.op("Mul", g.op("Round", g.op("Mul", frac, g.const(2.0 ** f))), g.const(2.0 ** -f))
        return g.op("Add", whole, part) if whole else part
    if af.kind == "fixed" and af.mode == "saturating":
        top = 2.0 ** (af.i_bits + af.f_bits) - 1
        steps = g.clip(g.op("Round", g.op("Mul", x, g.const(2.0 ** af.f_bits))), -top, top)
        return g.op("Mul", steps, g.const(2.0 ** -af.f_bits))
    if af.kind == "fixed":
        # pow2: 2^round(log2|x|). ONNX has no Log2: log2 is taken in float64 and rounded to float32,
        # as PyTorch's float32 log2 is (it then rounds a log2 of exactly k + 0.5 half to even too)
        wide = g.op("Cast", g.op("Abs", x), to=g.onnx.TensorProto.DOUBLE)
        log2 = g.op("Mul", g.op("Log", wide), g.const(1.0 / math.log(2.0), np.float64))
        expo = g.op("Round", g.op("Cast", log2, to=g.onnx.TensorProto.FLOAT))
        level = g.op("Pow", g.const(2.0), expo)
        m = pow2_limit(af.i_bits, af.f_bits)
        return g.clip(g.op("Mul", level, g.op("Sign", x)), -m, m)
    if af.kind == "int":
        return g.op("Sub", g.op("Floor", _int_scaled(g, x, af)), g.const(2.0 ** (af.i_bits - 1)))
    if af.kind == "bnn":
        return g.op("Sign", x)
    return x                                       # normal, ternary: activations stay float


def _int_scaled(g: _Graph, x: str, af: QuantFormat) -> str:
    """2^n (x - min) / span over the whole tensor (batch included, as the INT quantizer does; a
    constant tensor divides by 1)."""
    lo = g.op("ReduceMin", x, keepdims=0)
    span = g.op("Sub", g.op("ReduceMax", x, keepdims=0), lo)
    safe = g.op("Where", g.op("Greater", span, g.const(0.0)), span, g.const(1.0))
    return g.op("Div", g.op("Mul", g.op("Sub", x, lo), g.const(2.0 ** af.i_bits)), safe)


def _qdq(g: _Graph, x: str, scale: float, lo: int, hi: int, unsigned: bool = False) -> str:
    """QuantizeLinear -> Clip(lo, hi) -> DequantizeLinear at ``scale``, zero point 0, (u)int8."""
    dtype = np.uint8 if unsigned else np.int8
    s, zp = g.const(scale), g.const(0, dtype)
    q = g.clip(g.op("QuantizeLinear", x, s, zp), lo, hi, dtype)
    return g.op("DequantizeLinear", q, s, zp)


def _act_qcdq(g: _Graph, x: str, af: QuantFormat) -> str:
    """Activations as Q -> Clip -> DQ. QuantizeLinear rounds half to even, so the paper's truncation
    and INT's floor are written in standard operators before it (their results are integers)."""
    if af.kind == "fixed" and af.mode == "saturating":
        top = 2 ** (af.i_bits + af.f_bits) - 1
        return _qdq(g, x, 2.0 ** -af.f_bits, -top, top)
    if af.kind == "fixed":                         # paper Qi.0 (the others are refused)
        top = 2 ** af.i_bits - 1
        return _qdq(g, g.trunc(x), 1.0, -top, top)
    if af.kind == "int":
        codes = _qdq(g, g.op("Floor", _int_scaled(g, x, af)), 1.0, 0, 2 ** af.i_bits, unsigned=True)
        return g.op("Sub", codes, g.const(2.0 ** (af.i_bits - 1)))
    if af.kind == "bnn":
        return _qdq(g, g.op("Sign", x), 1.0, -1, 1)
    return x


def _quant(g: _Graph, x: str, scale, bits: int, signed: bool, narrow: bool, rounding: str) -> str:
    """A QONNX Quant node (zero point 0)."""
    return g.op("Quant", x, g.const(scale), g.const(0.0), g.const(float(bits)), domain=QONNX_DOMAIN,
                signed=int(signed), narrow=int(narrow), rounding_mode=rounding)


def _act_qonnx(g: _Graph, x: str, af: QuantFormat) -> str:
    """Activations as QONNX Quant nodes (paper Qi.0 rounds toward zero: rounding mode DOWN)."""
    if af.kind == "fixed" and af.mode == "saturating":
        return _quant(g, x, 2.0 ** -af.f_bits, activation_bits(af), True, True, "ROUND")
    if af.kind == "fixed":
        return _quant(g, x, 1.0, activation_bits(af), True, True, "DOWN")
    if af.kind == "int":
        codes = _quant(g, _int_scaled(g, x, af), 1.0, activation_bits(af), False, False, "FLOOR")
        return g.op("Sub", codes, g.const(2.0 ** (af.i_bits - 1)))
    if af.kind == "bnn":
        return _quant(g, g.op("Sign", x), 1.0, 2, True, True, "ROUND")
    return x


_ACTS = {"reference": _act_reference, "qcdq": _act_qcdq, "qonnx": _act_qonnx}


# ---- layers ----------------------------------------------------------------------------------

def _conv_weight(g: _Graph, conv, flavour: str, name: str) -> str:
    """The weight input of a conv: float32 constants (reference, float convs), int8 codes +
    DequantizeLinear (qcdq) or float32 constants through a Quant node (qonnx)."""
    quantized = isinstance(conv, QuantConv2d)
    with torch.no_grad():
        q = conv.quantized_weight() if quantized else conv.weight
    # a Normal model's QuantConv2d reaches qcdq / qonnx never: refusal() turns float32 models away
    if not quantized or flavour == "reference":
        return g.const(q.detach().cpu().float().numpy(), name=f"{name}.weight")
    fmt = conv.fmt
    codes, scale = weight_grid(fmt, q, name)
    if flavour == "qcdq":
        per_filter = scale.ndim == 1
        return g.op("DequantizeLinear", g.const(codes, np.int8, name=f"{name}.weight_codes"),
                    g.const(scale, name=f"{name}.weight_scale"),
                    g.const(np.zeros(scale.shape), np.int8), **({"axis": 0} if per_filter else {}))
    scale = scale.reshape(-1, 1, 1, 1) if scale.ndim == 1 else scale
    weights = g.const(q.detach().cpu().float().numpy(), name=f"{name}.weight")
    return g.op("Quant", weights, g.const(scale, name=f"{name}.weight_scale"), g.const(0.0),
                g.const(float(weight_bits(fmt))), domain=QONNX_DOMAIN, signed=1, narrow=1, rounding_mode="ROUND")


def _conv(g: _Graph, x: str, conv, flavour: str, name: str) -> str:
    w = _conv_weight(g, conv, flavour, name)
    inputs = [x, w] + ([g.const(conv.bias.detach().cpu().numpy(), name=f"{name}.bias")] if conv.bias is not None else [])
    out = g.op("Conv", *inputs, out=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return out


def _activation(g: _Graph, x: str, module, name: str) -> str:
    if isinstance(module, torch.nn.ReLU):
        out = g.op("Relu", x, out=name)
    elif isinstance(module, torch.nn.Tanh):
        out = g.op("Tanh", x, out=name)
    elif isinstance(module, TernaryTanh):
        # 0.5 tanh(beta (2x - 1)) + 0.5 tanh(beta (2x + 1)), in the module's order of operations
        b, two, one, half = (g.const(float(module.beta)), g.const(2.0), g.const(1.0), g.const(0.5))
        x2 = g.op("Mul", two, x)
        lo = g.op("Mul", half, g.op("Tanh", g.op("Mul", b, g.op("Sub", x2, one))))
        hi = g.op("Mul", half, g.op("Tanh", g.op("Mul", b, g.op("Add", x2, one))))
        out = g.op("Add", lo, hi, out=name)
    else:
        raise ExportRefused(f"{name}: activation {type(module).__name__} has no ONNX translation here")
    return out


BATCHNORMS = ("exact", "op")


def _batchnorm(g: _Graph, x: str, bn, name: str, how: str) -> str:
    """BatchNorm in eval mode. ``op``: ONNX ``BatchNormalization`` (what tool flows expect and fold
    themselves), which ONNX Runtime rounds differently from PyTorch now and then (1 ulp, enough to
    move a value across a quantizer's rounding boundary). ``exact`` (default): what PyTorch's CPU
    kernel computes, fma(x, alpha, beta) with float32 alpha = gamma / sqrt(var + eps) and
    beta = fma(-mean, alpha, bias): x * alpha + beta in float64 (the product is exact there),
    rounded once to float32."""
    stats = [t.detach().cpu().float().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
    if how == "op":
        names = [g.const(a, name=f"{name}.{part}") for a, part in zip(stats, ("weight", "bias", "mean", "var"))]
        return g.op("BatchNormalization", x, *names, out=name, epsilon=float(bn.eps))
    gamma, bias, mean, var = stats
    alpha = (gamma * (np.float32(1) / np.sqrt(var + np.float32(bn.eps)))).astype(np.float32)
    beta = (bias.astype(np.float64) - mean.astype(np.float64) * alpha).astype(np.float32)
    shape = (1, -1, 1, 1)
    wide = g.op("Mul", g.op("Cast", x, to=g.onnx.TensorProto.DOUBLE),
                g.const(alpha.reshape(shape), np.float64, name=f"{name}.alpha"))
    wide = g.op("Add", wide, g.const(beta.reshape(shape), np.float64, name=f"{name}.beta"))
    return g.op("Cast", wide, out=name, to=g.onnx.TensorProto.FLOAT)


def _block(g: _Graph, x: str, block, prefix: str, af: QuantFormat, flavour: str, bn: str) -> str:
    """conv -> activation -> BatchNorm -> (dropout: identity in eval) -> activation quantizer, twice."""
    for k in (1, 2):
        x = _conv(g, x, getattr(block, f"conv{k}"), flavour, f"{prefix}.conv{k}")
        x = _activation(g, x, getattr(block, f"act{k}"), f"{prefix}.act{k}")
        x = _batchnorm(g, x, getattr(block, f"bn{k}"), f"{prefix}.bn{k}", bn)
        quantized = _ACTS[flavour](g, x, af)
        x = g.op("Identity", quantized, out=f"{prefix}.quant{k}")
    return x


def _pool(g: _Graph, x: str) -> str:
    return g.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])


def _up(g: _Graph, x: str) -> str:
    """Bilinear x2 with align_corners=False: ONNX Resize, linear, half_pixel coordinates."""
    return g.op("Resize", x, "", g.const([1.0, 1.0, 2.0, 2.0]), mode="linear",
                coordinate_transformation_mode="half_pixel")


def build_graph(model, flavour: str, metadata: Mapping[str, str] | None = None, batchnorm: str = "exact"):
    """The ONNX ModelProto of a U-Net in eval mode for ``flavour``; ``batchnorm``: exact | op (see
    :func:`_batchnorm`). Raises ExportRefused."""
    onnx = require("onnx")
    reason = refusal(model.weight_format, model.activation_format, flavour)
    if reason:
        raise ExportRefused(reason)
    if batchnorm not in BATCHNORMS:
        raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORMS)}, got {batchnorm!r}")
    model = model.eval()
    g = _Graph(onnx)

    def block(x, name):
        return _block(g, x, getattr(model, name), name, model.activation_format, flavour, batchnorm)

    e1 = block("image", "enc1")
    e2 = block(_pool(g, e1), "enc2")
    e3 = block(_pool(g, e2), "enc3")
    b = block(_pool(g, e3), "bottom")
    d3 = block(g.op("Concat", _up(g, b), e3, axis=1), "dec3")
    d2 = block(g.op("Concat", _up(g, d3), e2, axis=1), "dec2")
    d1 = block(g.op("Concat", _up(g, d2), e1, axis=1), "dec1")
    _conv(g, d1, model.head, "reference", "logits")
    return _model_proto(onnx, g, flavour, {**(metadata or {}), "unetq.batchnorm": batchnorm})


def activation_graph(af: QuantFormat, flavour: str):
    """A one-quantizer graph ``image`` -> ``logits`` (any shape) of activation format ``af`` in
    ``flavour``: lets the tests hold each quantizer against :mod:`unetq.quantize` on edge values."""
    onnx = require("onnx")
    reason = refusal(af, af, flavour)
    if reason:
        raise ExportRefused(reason)
    g = _Graph(onnx)
    g.op("Identity", _ACTS[flavour](g, "image", af), out="logits")
    return _model_proto(onnx, g, flavour, {}, dims=None)


def _model_proto(onnx, g: _Graph, flavour: str, metadata: Mapping[str, str],
                 dims: Sequence | None = ("batch", 1, "height", "width")):
    helper = onnx.helper
    graph = helper.make_graph(g.nodes, "unetq_unet",
                              [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, dims)], g.inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(QONNX_DOMAIN, 1)] if flavour == "qonnx" else [])
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="unetq", producer_version=__version__)
    proto.ir_version = 8                           # readable by onnxruntime releases back to 1.10
    proto.doc_string = f"unetq U-Net, {flavour} flavour (docs/onnx.md)"
    helper.set_model_props(proto, {"unetq.flavour": flavour, **{k: str(v) for k, v in metadata.items()}})
    return proto


_TAP = re.compile(r"^(enc\d|bottom|dec\d)\.(conv|act|bn|quant)\d$")


def taps_of(proto) -> list[str]:
    """The tensors of a graph from :func:`build_graph` that are named after a PyTorch module
    (``enc2.conv1``, ``dec1.quant2``, ...), in graph order, then ``logits``."""
    return [o for n in proto.graph.node for o in n.output if _TAP.match(o)] + ["logits"]


def lower_quant(proto):
    """A copy of a qonnx graph with every ``Quant`` node written in standard operators after the
    QONNX definition: clip(x / scale + zeropt, int range) -> rounding mode -> (- zeropt) * scale.
    ONNX Runtime can then run the whole graph at once (the qonnx executor runs it node by node,
    ~0.1 s per node); the tests hold this against the executor on every quantizer."""
    onnx = require("onnx")
    lowered = type(proto).FromString(proto.SerializeToString())
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in lowered.graph.initializer}
    g = _Graph(onnx)
    g.count = len(lowered.graph.node) * 100                       # fresh names beside the existing ones
    nodes = []
    for node in lowered.graph.node:
        if node.op_type != "Quant":
            nodes.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x, scale, zero, bits = node.input
        width, signed, narrow = int(consts[bits]), bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
        lo = -(2 ** (width - 1)) + int(narrow) if signed else 0
        hi = 2 ** (width - 1) - 1 if signed else 2 ** width - 1 - int(narrow)
        y = g.clip(g.op("Add", g.op("Div", x, scale), zero), float(lo), float(hi))
        mode = attrs.get("rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        y = g.trunc(y) if mode == "DOWN" else g.op({"ROUND": "Round", "FLOOR": "Floor", "CEIL": "Ceil"}[mode], y)
        g.op("Mul", g.op("Sub", y, zero), scale, out=node.output[0])
        nodes.extend(g.nodes)
        g.nodes = []
    del lowered.graph.node[:]
    lowered.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in [*lowered.graph.initializer, *g.inits] if i.name in used]   # the bit widths go
    del lowered.graph.initializer[:]
    lowered.graph.initializer.extend(kept)
    for i, opset in enumerate(lowered.opset_import):
        if opset.domain == QONNX_DOMAIN:
            del lowered.opset_import[i]
            break
    return lowered
