"""Exact bit accounting: hand-counted totals of a small U-Net, the code ranges against the quantizers
themselves, side data (Ternary alphas, BNN zeros), pow2's data-dependent width, the command line."""

import pytest
import torch

from unetq import memory
from unetq.layers import QuantFormat
from unetq.models import build_model, validate_model_keys
from unetq.quantize import fixed_point

# Base width 2, counted by hand from docs/method.md section 3 (conv in -> out channels):
#   float convs: enc1 1->2, 2->2; head 2->1                  weights 9 * (2 + 4 + 2) = 72
#   quantized:   enc2 2->4, 4->4; enc3 4->8, 8->8; bottom 8->8, 8->8; dec3 16->8, 8->8;
#                dec2 12->4, 4->4; dec1 6->2, 2->2            weights 9 * (8 + 16 + 32 + 64 + 64 + 64 + 128
#                                                                      + 64 + 48 + 16 + 12 + 4) = 9 * 520 = 4680
#   biases: one per output channel of the 15 convs             2+2+4+4+8+8+8+8+8+8+4+4+2+2+1 = 73
#   BatchNorm: 14 layers, 2 * (2 + 4 + 8 + 8 + 8 + 4 + 2) = 72 channels, weight/bias/mean/var = 288
#   output filters of the quantized convs (Ternary alphas)    4+4+8+8+8+8+8+8+4+4+2+2 = 68
N_QUANT, N_FLOAT_W, N_BIAS, N_BN, N_FILTERS = 4680, 72, 73, 288, 68
FLOATS = N_FLOAT_W + N_BIAS + N_BN                                # 433 numbers always at 32 bits
A6W04 = dict(quantization="fixed", activation_i_width=6, weight_f_width=4, base_width=2)


def totals(keys, **extra):
    torch.manual_seed(0)
    return memory.account(build_model(validate_model_keys({**keys, **extra})))


def test_hand_counted_totals_q04_paper_mode():
    rows, t = totals(A6W04, fixed_mode="paper")
    assert t["n_quantized_weights"] == N_QUANT
    assert t["model"] == {"float32": (N_QUANT + FLOATS) * 32,        # 163,616
                          "paper": N_QUANT * 4 + FLOATS * 32,         # i + f = 4
                          "honest": N_QUANT * 5 + FLOATS * 32,        # sign-magnitude 1 + i + f = 5
                          "exact": N_QUANT * 6 + FLOATS * 32}         # the carry to 1.0 needs a 5th magnitude bit
    assert t["ratio_quantized"]["paper"] == 8.0                       # the paper's "8 fold": 32 / 4, weights only
    assert t["ratio_quantized"]["exact"] == pytest.approx(32 / 6)
    assert t["ratio_model"]["paper"] == pytest.approx(163616 / (N_QUANT * 4 + FLOATS * 32))
    counters = [r for r in rows if r.role == "counter"]
    assert len(counters) == 14 and all(r.total("exact") == 0 for r in counters)


def test_saturating_is_exactly_sign_magnitude():
    _, t = totals(A6W04, fixed_mode="saturating")
    assert t["model"]["exact"] == t["model"]["honest"] == N_QUANT * 5 + FLOATS * 32


def test_ternary_counts_an_alpha_per_filter_and_bnn_its_zeros():
    _, t = totals({"quantization": "ternary", "activation": "ternarytanh", "base_width": 2})
    assert t["quantized"]["paper"] == N_QUANT * 2
    assert t["quantized"]["honest"] == t["quantized"]["exact"] == N_QUANT * 2 + N_FILTERS * 32
    torch.manual_seed(0)
    model = build_model(validate_model_keys({"quantization": "bnn", "base_width": 2}))
    with torch.no_grad():
        model.enc2.conv1.weight.view(-1)[:3] = 0.0                   # sign(0) = 0: a third value
    _, t = memory.account(model)
    assert t["quantized"]["paper"] == t["quantized"]["honest"] == N_QUANT
    assert t["quantized"]["exact"] == N_QUANT + 3 * 32               # one uint32 index per exact zero


