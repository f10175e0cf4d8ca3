"""Exact memory accounting of a (quantized) U-Net: how many bits each tensor really needs.

The paper reports "8 fold" less weight memory for 4-bit weights. That number is 32 / 4 on the
quantized conv weights alone, at the paper's bit count i + f. This module counts every tensor a
model needs at inference, three ways:

    paper   the paper's count: i + f per Qi.f value, n for INTn, 1 for BNN, 2 for Ternary.
    honest  the format's nominal storage: sign-magnitude 1 + i + f for Qi.f; n + 1 for INTn (its
            codes run from -2^(n-1) to +2^(n-1): 2^n + 1 values); 1 for BNN; 2 for Ternary plus
            one float32 alpha per output filter.
    exact   the width that holds EVERY value the quantizer can produce; this is what
            ``unetq.export`` packs (the third value of :func:`format_bits`):
              * FIXED paper, f > 0: the fraction may round up to 1.0 (the carry is not
                re-saturated), so magnitudes run 0 .. 2^i in steps of 2^-f: codes 0 .. 2^(i+f),
                that is 2^(i+f) + 1 values, i + f + 1 magnitude bits, 2 + i + f with the sign.
                (Q0.4 paper: 6 bits, not 5, not 4.) With f = 0 there is no carry: 1 + i.
              * FIXED saturating: magnitudes 0 .. 2^(i+f) - 1: 1 + i + f, as nominal.
              * FIXED pow2: values 0, +-2^k, +-M (the clamp, when M is not a power of two). There
                is no smallest step (float32 reaches 2^-149), so the width depends on the data:
                1 sign bit + ceil(log2(levels)), levels = zero + the exponents present from the
                smallest to the largest + the clamp level.
              * INTn: n + 1 (as honest).  Ternary: 2 + alpha (as honest).
              * BNN: 1 bit per weight, plus a 32-bit index for every weight that is exactly 0
                (sign(0) = 0 is a third value; it only occurs for an exact-zero weight).

Float tensors count 32 bits in every column: the float convs (first block, head), all biases,
BatchNorm weight, bias, running mean and running variance, and ternaryTanh's beta. BatchNorm's
``num_batches_tracked`` is a training counter, not needed for inference: it is listed with 0 bits.
Activations are not stored, so they do not count (their widths are given by :func:`format_bits`).

    python -m unetq.memory --config em/a6_0_w0_4/config.yaml        # one model, totals
    python -m unetq.memory --checkpoint runs/x/best.pt --tensors     # per-tensor rows too
    python -m unetq.memory --settings                                # the paper's settings at width 64
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import checkpoint
from .config import ConfigError, parse_overrides, read_yaml
from .layers import QuantFormat
from .models import build_model, validate_model_keys
from .quantize import pow2_limit

FLOAT_BITS = 32
INDEX_BITS = 32          # one uint32 index per exact-zero BNN weight
MIB = 8 * 1024 * 1024    # bits per MiB (the paper's "18.48 MB" is the saved float model in MiB)


def bits_for(levels: int) -> int:
    """Bits needed to tell ``levels`` values apart (0 for a single value)."""
    return max(0, math.ceil(math.log2(levels))) if levels > 1 else 0


# --------------------------------------------------------------------------------------------
# Code ranges per format
# --------------------------------------------------------------------------------------------

def fixed_magnitude_max(fmt: QuantFormat) -> int:
    """The largest magnitude code |q| * 2^f a FIXED paper/saturating quantizer can produce."""
    i, f = fmt.i_bits, fmt.f_bits
    if fmt.mode == "saturating":
        return 2 ** (i + f) - 1
    if f > 0:                      # paper: integer part <= 2^i - 1, fraction may carry to 2^f / 2^f
        return 2 ** (i + f)
    return 2 ** i - 1


def pow2_levels(q: torch.Tensor, fmt: QuantFormat) -> dict:
    """The magnitude levels a pow2-quantized tensor ``q`` uses: ``e_min``/``e_max`` (the smallest and
    largest exponent k of the values 2^k present, None when there are none), ``clamp`` (float32 M) and
    ``clamp_level`` (True when M is not a power of two: it needs a level of its own)."""
    mags = q.detach().abs().double().cpu().numpy().ravel()
    clamp = float(np.float32(pow2_limit(fmt.i_bits, fmt.f_bits)))
    mant, exp = np.frexp(clamp)
    clamp_level = bool(clamp > 0 and mant != 0.5)
    powers = mags[(mags != 0) & ~(clamp_level & (mags == clamp))]
    if powers.size == 0:
        return {"e_min": None, "e_max": None, "clamp": clamp, "clamp_level": clamp_level}
    mant, exp = np.frexp(powers)
    if not np.all(mant == 0.5):
        raise ValueError("pow2 tensor holds a value that is neither 0, a power of two nor the clamp")
    return {"e_min": int(exp.min()) - 1, "e_max": int(exp.max()) - 1, "clamp": clamp, "clamp_level": clamp_level}


def pow2_level_count(levels: dict) -> int:
    """Zero + the exponents e_min..e_max + the clamp level."""
    n = 0 if levels["e_min"] is None else levels["e_max"] - levels["e_min"] + 1
    return 1 + n + int(levels["clamp_level"])


def format_bits(fmt: QuantFormat, q: torch.Tensor | None = None) -> tuple[int, int, int | None]:
    """(paper, honest, exact) bits per element of format ``fmt`` (side data such as Ternary's alphas
    or BNN's zero list not included). ``exact`` needs the quantized tensor ``q`` for pow2 (its width
    depends on the exponents present); without it, exact is None for pow2."""
    kind, i, f = fmt.kind, fmt.i_bits, fmt.f_bits
    if kind == "normal":
        return FLOAT_BITS, FLOAT_BITS, FLOAT_BITS
    if kind == "int":
        return i, i + 1, i + 1
    if kind == "bnn":
        return 1, 1, 1
    if kind == "ternary":
        return 2, 2, 2
    if fmt.mode == "pow2":
        exact = None if q is None else 1 + bits_for(pow2_level_count(pow2_levels(q, fmt)))
        return i + f, 1 + i + f, exact
    return i + f, 1 + i + f, 1 + bits_for(fixed_magnitude_max(fmt) + 1)


def activation_bits(fmt: QuantFormat) -> tuple[int, int, int | None]:
    """(paper, honest, exact) bits of one activation of format ``fmt``. Activations are not stored
    in the model; this is what a feature map would cost. Ternary quantizes weights only (float
    activations: 32); BNN activations are sign(a) in {-1, 0, +1}: exactly 2 bits; pow2's exact width
    depends on the data (None)."""
    if fmt.kind in ("normal", "ternary"):
        return FLOAT_BITS, FLOAT_BITS, FLOAT_BITS
    if fmt.kind == "bnn":
        return 1, 1, 2
    return format_bits(fmt)


# --------------------------------------------------------------------------------------------
# Per-tensor rows and totals
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorBits:
    """The storage of one tensor. ``*_bits`` are per element; ``*_side`` are extra bits for the
    whole tensor (Ternary: a float32 alpha per filter; BNN exact: an index per exact-zero weight)."""

    name: str
    shape: tuple
    role: str            # quantized weight | float weight | bias | batchnorm | activation parameter | counter
    fmt: str
    paper_bits: int
    honest_bits: int
    exact_bits: int
    honest_side: int = 0
    exact_side: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def total(self, count: str) -> int:
        """Bits of the whole tensor under ``count`` (paper | honest | exact | float32)."""
        if count == "float32":
            return self.numel * (FLOAT_BITS if self.role != "counter" else 0)
        if count == "paper":
            return self.numel * self.paper_bits
        return self.numel * getattr(self, f"{count}_bits") + getattr(self, f"{count}_side")


def _role(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return "counter"
    if leaf in ("running_mean", "running_var") or ".bn" in f".{name}":
        return "batchnorm"
    if leaf == "bias":
        return "bias"
    if leaf == "beta":
        return "activation parameter"
    return "float weight"


def quantized_weights(model: torch.nn.Module) -> dict[str, tuple[QuantFormat, torch.Tensor]]:
    """{state-dict name: (format, weights as the conv uses them)} for the model's quantized convs."""
    out = {}
    with torch.no_grad():
        for name, conv in model.quantized_convs():
            out[f"{name}.weight"] = (conv.fmt, conv.quantized_weight().detach())
    return out


