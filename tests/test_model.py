"""The quantized U-Net: size, topology, the quantized convs really see quantized weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unetq.config import ConfigError
from unetq.layers import ActivationQuantizer, QuantConv2d, TernaryTanh
from unetq.models import build_model, model_options, validate_model_keys

FIXED = dict(quantization="FIXED", weight_i_width=0, weight_f_width=4, activation_i_width=6, activation_f_width=0)
KINDS = {
    "normal": dict(quantization="normal"),
    "fixed": FIXED,
    "int": dict(quantization="int", weight_i_width=4, activation_i_width=4),
    "bnn": dict(quantization="bnn"),
    "ternary": dict(quantization="ternary", activation="ternarytanh"),
}


def model_of(keys: dict):
    """The model of hand-written keys, validated first (as every caller of build_model does)."""
    return build_model(validate_model_keys(keys))


def test_paper_size_has_4837249_trainable_parameters():
    model = model_of({})
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_837_249


@pytest.mark.parametrize("shape", [(200, 200), (112, 176)])
def test_output_shape_equals_input_shape(shape):
    model = model_of({"base_width": 4, **FIXED}).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *shape))
    assert out.shape == (2, 1, *shape)


def test_input_not_divisible_by_8_is_a_clear_error():
    model = model_of({"base_width": 4})
    with pytest.raises(ValueError, match="divisible by 8.*201x200"):
        model(torch.randn(1, 1, 201, 200))


def test_topology_block_order_and_float_layers():
    model = model_of({"base_width": 4, **FIXED})
    quantized = [name for name, _ in model.quantized_convs()]
    assert len(quantized) == 12 and not any(n.startswith("enc1") for n in quantized)
    assert type(model.head) is nn.Conv2d                       # head: plain float conv
    assert type(model.enc1.conv1) is nn.Conv2d and type(model.enc1.conv2) is nn.Conv2d   # first block too
    for block in (model.enc1, model.enc2, model.enc3, model.bottom, model.dec3, model.dec2, model.dec1):
        kinds = [type(m) for m in block]
        conv = nn.Conv2d if block is model.enc1 else QuantConv2d
        assert kinds == [conv, nn.ReLU, nn.BatchNorm2d, ActivationQuantizer] * 2
        assert all(m.fmt.describe() == "Q6.0 (paper)" for m in block if isinstance(m, ActivationQuantizer))
    assert [m.in_channels for m in (model.dec3.conv1, model.dec2.conv1, model.dec1.conv1)] == [32, 24, 12]


def test_every_quantized_conv_sees_quantized_weights():
    torch.manual_seed(0)
    # Q4.4 activations: Q6.0 (paper mode) would truncate the eval-mode BN outputs, mostly below 1, to 0
    model = model_of({"base_width": 4, **FIXED, "activation_i_width": 4, "activation_f_width": 4}).eval()
    seen = {}

    def hook(module, inputs, output):
        seen[module] = (inputs[0].clone(), output.clone())   # the in-place ReLU overwrites output later

    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name != "head"]
    for _, m in convs:
        m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 1, 16, 16))
        for name, m in convs:
            x, out = seen[m]
            assert x.abs().sum() > 0
            as_float = F.conv2d(x, m.weight, m.bias, padding=1)
            if name.startswith("enc1."):
                assert not isinstance(m, QuantConv2d) and torch.allclose(out, as_float)
            else:
                wq = m.weight.abs().frac().mul(16).round().div(16).copysign(m.weight)   # Q0.4 by hand
                assert torch.allclose(out, F.conv2d(x, wq, m.bias, padding=1), atol=1e-5)
                assert not torch.allclose(out, as_float, atol=1e-3)
    assert len(seen) == 14


def _hand_weights(kind: str, w: torch.Tensor) -> torch.Tensor:
    """The weight quantizers written out independently of unetq.quantize."""
    if kind == "bnn":
        return torch.sign(w)
    if kind == "int":                                                  # INT8 over the whole tensor
        return torch.floor(256 * (w - w.min()) / (w.max() - w.min())) - 128
    a = w.abs()                                                        # TWN, per output filter
    delta = 0.7 * a.mean(dim=(1, 2, 3), keepdim=True)
    keep = (a > delta).to(w.dtype)
    alpha = (a * keep).sum(dim=(1, 2, 3), keepdim=True) / keep.sum(dim=(1, 2, 3), keepdim=True)
    return torch.sign(w) * keep * alpha


@pytest.mark.parametrize("kind", ["int", "bnn", "ternary"])
def test_int_bnn_ternary_convs_see_their_quantized_weights(kind):
    torch.manual_seed(1)
    widths = {"weight_i_width": 8, "activation_i_width": 8} if kind == "int" else {}
    model = model_of({"base_width": 4, "quantization": kind, **widths}).eval()
    seen = {}
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.__setitem__(mod, (inp[0].clone(), out.clone())))
    with torch.no_grad():
        model(torch.randn(1, 1, 16, 16))
        for name, m in model.named_modules():
            if isinstance(m, QuantConv2d):
                x, out = seen[m]
                expect = F.conv2d(x, _hand_weights(kind, m.weight), m.bias, padding=1)
                assert torch.allclose(out, expect, rtol=1e-5, atol=1e-4 * expect.abs().max().item())


@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_backward_every_quantization(kind):
    torch.manual_seed(1)
    model = model_of({"base_width": 4, **KINDS[kind]})
    out = model(torch.randn(2, 1, 24, 32))
    out.float().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_activation_quantizer_output_is_on_the_grid():
    model = model_of({"base_width": 4, **FIXED}).eval()
    captured = []
    model.enc2.quant1.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(torch.randn(1, 1, 16, 16) * 5)
    assert torch.equal(captured[0], captured[0].trunc())      # Q6.0: integers
    assert captured[0].abs().max() <= 63


def test_ternary_tanh_beta_is_saved_and_settable():
    model = model_of({"base_width": 4, "quantization": "ternary", "activation": "ternarytanh"})
    keys = [k for k in model.state_dict() if k.endswith(".beta")]
    assert len(keys) == 14
    model.set_ternary_beta(5.5)
    clone = model_of({"base_width": 4, "quantization": "ternary", "activation": "ternarytanh"})
    clone.load_state_dict(model.state_dict())
    assert all(float(m.beta) == 5.5 for m in clone.modules() if isinstance(m, TernaryTanh))
    t = TernaryTanh(8.0)
    x = torch.tensor([-3.0, 0.0, 3.0, 0.25])
    expect = 0.5 * torch.tanh(8 * (2 * x - 1)) + 0.5 * torch.tanh(8 * (2 * x + 1))
    assert torch.allclose(t(x), expect) and t(x)[:3].round().tolist() == [-1, 0, 1]


def test_tanh_is_really_tanh_and_dropout_option():
    model = model_of({"base_width": 4, "activation": "TANH", "dropout": "enable"})
    assert isinstance(model.enc2.act1, nn.Tanh)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 14 and all(d.p == 0.4 for d in drops)
    names = list(dict(model.enc2.named_children()))
    assert names.index("drop1") == names.index("bn1") + 1 and names.index("quant1") == names.index("drop1") + 1


def test_initialisations():
    torch.manual_seed(2)
    model = model_of({"base_width": 8})
    for _, conv in model.quantized_convs():
        assert conv.weight.abs().max() <= 1 and conv.weight.abs().max() > 0.9
        assert conv.bias.abs().sum() == 0
    glorot = model_of({"base_width": 8, "init_type": "glorot"})
    conv = glorot.dec3.conv1
    bound = (1.5 / (conv.in_channels * 9 + conv.out_channels * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    # the float convs keep PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in))
    assert model.enc1.conv2.weight.abs().max() <= 1 / (8 * 9) ** 0.5 + 1e-6


def test_model_keys_are_validated_once_with_a_clear_message():
    with pytest.raises(ConfigError, match="12 \\+ 12.*1 to 23 bits"):       # each part <= 16, the sum not
        validate_model_keys({"quantization": "fixed", "weight_i_width": 12, "weight_f_width": 12})

    with pytest.raises(ConfigError, match="quantization.*FIXD.*allowed: one of normal, fixed"):
        validate_model_keys({"quantization": "FIXD"})
    # the keys a model does not use (data, schedule, a BASE's own) are left to the scripts' validation
    cfg = validate_model_keys({"Quantization": "FIXED", "weight_f_width": 4, "activation_i_width": 6,
                               "foreground": "cell", "lr": "x"})
    assert model_options(cfg)["quantization"] == "fixed" and model_options(cfg)["base_width"] == 64


def test_build_model_uses_a_validated_config_as_it_is():
    cfg = validate_model_keys({"base_width": 4, **FIXED})
    assert model_options(cfg) == model_options(cfg.to_dict())        # a Config or its plain mapping
    assert build_model(cfg.to_dict()).weight_format == build_model(cfg).weight_format
    assert build_model({"base_width": 4}).quantized_convs()[0][1].fmt.kind == "normal"   # defaults
