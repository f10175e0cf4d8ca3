"""The packed model file: bit layout, export -> import -> identical predictions for every quantization
type (edge values included), size against the exact bit count, damaged files, the command line."""

import json
import math

import numpy as np
import pytest
import torch

from unetq import checkpoint, export
from unetq.checkpoint import CheckpointError
from unetq.models import build_model, validate_model_keys
from unetq.quantize import fixed_point

KINDS = {
    "normal": dict(quantization="normal"),
    "fixed-paper": dict(quantization="fixed", activation_i_width=6, weight_f_width=4, fixed_mode="paper"),
    "fixed-paper-q2.3": dict(quantization="fixed", activation_i_width=3, activation_f_width=2, weight_i_width=2,
                             weight_f_width=3, fixed_mode="paper"),
    "fixed-saturating": dict(quantization="fixed", activation_i_width=6, weight_f_width=4, fixed_mode="saturating"),
    "fixed-pow2": dict(quantization="fixed", activation_i_width=4, activation_f_width=4, weight_i_width=4,
                       weight_f_width=4, fixed_mode="pow2"),
    "int": dict(quantization="int", activation_i_width=4, weight_i_width=4),
    "bnn": dict(quantization="bnn"),
    "ternary": dict(quantization="ternary", activation="ternarytanh", dropout=True),
}


def test_pack_layout_is_lsb_first_and_round_trips():
    assert export.pack_codes(np.array([1, 2, 3]), 2) == bytes([0b111001])    # 01 | 10 | 11, LSB first
    rng = np.random.default_rng(0)
    for width in (1, 2, 3, 5, 6, 7, 8, 13, 18, 25):
        count = int(rng.integers(1, 200))
        codes = rng.integers(0, 2 ** width, count, dtype=np.uint64)
        data = export.pack_codes(codes, width)
        assert len(data) == math.ceil(count * width / 8)
        assert np.array_equal(export.unpack_codes(data, width, count), codes)


def _edge_model(name, keys):
    """A small model with BatchNorm statistics moved off their defaults and weights that hit the
    formats' edge cases: paper carries, pow2 clamps, exact zeros and -0.0."""
    torch.manual_seed(1)
    model = build_model(validate_model_keys({**keys, "base_width": 4}))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        w = model.enc2.conv1.weight.view(-1)
        w[:8] = torch.tensor([0.97, -0.97, 3.99, -0.0, 0.0, 40.0, -0.001, 1.0])
        model.enc3.conv1.weight[0].zero_()                                   # an all-zero filter (Ternary alpha 0)
        if name == "fixed-pow2":
            model.bottom.conv1.weight.mul_(30.0)                             # many values clamp at M = 8.9375
    return model.eval()