def tensor_rows(model: torch.nn.Module) -> list[TensorBits]:
    """One :class:`TensorBits` per state-dict entry of a U-Net, in state-dict order."""
    quantized = quantized_weights(model)
    rows = []
    for name, value in model.state_dict().items():
        shape = tuple(value.shape)
        if name in quantized and quantized[name][0].kind != "normal":
            fmt, q = quantized[name]
            paper, honest, exact = format_bits(fmt, q)
            honest_side = exact_side = 0
            if fmt.kind == "ternary":
                honest_side = exact_side = shape[0] * FLOAT_BITS
            if fmt.kind == "bnn":
                exact_side = int((q == 0).sum()) * INDEX_BITS
            rows.append(TensorBits(name, shape, "quantized weight", fmt.describe(), paper, honest, max(1, exact),
                                   honest_side, exact_side))
            continue
        role = _role(name)
        bits = 0 if role == "counter" else FLOAT_BITS
        kind = "float32" if value.is_floating_point() else str(value.dtype).replace("torch.", "")
        rows.append(TensorBits(name, shape, role, kind, bits, bits, bits))
    return rows


COUNTS = ("paper", "honest", "exact")


def summarize(rows: Sequence[TensorBits]) -> dict:
    """Totals in bits: ``quantized`` (the quantized conv weights) and ``model`` (every tensor needed
    at inference), each as {float32, paper, honest, exact}; and the compression ratios float32 /
    count for both (``ratio_quantized`` is the paper's "8 fold" when counted the paper's way)."""
    q_rows = [r for r in rows if r.role == "quantized weight"]
    out: dict[str, Any] = {"n_quantized_weights": sum(r.numel for r in q_rows),
                           "n_parameters_and_stats": sum(r.numel for r in rows if r.role != "counter")}
    for scope, subset in (("quantized", q_rows), ("model", rows)):
        totals = {c: sum(r.total(c) for r in subset) for c in ("float32", *COUNTS)}
        out[scope] = totals
        out[f"ratio_{scope}"] = {c: (totals["float32"] / totals[c] if totals[c] else math.inf) for c in COUNTS}
    return out


