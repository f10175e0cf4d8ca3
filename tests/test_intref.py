"""The integer-only reference forward equals the fake-quantized model (run in float64) bit for bit;
its integer pieces against torch; where float32 accumulation stops being exact."""

import pytest
import torch
import torch.nn.functional as F

from unetq import intref
from unetq.models import build_model, validate_model_keys

FORMATS = {
    "a6.0/w0.4": dict(activation_i_width=6, weight_f_width=4),
    "a8.8/w8.8": dict(activation_i_width=8, activation_f_width=8, weight_i_width=8, weight_f_width=8),
    "a2.3/w1.3": dict(activation_i_width=2, activation_f_width=3, weight_i_width=1, weight_f_width=3),
}


def _model(keys, mode, activation="relu", seed=0):
    torch.manual_seed(seed)
    model = build_model(validate_model_keys({"quantization": "fixed", "fixed_mode": mode, "base_width": 4,
                                             "activation": activation, **keys}))
    with torch.no_grad():
        for m in model.modules():                       # BatchNorm statistics off their defaults
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 3.0)
                m.bias.uniform_(-1.0, 1.0)
            if isinstance(m, torch.nn.Conv2d):
                m.bias.uniform_(-0.5, 0.5)
        model.enc2.conv1.weight.view(-1)[:4] = torch.tensor([0.97, -0.97, 1.99, -0.01])   # paper carries
    return model.eval()


@pytest.mark.parametrize("mode", ["paper", "saturating"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_integer_forward_equals_fake_quant_in_float64(name, mode):
    model = _model(FORMATS[name], mode)
    x = 2.0 * torch.randn(2, 1, 24, 16, generator=torch.Generator().manual_seed(3))
    ref = model.double()(x.double())
    out = intref.integer_forward(model, x)
    assert out.dtype == torch.float64 and torch.equal(out, ref)
    assert ref.unique().numel() > ref.numel() // 2      # not a degenerate (constant) network


def test_integer_forward_with_tanh_and_dropout_model():
    keys = {**FORMATS["a2.3/w1.3"], "dropout": True}
    model = _model(keys, "paper", activation="tanh", seed=4)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(intref.integer_forward(model, x), model.double()(x.double()))


def test_int_conv_matches_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-1000, 1000, (2, 5, 7, 9), generator=g)
    w = torch.randint(-64, 65, (3, 5, 3, 3), generator=g)
    out = intref.int_conv3x3(x, w)
    assert out.dtype == torch.int64
    assert torch.equal(out.double(), F.conv2d(x.double(), w.double(), padding=1))    # exact: |sum| << 2^53


def test_upsampled_codes_equal_bilinear_interpolation():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-63, 64, (2, 3, 5, 6), generator=g)
    up = intref.upsample_codes(intref.Codes(codes, 2))
    ref = F.interpolate(codes.double() * 2.0 ** -2, scale_factor=2, mode="bilinear", align_corners=False)
    assert up.scale == 2 + 4 and torch.equal(up.value(), ref)


def test_float32_accumulation_is_exact_only_below_2_to_the_24():
    """A quantized conv in float32 equals the integer result while every partial sum < 2^24 codes."""
    g = torch.Generator().manual_seed(2)
    c = 64                                                           # fan_in 576
    # below: |c_w| <= 16, |c_a| <= 63 -> bound 576 * 16 * 63 = 580,608 < 2^24; take the worst case too
    w = torch.randint(-16, 17, (8, c, 3, 3), generator=g)
    a = torch.randint(-63, 64, (1, c, 6, 6), generator=g)
    worst_w, worst_a = torch.full_like(w, 16), torch.full_like(a, 63)
    for ww, aa in ((w, a), (worst_w, worst_a)):
        exact = intref.int_conv3x3(aa, ww).double() * 2.0 ** -4
        f32 = F.conv2d(aa.float(), ww.float() * 2.0 ** -4, padding=1)
        assert torch.equal(f32.double(), exact)
    # above: Q8.8 x Q8.8 codes (up to 2^16 each): single products need up to 32 bits, float32 rounds
    w = torch.randint(-2 ** 16, 2 ** 16 + 1, (8, c, 3, 3), generator=g)
    a = torch.randint(-2 ** 16, 2 ** 16 + 1, (1, c, 6, 6), generator=g)
    exact = intref.int_conv3x3(a, w).double()
    f32 = F.conv2d(a.float(), w.float(), padding=1).double()
    assert not torch.equal(f32, exact)
    assert torch.equal(F.conv2d(a.double(), w.double(), padding=1), exact)    # float64 still exact (< 2^53)


def test_accumulator_bounds_of_the_papers_setting():
    rows = {r["layer"]: r for r in intref.accumulator_bounds(build_model(validate_model_keys(
        {"quantization": "fixed", "fixed_mode": "paper", "activation_i_width": 6, "weight_f_width": 4})))}
    assert len(rows) == 12
    assert rows["enc2.conv1"]["bound"] == 64 * 9 * 16 * 63 and rows["enc2.conv1"]["float32_exact"]
    # the decoder's first convs see upsampled codes (x 2^4): 512 * 9 * 16 * (63 * 16) > 2^24
    assert rows["dec3.conv1"]["bound"] == 512 * 9 * 16 * 63 * 16 and not rows["dec3.conv1"]["float32_exact"]
    assert all(r["float64_exact"] for r in rows.values())


def test_refuses_what_it_cannot_prove():
    pow2 = build_model(validate_model_keys({"quantization": "fixed", "fixed_mode": "pow2", "activation_i_width": 6,
                                            "weight_f_width": 4, "base_width": 4})).eval()
    with pytest.raises(ValueError, match="paper or saturating"):
        intref.integer_forward(pow2, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="eval mode"):
        intref.integer_forward(_model(FORMATS["a6.0/w0.4"], "paper").train(), torch.zeros(1, 1, 8, 8))