@pytest.mark.parametrize("name", list(KINDS))
def test_export_import_gives_identical_predictions(name, tmp_path):
    model = _edge_model(name, KINDS[name])
    path = tmp_path / f"{name}.uqp"
    export.save_packed(model, path)
    loaded = export.load_packed(path)
    assert export.verify(model, loaded) == []                   # every tensor bit for bit, signs of zero included
    x = torch.randn(2, 1, 16, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    if name != "normal":
        assert isinstance(loaded.enc2.conv1, export.PrequantizedConv2d)
        assert loaded.weight_format == model.weight_format


def test_requantizing_a_carry_is_not_a_no_op():
    """Why load_packed marks the convs as pre-quantized instead of re-quantizing the stored values."""
    q = fixed_point(torch.tensor([0.97, 0.5]), 0, 4, "paper")
    assert q.tolist() == [1.0, 0.5]
    assert fixed_point(q, 0, 4, "paper").tolist() == [0.0, 0.5]
    m = float(fixed_point(torch.tensor([20.0]), 4, 4, "pow2"))
    assert m == 8.9375 and float(fixed_point(torch.tensor([m]), 4, 4, "pow2")) == 8.0


@pytest.mark.parametrize("kind, bits", [("fixed-paper", 6), ("fixed-saturating", 5)])
def test_q04_file_is_within_1_percent_of_the_exact_bit_count(tmp_path, kind, bits):
    torch.manual_seed(0)
    model = build_model(validate_model_keys({**KINDS[kind], "base_width": 64}))
    path = tmp_path / "a6w04.uqp"
    export.save_packed(model, path)
    state = model.state_dict()
    quantized = {f"{n}.weight" for n, _ in model.quantized_convs()}
    n_q = sum(state[k].numel() for k in quantized)
    n_float = sum(v.numel() for k, v in state.items() if k not in quantized and v.is_floating_point())
    n_counters = sum(v.numel() for v in state.values() if not v.is_floating_point())
    # Q0.4: sign + magnitude codes 0..16 (paper mode's carry) = 6 bits, 0..15 (saturating) = 5 = 1 + i + f;
    # float32 everything else; int64 counters
    theory = math.ceil(n_q * bits / 8) + 4 * n_float + 8 * n_counters
    assert n_q == 4_792_320 and export.theoretical_bytes(model) == pytest.approx(theory, abs=12)
    size = path.stat().st_size
    assert theory <= size <= 1.01 * theory
    assert size < 0.2 * sum(v.numel() * v.element_size() for v in state.values())   # vs float32: 5x smaller


def test_file_is_plain_json_header_and_bytes(tmp_path):
    model = _edge_model("fixed-paper", KINDS["fixed-paper"])
    path = tmp_path / "m.uqp"
    export.save_packed(model, path, source={"note": "test"})
    data = path.read_bytes()
    size = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16:16 + size])
    assert data[:8] == b"UNETQPK1" and header["format"] == "unetq-packed" and header["source"] == {"note": "test"}
    entry = next(t for t in header["tensors"] if t["name"] == "enc2.conv1.weight")
    assert (entry["encoding"], entry["width"], entry["format"]) == ("fixed", 6, {
        "kind": "fixed", "i": 0, "f": 4, "mode": "paper", "sign": export.SIGN_CONVENTION["fixed"]})
    assert entry["format"]["sign"].startswith("sign-magnitude: top bit")
    assert header["model"]["base_width"] == 4 and header["model"]["quantization"] == "fixed"
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)                  # not a pickle / torch file


def test_compression_is_lossless(tmp_path):
    torch.manual_seed(0)
    model = build_model(validate_model_keys({**KINDS["fixed-paper"], "base_width": 16}))
    with torch.no_grad():
        for _, conv in model.quantized_convs():
            conv.weight.mul_(0.05)                           # trained-like: codes near zero, low entropy
    export.save_packed(model, tmp_path / "raw.uqp")
    export.save_packed(model, tmp_path / "lz.uqp", compress="lzma")
    assert (tmp_path / "lz.uqp").stat().st_size < 0.8 * (tmp_path / "raw.uqp").stat().st_size
    assert export.verify(model, export.load_packed(tmp_path / "lz.uqp")) == []


def test_damaged_files_raise_one_line(tmp_path):
    model = _edge_model("bnn", KINDS["bnn"])
    good = tmp_path / "good.uqp"
    export.save_packed(model, good)
    cases = {"magic.uqp": b"NOTMAGIC" + good.read_bytes()[8:], "cut.uqp": good.read_bytes()[:-100]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            export.load_packed(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_non_finite_weights_are_refused(tmp_path):
    model = _edge_model("fixed-paper", KINDS["fixed-paper"])
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    with pytest.raises(ValueError, match="head.bias.*non-finite"):
        export.save_packed(model, tmp_path / "x.uqp")
    assert not (tmp_path / "x.uqp").exists()


def test_command_line(tmp_path, capsys):
    keys = {**KINDS["fixed-paper"], "base_width": 4}
    model = _edge_model("fixed-paper", KINDS["fixed-paper"])
    ckpt = tmp_path / "best.pt"
    checkpoint.save({"model": model.state_dict(), "config": keys, "epoch": 3}, ckpt)
    out = tmp_path / "m.uqp"
    assert export.main([str(ckpt), str(out), "--compress", "zlib"]) == 0
    text = capsys.readouterr().out
    assert "verified" in text and "smaller" in text and out.exists()
    assert export.load_packed(out).weight_format.describe() == "Q0.4 (paper)"
    torch.save(model.state_dict(), tmp_path / "bare.pt")                     # no config: settings unknown
    assert export.main([str(tmp_path / "bare.pt"), str(tmp_path / "b.uqp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no config" in err and not (tmp_path / "b.uqp").exists()