def account(model: torch.nn.Module) -> tuple[list[TensorBits], dict]:
    """(per-tensor rows, totals) of a U-Net; see :func:`tensor_rows` and :func:`summarize`."""
    rows = tensor_rows(model)
    return rows, summarize(rows)


# --------------------------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------------------------

def mib(bits: int) -> float:
    """A bit count in MiB (2^20 bytes of 8 bits)."""
    return bits / MIB


def report_text(model, rows: Sequence[TensorBits], totals: dict, per_tensor: bool = False) -> str:
    """A plain-text report of one model: optional per-tensor table, then the totals."""
    wf, af = model.weight_format, model.activation_format
    lines = [f"weights {wf.describe()} on the 12 quantized convs, activations {af.describe()}; "
             f"{totals['n_parameters_and_stats']:,} stored numbers ({totals['n_quantized_weights']:,} quantized)"]
    if per_tensor:
        lines.append(f"{'tensor':34} {'shape':18} {'role':20} {'format':18} {'paper':>6} {'honest':>6} "
                     f"{'exact':>6} {'exact total bits':>16}")
        for r in rows:
            lines.append(f"{r.name:34} {str(list(r.shape)):18} {r.role:20} {r.fmt:18} {r.paper_bits:>6} "
                         f"{r.honest_bits:>6} {r.exact_bits:>6} {r.total('exact'):>16,}")
    for scope, what in (("quantized", "quantized conv weights"), ("model", "whole model (inference)")):
        if scope == "quantized" and not totals["n_quantized_weights"]:
            continue                                  # a float model has no quantized weights
        t, ratio = totals[scope], totals[f"ratio_{scope}"]
        parts = [f"{c} {mib(t[c]):.3f} MiB (x{ratio[c]:.2f})" for c in COUNTS]
        lines.append(f"{what}: float32 {mib(t['float32']):.3f} MiB | " + " | ".join(parts))
    return "\n".join(lines)


# The paper's settings (docs/method.md section 7) as (label, model keys).
SETTINGS = (
    ("full precision", dict(quantization="normal")),
    ("a8.8/w8.8", dict(quantization="fixed", activation_i_width=8, activation_f_width=8, weight_i_width=8, weight_f_width=8)),
    ("a8.0/w0.8", dict(quantization="fixed", activation_i_width=8, weight_f_width=8)),
    ("a6.0/w0.4", dict(quantization="fixed", activation_i_width=6, weight_f_width=4)),
    ("a6.0/w0.2", dict(quantization="fixed", activation_i_width=6, weight_f_width=2)),
    ("a4.0/w0.2", dict(quantization="fixed", activation_i_width=4, weight_f_width=2)),
    ("a2.0/w0.2", dict(quantization="fixed", activation_i_width=2, weight_f_width=2)),
    ("BNN", dict(quantization="bnn")),
    ("Ternary", dict(quantization="ternary", activation="ternarytanh")),
)


