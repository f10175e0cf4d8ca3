"""A model file that really is small: quantized weights stored as packed integer codes.

    python -m unetq.export runs/a6_0_w0_4/best.pt a6_0_w0_4.uqp [--compress lzma]

The file (``.uqp``, "unetq packed") holds no pickle and no code, only numbers:

    bytes 0-7     magic b"UNETQPK1"
    bytes 8-15    H, the header length, uint64 little-endian
    next H bytes  the header: UTF-8 JSON (below)
    the rest      the payload: the blobs, one after the other; offsets in the header count from here

The header holds ``format`` ("unetq-packed"), ``version`` (1), ``model`` (the model keys of
:data:`unetq.models.MODEL_KEYS`, enough to rebuild the network), ``source`` (where it came from),
``compression`` (none | zlib | lzma: one lossless pass over the whole payload), ``payload_bytes``
(its size before compression) and ``tensors``: one entry per state-dict tensor, in order, with
``name``, ``shape``, ``encoding`` and ``blobs`` ({role: [offset, bytes]}, offsets into the
uncompressed payload). Encodings:

* ``float32`` / ``int64``: raw little-endian values (float convs, biases, BatchNorm, counters).
* ``fixed`` (FIXED paper or saturating): sign-magnitude codes of ``width`` = ``mag_bits`` + 1 bits;
  value = (-1)^s * m * 2^-f, m = the low ``mag_bits`` bits, s = the top bit. The sign bit is kept for
  zero too, so -0.0 comes back as -0.0. m runs to 2^(i+f) in paper mode (the fraction's carry),
  to 2^(i+f) - 1 in saturating mode (see :mod:`unetq.memory`).
* ``pow2``: sign bit on top, level below: level 0 is 0, levels 1..n are 2^(e_min + level - 1),
  level n + 1 is ``clamp`` (M) when ``clamp_level``.
* ``int`` (INTn, not rescaled back): code = value + 2^(n-1), n + 1 bits.
* ``bnn``: 1 bit, set for a negative sign; blob ``zeros`` lists (uint32, flat C-order index) the
  weights that are exactly 0 (sign(0) = 0), whose sign bit then gives +0 / -0.
* ``ternary``: 2 bits, 0 = +0, 1 = +alpha, 2 = -alpha, 3 = -0; blob ``alpha``: one float32 per
  output filter.

Codes are packed least significant bit first: element k's bit j is bit k * width + j of the blob,
and bit b of the blob is bit (b mod 8) of byte b // 8. Elements are in C order of ``shape``.

Loading: :func:`load_packed` rebuilds the U-Net and loads the DECODED (already quantized) weights.
Re-quantizing them is not always a no-op (a paper-mode carry: Q0.4(1.0) = 0; pow2's clamp M = 8.9375
re-rounds to 8; Ternary's alpha is recomputed by a float sum), so the quantized convs of the loaded
model are :class:`PrequantizedConv2d`: they use their weights as stored, skipping the weight
quantizer. Activation quantizers are unchanged. The loaded model's forward is then bit-identical to
the fake-quantized model it came from. It is meant for inference; to train further, use the float
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import sys
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import checkpoint, memory
from .checkpoint import CheckpointError
from .config import ConfigError
from .layers import QuantConv2d, QuantFormat
from .models import MODEL_KEYS, build_model, validate_model_keys
from .runlog import replacing

MAGIC = b"UNETQPK1"
FORMAT, VERSION = "unetq-packed", 1
COMPRESSIONS = ("none", "zlib", "lzma")
_COMPRESS = {"none": lambda b: b, "zlib": lambda b: zlib.compress(b, 9), "lzma": lambda b: lzma.compress(b, preset=9)}
_DECOMPRESS = {"none": lambda b: b, "zlib": zlib.decompress, "lzma": lzma.decompress}


class PrequantizedConv2d(QuantConv2d):
    """A quantized conv loaded from a packed file: its weights already hold quantized values, so the
    forward uses them as they are (``fmt`` still says which format they are in)."""

    def quantized_weight(self) -> torch.Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return super().extra_repr() + " (pre-quantized)"


# --------------------------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------------------------

def pack_codes(codes: np.ndarray, width: int) -> bytes:
    """Unsigned integer ``codes`` (each < 2^width, width 1..63) packed LSB first, no padding between
    elements; the last byte is zero-padded."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64).ravel()
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((codes[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_codes(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` codes of ``width`` bits as uint64."""
    need = math.ceil(count * width / 8)
    if len(data) != need:
        raise ValueError(f"{len(data)} bytes where {count} codes of {width} bits need {need}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * width, bitorder="little")
    weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
    return bits.reshape(count, width).astype(np.uint64) @ weights


# --------------------------------------------------------------------------------------------
# Encoders: quantized float32 tensor -> (header fields, {blob role: bytes}); decoders: the inverse
# --------------------------------------------------------------------------------------------

def _exact(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {what}; the tensor is not in its quantized format")


def _encode_fixed(q: np.ndarray, fmt: QuantFormat, name: str) -> tuple[dict, dict]:
    mag_max = memory.fixed_magnitude_max(fmt)
    mag_bits = memory.bits_for(mag_max + 1)
    mags = np.abs(q.astype(np.float64)) * 2.0 ** fmt.f_bits
    m = np.rint(mags).astype(np.uint64)
    _exact(bool(np.all(m == mags)), name, f"a value is off the 2^-{fmt.f_bits} grid")
    _exact(bool(np.all(m <= mag_max)), name, f"a magnitude code exceeds {mag_max}")
    codes = m | (np.signbit(q).astype(np.uint64) << np.uint64(mag_bits))
    return {"mag_bits": mag_bits, "width": mag_bits + 1, "f": fmt.f_bits}, {"codes": codes}


def _decode_fixed(entry: dict, blobs: dict, count: int) -> np.ndarray:
    codes = blobs["codes"]
    m = (codes & np.uint64((1 << entry["mag_bits"]) - 1)).astype(np.float64) * 2.0 ** -entry["f"]
    return np.where(codes >> np.uint64(entry["mag_bits"]) == 1, -m, m).astype(np.float32)


def _encode_pow2(q: np.ndarray, fmt: QuantFormat, name: str) -> tuple[dict, dict]:
    levels = memory.pow2_levels(torch.from_numpy(q), fmt)
    mags = np.abs(q.astype(np.float64))
    level = np.zeros(q.shape, dtype=np.uint64)
    n = 0
    if levels["e_min"] is not None:
        n = levels["e_max"] - levels["e_min"] + 1
        powers = (mags != 0) & ~(levels["clamp_level"] & (mags == levels["clamp"]))
        _, exp = np.frexp(mags[powers])
        level[powers] = (exp - 1 - levels["e_min"] + 1).astype(np.uint64)
    if levels["clamp_level"]:
        level[mags == levels["clamp"]] = n + 1
    mag_bits = memory.bits_for(memory.pow2_level_count(levels))
    codes = level | (np.signbit(q).astype(np.uint64) << np.uint64(mag_bits))
    fields = {"mag_bits": mag_bits, "width": mag_bits + 1, "e_min": levels["e_min"], "n_exponents": n,
              "clamp": levels["clamp"], "clamp_level": levels["clamp_level"]}
    return fields, {"codes": codes}


def _decode_pow2(entry: dict, blobs: dict, count: int) -> np.ndarray:
    codes = blobs["codes"]
    level = (codes & np.uint64((1 << entry["mag_bits"]) - 1)).astype(np.int64)
    n = entry["n_exponents"]
    table = np.zeros(n + 2, dtype=np.float64)
    if n:
        table[1:n + 1] = np.ldexp(1.0, np.arange(entry["e_min"], entry["e_min"] + n))
    table[n + 1] = entry["clamp"]
    if level.size and level.max() > n + int(entry["clamp_level"]):
        raise ValueError(f"{entry['name']}: a pow2 level exceeds the table")
    m = table[level]
    return np.where(codes >> np.uint64(entry["mag_bits"]) == 1, -m, m).astype(np.float32)


def _encode_int(q: np.ndarray, fmt: QuantFormat, name: str) -> tuple[dict, dict]:
    offset = 2 ** (fmt.i_bits - 1)
    shifted = q.astype(np.float64) + offset
    _exact(bool(np.all((shifted == np.rint(shifted)) & (shifted >= 0) & (shifted <= 2 * offset))), name,
           f"a value is not an integer in [-{offset}, {offset}]")
    _exact(not np.any(np.signbit(q) & (q == 0)), name, "INT values are never -0")
    return {"width": fmt.i_bits + 1, "offset": offset}, {"codes": shifted.astype(np.uint64)}


def _decode_int(entry: dict, blobs: dict, count: int) -> np.ndarray:
    return (blobs["codes"].astype(np.int64) - entry["offset"]).astype(np.float32)


def _encode_bnn(q: np.ndarray, fmt: QuantFormat, name: str) -> tuple[dict, dict]:
    _exact(bool(np.all(np.isin(q, (-1.0, 0.0, 1.0)))), name, "a BNN weight is not -1, 0 or +1")
    zeros = np.flatnonzero(q.ravel() == 0).astype("<u4")
    return {"width": 1, "n_zeros": int(zeros.size)}, {"codes": np.signbit(q).astype(np.uint64), "zeros": zeros}


def _decode_bnn(entry: dict, blobs: dict, count: int) -> np.ndarray:
    negative = blobs["codes"] == 1
    values = np.where(negative, -1.0, 1.0).astype(np.float32)
    zeros = blobs["zeros"]
    if zeros.size and int(zeros.max()) >= count:
        raise ValueError(f"{entry['name']}: a zero index is out of range")
    values[zeros] = np.where(negative[zeros], np.float32(-0.0), np.float32(0.0))
    return values


_TERNARY_SIGNS = np.array([0.0, 1.0, -1.0, -0.0], dtype=np.float32)   # code -> sign factor


def _encode_ternary(q: np.ndarray, fmt: QuantFormat, name: str) -> tuple[dict, dict]:
    flat = q.reshape(q.shape[0], -1)
    alpha = np.abs(flat).max(axis=1).astype("<f4")
    nonzero = flat != 0
    _exact(bool(np.all(np.abs(flat)[nonzero] == np.broadcast_to(alpha[:, None], flat.shape)[nonzero])), name,
           "a filter's non-zero weights differ in magnitude")
    codes = np.where(nonzero, np.where(flat > 0, 1, 2), np.where(np.signbit(flat), 3, 0)).astype(np.uint64)
    return {"width": 2}, {"codes": codes.ravel(), "alpha": alpha}


def _decode_ternary(entry: dict, blobs: dict, count: int) -> np.ndarray:
    alpha = blobs["alpha"]
    signs = _TERNARY_SIGNS[blobs["codes"].astype(np.int64)].reshape(alpha.size, -1)
    return (signs * alpha[:, None]).ravel()


_CODECS = {"fixed": (_encode_fixed, _decode_fixed), "pow2": (_encode_pow2, _decode_pow2),
           "int": (_encode_int, _decode_int), "bnn": (_encode_bnn, _decode_bnn),
           "ternary": (_encode_ternary, _decode_ternary)}
_SIDE_DTYPES = {"zeros": "<u4", "alpha": "<f4"}


# How each encoding stores the sign, written into every entry's ``format`` so that a reader of the
# header alone (a hardware tool, another language) need not consult this module.
SIGN_CONVENTION = {
    "fixed": "sign-magnitude: top bit of each code = sign (1 negative), the rest = magnitude in 2^-f steps",
    "pow2": "sign-magnitude: top bit = sign (1 negative), the rest = level index",
    "int": "offset binary: code = value + 2^(n-1), no sign bit",
    "bnn": "1 bit: 1 = negative; exact zeros listed in the zeros blob",
    "ternary": "2-bit code: 0 = +0, 1 = +alpha, 2 = -alpha, 3 = -0",
}


def encoding_of(fmt: QuantFormat) -> str:
    """The encoding name of a quantized format (fixed | pow2 | int | bnn | ternary)."""
    if fmt.kind == "fixed":
        return "pow2" if fmt.mode == "pow2" else "fixed"
    return fmt.kind


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _tensor_entries(model: torch.nn.Module) -> list[tuple[dict, dict]]:
    """(header entry, {role: raw bytes}) for every state-dict tensor."""
    quantized = {k: v for k, v in memory.quantized_weights(model).items() if v[0].kind != "normal"}
    out = []
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{name}: holds non-finite values; nothing to export")
        entry: dict[str, Any] = {"name": name, "shape": list(value.shape)}
        if name in quantized:
            fmt, q = quantized[name]
            encoding = encoding_of(fmt)
            fields, arrays = _CODECS[encoding][0](q.detach().cpu().float().numpy(), fmt, name)
            entry.update(encoding=encoding, format={"kind": fmt.kind, "i": fmt.i_bits, "f": fmt.f_bits,
                                                   "mode": fmt.mode, "sign": SIGN_CONVENTION[encoding]}, **fields)
            blobs = {role: (pack_codes(a, entry["width"]) if role == "codes" else a.astype(_SIDE_DTYPES[role]).tobytes())
                     for role, a in arrays.items()}
        elif value.dtype == torch.float32:
            entry["encoding"] = "float32"
            blobs = {"data": value.numpy().astype("<f4").tobytes()}
        elif value.dtype == torch.int64:
            entry["encoding"] = "int64"
            blobs = {"data": value.numpy().astype("<i8").tobytes()}
        else:
            raise ValueError(f"{name}: dtype {value.dtype} is not supported (float32 and int64 are)")
        out.append((entry, blobs))
    return out


def save_packed(model: torch.nn.Module, path: Path | str, compress: str = "none",
                source: Mapping[str, Any] | None = None) -> dict:
    """Write ``model`` (a :class:`unetq.models.UNet`) to ``path`` in the packed format, atomically.
    ``compress``: none | zlib | lzma (lossless, over the whole payload); ``source``: free information
    stored in the header (e.g. the checkpoint it came from). Returns the header."""
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    options = _model_keys(model)
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": {k: options[k] for k in MODEL_KEYS},
                              "source": dict(source or {}), "compression": compress, "tensors": []}
    payload, offset = [], 0
    for entry, blobs in _tensor_entries(model):
        entry["blobs"] = {}
        for role, raw in blobs.items():
            entry["blobs"][role] = [offset, len(raw)]
            payload.append(raw)
            offset += len(raw)
        header["tensors"].append(entry)
    header["payload_bytes"] = offset
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    _write_atomic(Path(path), [MAGIC, len(text).to_bytes(8, "little"), text, _COMPRESS[compress](b"".join(payload))])
    return header


def _model_keys(model: torch.nn.Module) -> dict:
    """The model keys of a U-Net, read back from its modules."""
    wf, af = model.weight_format, model.activation_format
    if wf.kind != af.kind:
        raise ValueError("weights and activations use different quantization kinds; cannot describe the model")
    first = model.enc1.conv1
    activation = type(model.dec1.act1).__name__.lower()         # ReLU, Tanh, TernaryTanh
    first_block = "same" if type(model.enc1.act1) is type(model.dec1.act1) else "relu"   # the original GM model's
    # init_type only decides the initial random draw; a model read back from the file gets the stored
    # weights, so the value recorded is the one the model was built with, for the record
    return {"quantization": wf.kind, "weight_i_width": wf.i_bits, "weight_f_width": wf.f_bits,
            "activation_i_width": af.i_bits, "activation_f_width": af.f_bits, "fixed_mode": wf.mode,
            "activation": activation, "dropout": hasattr(model.enc1, "drop1"), "init_type": model.init_type,
            "base_width": first.out_channels, "first_block_activation": first_block}


def _write_atomic(path: Path, parts: Sequence[bytes]) -> None:
    """Write ``parts`` to ``path`` in one step (runlog.replacing: temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        for part in parts:
            fh.write(part)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_packed(path: Path | str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, state dict of decoded tensors) of a packed file; quantized tensors come back as the
    float32 values the fake-quantized convs used. Raises CheckpointError with one line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the packed model ({err.strerror or err})") from None
    if data[:8] != MAGIC:
        raise CheckpointError(f"{path}: not a unetq packed model (it does not start with {MAGIC!r})")
    size = int.from_bytes(data[8:16], "little")
    try:
        header = json.loads(data[16:16 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the packed model's header is damaged (not JSON)") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported packed format {header.get('format')!r} version "
                              f"{header.get('version')!r} (this code reads {FORMAT!r} version {VERSION})")
    state = {}
    try:
        payload = _DECOMPRESS[header["compression"]](data[16 + size:])
        if len(payload) != header["payload_bytes"]:
            raise ValueError(f"payload of {len(payload)} bytes, the header says {header['payload_bytes']}")
        for entry in header["tensors"]:
            state[entry["name"]] = _decode_entry(entry, payload)
    except (KeyError, ValueError, TypeError, IndexError, zlib.error, lzma.LZMAError) as err:
        raise CheckpointError(f"{path}: the packed model is damaged ({type(err).__name__}: {err})") from None
    return header, state


def _decode_entry(entry: dict, payload: bytes) -> torch.Tensor:
    blobs = {}
    for role, (offset, nbytes) in entry["blobs"].items():
        if offset < 0 or offset + nbytes > len(payload):
            raise ValueError(f"{entry['name']}: blob {role!r} runs past the end of the payload")
        blobs[role] = payload[offset:offset + nbytes]
    shape, count = entry["shape"], math.prod(entry["shape"])
    encoding = entry["encoding"]
    if encoding in ("float32", "int64"):
        array = np.frombuffer(blobs["data"], dtype="<f4" if encoding == "float32" else "<i8").reshape(shape)
        return torch.from_numpy(array.copy())
    arrays = {role: (unpack_codes(b, entry["width"], count) if role == "codes"
                     else np.frombuffer(b, dtype=_SIDE_DTYPES[role])) for role, b in blobs.items()}
    values = _CODECS[encoding][1](entry, arrays, count)
    return torch.from_numpy(np.ascontiguousarray(values).reshape(shape))


def load_packed(path: Path | str) -> torch.nn.Module:
    """Rebuild the U-Net of a packed file with its decoded weights, in eval mode. Its quantized convs
    are :class:`PrequantizedConv2d` (weights used as stored), so its forward equals the original
    fake-quantized model's bit for bit. Raises CheckpointError with one line on a bad file."""
    header, state = read_packed(path)
    try:
        model = build_model(validate_model_keys(header["model"]))
    except ConfigError as err:
        raise CheckpointError(f"{path}: the packed model's settings are invalid ({err})") from None
    prequantize(model)
    checkpoint.load_into(model, state, Path(path))
    return model.eval()


def prequantize(model: torch.nn.Module) -> None:
    """Swap every quantized conv of ``model`` for a :class:`PrequantizedConv2d` of the same shape and
    format (weights are loaded afterwards)."""
    for name, conv in model.quantized_convs():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        swapped = PrequantizedConv2d(conv.in_channels, conv.out_channels, conv.fmt)
        setattr(parent, child, swapped)


# --------------------------------------------------------------------------------------------
# Sizes and the command line
# --------------------------------------------------------------------------------------------

def theoretical_bytes(model: torch.nn.Module) -> int:
    """The bytes the model's tensors need at the exact bit count (:mod:`unetq.memory`), without the
    header; the training counters are 8 bytes each in the file, as here."""
    rows = memory.tensor_rows(model)
    counters = sum(8 * r.numel for r in rows if r.role == "counter")
    return math.ceil(sum(r.total("exact") for r in rows) / 8) + counters


def verify(model: torch.nn.Module, loaded: torch.nn.Module) -> list[str]:
    """Names of tensors whose loaded value differs in any bit (sign of zero included) from what the
    original model's forward uses; empty when the round trip is exact."""
    used = dict(model.state_dict())
    for name, (_, q) in memory.quantized_weights(model).items():
        used[name] = q
    bad = []
    for name, value in loaded.state_dict().items():
        ref = used[name].detach().cpu()
        if value.dtype != ref.dtype or not torch.equal(value.view(-1).view(_int_view(value)),
                                                       ref.contiguous().view(-1).view(_int_view(ref))):
            bad.append(name)
    return bad


def _int_view(t: torch.Tensor) -> torch.dtype:
    return {torch.float32: torch.int32, torch.float64: torch.int64}.get(t.dtype, t.dtype)


def load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """(the U-Net of a run's checkpoint in eval mode, the checkpoint); CheckpointError with one line
    for a bad file or one without a config (a bare state dict does not say the model settings), a
    ConfigError for invalid recorded settings."""
    ckpt = checkpoint.load(path)
    if not ckpt["config"]:
        raise CheckpointError(f"{path}: holds no config, so the model settings are unknown; export a run's "
                              f"best.pt or last.pt")
    model = build_model(validate_model_keys(ckpt["config"], source=Path(path)))
    checkpoint.load_into(model, ckpt["model"], path)
    return model.eval(), ckpt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.export",
                                     description="Export a trained quantized U-Net to a packed file (codes at their true width).")
    parser.add_argument("checkpoint", help="a run's best.pt or last.pt")
    parser.add_argument("out", help="the packed file to write (e.g. model.uqp)")
    parser.add_argument("--compress", choices=COMPRESSIONS, default="none", help="lossless pass over every blob")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    try:
        model, ckpt = load_checkpoint_model(path)
        source = {"checkpoint": str(path), "experiment_name": ckpt["config"].get("experiment_name"),
                  "dataset": ckpt["config"].get("dataset"), "epoch": ckpt.get("epoch"),
                  "best_dice": ckpt.get("best_dice"), "data_source": ckpt.get("data_source")}
        save_packed(model, args.out, compress=args.compress, source=source)
        loaded = load_packed(args.out)
    except (CheckpointError, ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_sizes(model, loaded, path, Path(args.out))
    return 0


def _print_sizes(model, loaded, ckpt_path: Path, out: Path) -> None:
    packed, ckpt_size = out.stat().st_size, ckpt_path.stat().st_size
    theory = theoretical_bytes(model)
    float_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    print(f"wrote {out}: {packed:,} bytes ({packed / 2**20:.3f} MiB); weights {model.weight_format.describe()}")
    print(f"  float checkpoint {ckpt_path}: {ckpt_size:,} bytes ({ckpt_size / 2**20:.3f} MiB) -> "
          f"{ckpt_size / packed:.2f}x smaller; float32 state dict {float_bytes:,} bytes -> {float_bytes / packed:.2f}x")
    print(f"  exact bit count (unetq.memory): {theory:,} bytes; file / exact = {packed / theory:.4f}")
    bad = verify(model, loaded)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(model(x), loaded(x))
    if bad or not same:
        print(f"  WARNING: the round trip is not exact ({', '.join(bad[:3]) or 'forward differs'})")
    else:
        print("  verified: decoded weights equal the fake-quantized weights bit for bit; forward identical")


if __name__ == "__main__":
    sys.exit(main())