def test_int_needs_n_plus_one_bits():
    _, t = totals({"quantization": "int", "weight_i_width": 4, "activation_i_width": 4, "base_width": 2})
    assert (t["quantized"]["paper"], t["quantized"]["exact"]) == (N_QUANT * 4, N_QUANT * 5)


@pytest.mark.parametrize("i,f", [(0, 4), (2, 3), (6, 0), (1, 1)])
def test_code_ranges_match_what_the_quantizers_produce(i, f):
    """The largest magnitude code each mode claims is the largest one a dense sweep produces."""
    x = torch.linspace(-2.0 ** (i + 1), 2.0 ** (i + 1), 200_001, dtype=torch.float64)
    for mode in ("paper", "saturating"):
        codes = fixed_point(x, i, f, mode).abs() * 2 ** f
        assert torch.equal(codes, codes.round())
        assert int(codes.max()) == memory.fixed_magnitude_max(QuantFormat("fixed", i, f, mode))
    if f > 0:                                                       # paper mode really reaches 2^i (the carry)
        assert float(fixed_point(torch.tensor([2.0 ** i - 2.0 ** -(f + 2)]), i, f, "paper")) == 2.0 ** i
    bits = memory.format_bits(QuantFormat("fixed", i, f, "paper"))
    assert bits == (i + f, 1 + i + f, 2 + i + f if f > 0 else 1 + i)


def test_pow2_width_counts_the_exponents_present():
    fmt = QuantFormat("fixed", 0, 4, "pow2")                          # clamp M = 0.9375, not a power of two
    w = torch.tensor([0.0, -0.5, 0.26, 0.12, 3.0, -0.01])
    q = fixed_point(w, 0, 4, "pow2")                                  # 0, -2^-1, 2^-2, 2^-3, M, -2^-7
    assert sorted(q.abs().tolist()) == [0.0, 2 ** -7, 2 ** -3, 2 ** -2, 2 ** -1, 0.9375]
    levels = memory.pow2_levels(q, fmt)
    assert (levels["e_min"], levels["e_max"], levels["clamp_level"]) == (-7, -1, True)
    # zero + 7 exponents (-7..-1) + the clamp = 9 levels -> 4 bits, + sign = 5
    assert memory.format_bits(fmt, q)[2] == 5
    assert memory.format_bits(fmt)[2] is None                         # unknown without the values
    assert memory.pow2_levels(fixed_point(w, 6, 0, "pow2"), QuantFormat("fixed", 6, 0, "pow2"))["clamp_level"] is False


def test_paper_size_model_matches_the_papers_18_48_mb():
    _, t = totals({"base_width": 64})
    assert t["n_parameters_and_stats"] == 4_837_249 + 2 * 2304      # parameters + BatchNorm running stats
    assert round(memory.mib(t["model"]["float32"]), 2) == 18.47      # the saved state dict: 18.48 MiB


def test_command_line(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("UNET:\n  quantization: FIXED\n  activation_i_width: 6\n  weight_f_width: 4\n  base_width: 2\n")
    assert memory.main(["--config", str(cfg), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "enc2.conv1.weight" in out and "quantized conv weights" in out and "(x8.00)" in out
    cfg.write_text("UNET:\n  quantization: FIXD\n")
    assert memory.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "quantization" in err and len(err.strip().splitlines()) == 1


def test_command_line_reads_a_checkpoints_trained_weights(tmp_path, capsys):
    from unetq import checkpoint

    keys = {"quantization": "fixed", "fixed_mode": "pow2", "activation_i_width": 6, "weight_f_width": 4,
            "base_width": 2}
    model = build_model(validate_model_keys(keys))
    with torch.no_grad():
        for _, conv in model.quantized_convs():
            conv.weight.copy_(torch.where(conv.weight > 0, 0.5, -0.25))   # pow2 levels: 0, 2^-2, 2^-1, clamp
    checkpoint.save({"model": model.state_dict(), "config": keys}, tmp_path / "best.pt")
    assert memory.main(["--checkpoint", str(tmp_path / "best.pt"), "--tensors"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("enc2.conv1.weight"))
    assert row.split()[-4:-1] == ["4", "5", "3"]          # sign + 2 bits for 4 levels: narrower than nominal