def settings_table(base_width: int = 64, seed: int = 0) -> str:
    """Markdown table of the paper's settings at ``base_width``: weight bits per count and the whole
    model's size in MiB per count (paper mode and pow2 for FIXED; pow2's exact width is measured on
    freshly initialised U(-1, 1) weights, seed ``seed``)."""
    head = ("| setting | weights | bits/weight paper / honest / exact | quantized weights only: x smaller "
            "(paper / exact) | model MiB paper | honest | exact | whole model: x smaller (paper / exact) "
            "| pow2 exact bits | pow2 exact MiB |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for label, keys in SETTINGS:
        torch.manual_seed(seed)
        rows, t = account(build_model(validate_model_keys({**keys, "base_width": base_width, "fixed_mode": "paper"})))
        q = [r for r in rows if r.role == "quantized weight"]
        bits = f"{q[0].paper_bits} / {q[0].honest_bits} / {q[0].exact_bits}" if q else "32 / 32 / 32"
        pow2 = ("", "")
        if keys["quantization"] == "fixed":
            torch.manual_seed(seed)
            prow, pt = account(build_model(validate_model_keys({**keys, "base_width": base_width,
                                                                "fixed_mode": "pow2"})))
            widths = sorted({r.exact_bits for r in prow if r.role == "quantized weight"})
            pow2 = ("-".join(map(str, (widths[0], widths[-1]))) if len(widths) > 1 else str(widths[0]),
                    f"{mib(pt['model']['exact']):.2f}")
        m, r, rq = t["model"], t["ratio_model"], t["ratio_quantized"]
        fmt = q[0].fmt.replace(" (paper)", "") if q else "float32"
        lines.append(f"| {label} | {fmt} | {bits} | {_ratio_text(rq) if q else '1.00 / 1.00'} | {mib(m['paper']):.2f} | "
                     f"{mib(m['honest']):.2f} | {mib(m['exact']):.2f} | {r['paper']:.2f} / {r['exact']:.2f} | "
                     f"{pow2[0]} | {pow2[1]} |")
    return "\n".join(lines)


def _ratio_text(ratio: dict) -> str:
    return f"{ratio['paper']:.2f} / {ratio['exact']:.2f}"


def _model_from_args(args) -> torch.nn.Module:
    """The model of ``--checkpoint`` (its recorded settings and weights) or of ``--config`` (untrained),
    with the ``-o`` overrides, validated once here."""
    overrides = parse_overrides(args.override)
    if args.checkpoint:
        ckpt = checkpoint.load(args.checkpoint)
        if not ckpt["config"]:
            raise checkpoint.CheckpointError(f"{args.checkpoint}: holds no config; the model settings are unknown")
        model = build_model(validate_model_keys({**ckpt["config"], **overrides}, source=Path(args.checkpoint)))
        checkpoint.load_into(model, ckpt["model"], Path(args.checkpoint))
        return model
    data = read_yaml(Path(args.config))
    section = data.get(args.type) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{args.config}: no section {args.type!r} with key: value pairs (the -t argument)")
    return build_model(validate_model_keys({**section, **overrides}, source=Path(args.config)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.memory", description="Exact bit accounting of a U-Net.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="an experiment or run config.yaml (an untrained model of its settings)")
    src.add_argument("--checkpoint", help="a checkpoint (best.pt / last.pt): its settings and trained weights")
    src.add_argument("--settings", action="store_true", help="Markdown table of the paper's settings")
    parser.add_argument("-t", "--type", default="UNET", help="config section (default UNET)")
    parser.add_argument("-o", "--override", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="change model keys, e.g. -o base_width=64")
    parser.add_argument("--base-width", type=int, default=64, help="base width for --settings (default 64)")
    parser.add_argument("--tensors", action="store_true", help="also print one row per tensor")
    args = parser.parse_args(argv)
    try:
        if args.settings:
            print(settings_table(args.base_width))
            return 0
        model = _model_from_args(args)
    except (ConfigError, checkpoint.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows, totals = account(model)
    print(report_text(model, rows, totals, per_tensor=args.tensors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
