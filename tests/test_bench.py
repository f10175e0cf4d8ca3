"""The speed work: the benchmark's report, the exactness of the fast quantizer formulations, the
cache of quantized weights and mixed precision (AMP) on the CPU. Nothing here asserts a timing."""

import json

import numpy as np
import pytest
import torch
import yaml

from unetq import bench, engine, layers
from unetq.config import ConfigError, validate
from unetq.layers import QuantConv2d, QuantFormat
from unetq.losses import build_loss
from unetq.models import build_model
from unetq.paths import base_module
from unetq.quantize import binary, fixed_point, pow2_limit, ternary

EM_SCRIPT = base_module("EM_BASE", "em_unet")

FIXED = {"quantization": "fixed", "activation_i_width": 6, "weight_f_width": 4}


# ------------------------------------------------------------------ the benchmark

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert bench.main(["--quick", "--reps", "1", "--widths", "2", "--size", "16", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_report_has_every_section(report, capsys):
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu_count"] >= 1
    assert report["settings"]["quick"] and report["targets"] == []        # no verdicts on overhead-bound sizes
    r = report["widths"]["2"]
    assert {q["quantizer"].split()[0] for q in r["quantizers"]} == {"FIXED", "INT8", "BNN", "Ternary"}
    for q in r["quantizers"]:
        assert q["ratio"] > 0 and q["elements"] == np.prod(q["shape"])
    models = set(bench.MODELS) | ({"normal_nchw"} if report["settings"]["layout"] == "channels_last" else set())
    for section in ("train_step", "inference", "memory"):
        assert set(r[section]) == models
        assert r[section]["normal"]["ratio"] == 1.0
    assert r["data"]["batches"] == -(-bench.TRAIN_IMAGES // 2) and r["data"]["ratio"] > 0


def test_bench_memory_counts_what_autograd_keeps(report):
    mem = report["widths"]["2"]["memory"]
    # identity STEs save nothing: FIXED keeps what Normal keeps; BNN's hard-tanh STE keeps its input
    assert mem["fixed"]["bytes"] == mem["normal"]["bytes"]
    assert mem["bnn"]["bytes"] > mem["normal"]["bytes"]


def test_bench_table_and_targets(report):
    text = bench.format_report(report)
    assert "base width 2" in text and "FIXED Q6.0 paper" in text and "x Normal" in text
    full = json.loads(json.dumps(report))
    full["settings"]["quick"] = False
    verdicts = bench.targets(full)
    assert {v["limit"] for v in verdicts} == set(bench.TARGETS.values())
    assert all(isinstance(v["met"], bool) for v in verdicts)


def test_bench_refuses_a_missing_output_folder(tmp_path, capsys):
    assert bench.main(["--quick", "--out", str(tmp_path / "nope" / "b.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--size", "30"])


# ------------------------------------------------------------------ fast quantizers stay exact

SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 0.03125, -0.96875, 0.999, 1.0, -1.0, 15.99, 63.5, -64.0, 255.9,
           1e-40, -1e-40, 1e-30, 3e38, -3e38, float("inf"), -float("inf"), float("nan")]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}


def _sample(dtype):
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0, 1, 4000), rng.normal(0, 40, 4000),
                             rng.integers(-600, 600, 2000) / 2.0 ** rng.integers(0, 9, 2000), SPECIAL])
    return torch.tensor(values, dtype=torch.float64).to(dtype)


def _assert_bitwise(got, expected):
    """Same bits everywhere (so -0.0 != +0.0), except that any NaN matches any NaN."""
    same = (got.view(INT_VIEW[got.dtype]) == expected.view(INT_VIEW[got.dtype])) | (got.isnan() & expected.isnan())
    assert bool(same.all()), (got[~same][:5], expected[~same][:5])


def _literal_paper(x, i, f):
    """Eq. 1-4 with the obvious torch ops (trunc, frac, round), one temporary per step."""
    t = torch.clamp(torch.trunc(x), -(2.0 ** i - 1), 2.0 ** i - 1)
    r = torch.round(torch.frac(x) * 2.0 ** f) / 2.0 ** f
    if f == 0:
        return t if i > 0 else torch.zeros_like(x)
    return t + r if i > 0 else r


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_paper_mode_is_bitwise_the_literal_formulation(dtype):
    x = _sample(dtype)
    for i, f in [(6, 0), (0, 4), (8, 8), (4, 4), (1, 0), (0, 1), (2, 3)]:
        _assert_bitwise(fixed_point(x, i, f), _literal_paper(x, i, f))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_pow2_and_ternary_are_bitwise_the_literal_formulation(dtype):
    x = _sample(dtype)
    x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x   # half dtypes run in float32
    for i, f in [(6, 0), (0, 4), (4, 4)]:
        m = pow2_limit(i, f)
        literal = torch.clamp(torch.copysign(torch.exp2(torch.round(torch.log2(x32.abs()))), x32), -m, m)
        _assert_bitwise(fixed_point(x, i, f, "pow2"), literal.to(x.dtype))
    w = x[: 64 * 9 * 4].reshape(64, 4, 3, 3).nan_to_num(0.0, 1.0, -1.0).clone()
    w[5] = 0.0                                   # an all-zero filter
    a = w.abs()
    delta = 0.7 * a.mean(dim=(1, 2, 3), keepdim=True)
    keep = a > delta
    alpha = (a * keep).sum(dim=(1, 2, 3), keepdim=True) / keep.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    _assert_bitwise(ternary(w), torch.sign(w) * keep * alpha)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_hardtanh_ste_keeps_the_boundary(dtype):
    eps = torch.finfo(dtype).eps
    edge = torch.tensor([-1 - eps, -1.0, -1 + eps / 2, 0.0, 1 - eps / 2, 1.0, 1 + eps], dtype=torch.float64)
    x = torch.cat([edge, _sample(torch.float64)]).to(dtype)
    x = x[~x.isnan()].requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    binary(x).backward(g)
    assert torch.equal(x.grad, g * (x.detach().abs() <= 1))        # equal values (zeros may differ in sign)
    assert x.grad[:7].ne(0).tolist() == [False, True, True, True, True, True, False]


# ------------------------------------------------------------------ cached quantized weights

@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = layers.quantize.fixed_point

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(layers.quantize, "fixed_point", counting)
    return calls


def _conv():
    torch.manual_seed(0)
    return QuantConv2d(3, 4, QuantFormat("fixed", 0, 4))


def test_eval_reuses_the_quantized_weight_until_it_changes(counted):
    conv, x = _conv().eval(), torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        first = conv(x)
        assert torch.equal(conv(x), first) and len(counted) == 1
    with torch.no_grad():
        conv(x)
        assert len(counted) == 1
        conv.weight.mul_(0.5)                    # an in-place update bumps the version
        halved = conv(x)
    assert len(counted) == 2
    fresh = torch.nn.functional.conv2d(x, fixed_point(conv.weight.detach(), 0, 4), conv.bias, padding=1)
    assert torch.equal(halved, fresh) and not torch.equal(halved, first)


def test_optimizer_steps_and_load_state_dict_invalidate_the_cache():
    conv, x = _conv().eval(), torch.randn(2, 3, 8, 8)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    for _ in range(2):                           # evaluate (cached), take a step, evaluate again
        with torch.no_grad():
            conv(x)
        conv(x).square().mean().backward()       # with autograd on, the cache is bypassed: gradients flow
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        opt.step()
        with torch.no_grad():
            got = conv(x)
            expect = torch.nn.functional.conv2d(x, fixed_point(conv.weight, 0, 4), conv.bias, padding=1)
        assert torch.equal(got, expect)
    other = QuantConv2d(3, 4, QuantFormat("fixed", 0, 4))
    with torch.no_grad():
        conv(x)
        conv.load_state_dict(other.state_dict())
        assert torch.equal(conv(x), other.eval()(x))
        conv.double()                            # new storage and dtype
        assert conv(x.double()).dtype == torch.float64


# ------------------------------------------------------------------ mixed precision and memory format

@pytest.fixture
def one_thread():
    """Tiny bf16 kernels on the CPU open a parallel region per op; on a busy 2-core machine each one
    waited milliseconds for the second thread (a 30-step test took 40 s instead of 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_amp_key_default_and_errors():
    assert validate({}).amp == "off" and validate({"amp": "BF16"}).amp == "bf16"
    with pytest.raises(ConfigError, match="amp.*off, bf16, fp16"):
        validate({"amp": "fp8"})
    cpu = engine.compute_for("off", torch.device("cpu"))
    assert cpu.dtype is None and cpu.scaler is None and cpu.memory_format == torch.channels_last
    assert engine.compute_for("fp16", torch.device("cpu")).scaler is not None


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_trains_and_keeps_the_quantization_grids(amp, one_thread):
    torch.manual_seed(0)
    model = build_model({**FIXED, "base_width": 4})
    compute = engine.compute_for(amp, torch.device("cpu"))
    model.to(memory_format=compute.memory_format)
    acts = []
    model.dec2.quant1.register_forward_hook(lambda m, i, out: acts.append(out))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 1, 16, 16).contiguous(memory_format=compute.memory_format)
    y = (x > 0.5).float()
    before = model.dec2.conv1.weight.detach().clone()
    losses = [engine.train_step(model, x, y, build_loss("dice"), opt, compute) for _ in range(30)]
    assert all(torch.isfinite(v) for v in losses)
    assert not torch.equal(before, model.dec2.conv1.weight)           # fp16: once the scaler has settled
    a = acts[-1]
    assert a.dtype == compute.dtype and torch.equal(a, a.trunc()) and a.abs().max() <= 63   # Q6.0
    w = model.dec2.conv1.quantized_weight().to(compute.dtype)        # what the autocast conv receives
    assert torch.equal(w * 16, (w * 16).round()) and w.abs().max() <= 1                     # Q0.4


def test_channels_last_computes_the_same_network():
    torch.manual_seed(0)
    model = build_model({"base_width": 4, "init_type": "glorot"}).eval()   # U(-1, 1) grows values to ~1e2
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        nchw = model(x)
        model.to(memory_format=torch.channels_last)
        nhwc = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-5)


def test_a_bf16_run_end_to_end(tmp_path, one_thread):
    cfg = {"dataset": "em", "num_epochs": 1, "base_width": 4, "phantom_images": 4, "val_sections": 2,
           "batch_size": 2, "val_batch_size": 2, **FIXED, "amp": "bf16", "experiment_name": "amp",
           "overlay_every": 0, "threshold": 0.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"UNET": cfg}))
    assert EM_SCRIPT.main(["-f", str(tmp_path / "config.yaml"), "-q"]) == 0
    summary = json.loads((tmp_path / "runs" / "amp" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs_done"] == 1


# ------------------------------------------------------------------ the benchmark's models and memory figures

def test_bench_times_the_em_settings_too(report):
    assert bench.MODELS["fixed_pow2"]["fixed_mode"] == "pow2" and bench.MODELS["fixed"]["fixed_mode"] == "paper"
    assert bench.MODELS["ternary_tanh"]["activation"] == "ternarytanh"
    r = report["widths"]["2"]
    for name in ("fixed_pow2", "ternary_tanh"):
        assert r["train_step"][name]["ratio"] > 0 and r["inference"][name]["ratio"] > 0
    text = bench.format_report(report)
    assert "fixed_pow2" in text and "ternary_tanh" in text


def test_bench_cpu_memory_is_named_autograd_saved_memory(report):
    mem = report["widths"]["2"]["memory"]
    assert {m["measure"] for m in mem.values()} == {"autograd saved memory"}
    text = bench.format_report(report)
    assert "memory: autograd saved memory of one training step" in text and "saved MB" in text
    assert "peak" not in text.replace("not a process peak", "")


def test_bench_cuda_memory_is_the_step_above_what_was_allocated(monkeypatch):
    """On CUDA the figure is the peak minus the allocation right before the step (the other models'
    weights and Adam state stay on the GPU), and the gradients are freed afterwards. The CUDA
    allocator is faked: 1000 bytes allocated before the step, a 1500-byte peak."""
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: calls.append("before") or 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1500)
    monkeypatch.setattr(bench, "_sync", lambda device: None)
    torch.manual_seed(0)
    model = build_model({"base_width": 2})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    compute = engine.compute_for("off", torch.device("cpu"))
    got = bench._memory(model, opt, compute, x, y, build_loss("bce_dice"), torch.device("cuda"))
    assert got == {"bytes": 500, "measure": "cuda peak above baseline"}
    assert calls == ["reset", "before"]
    assert all(p.grad is None for p in model.parameters())


def test_bench_records_cuda_cudnn_and_autocast_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    info = bench.machine(torch.device("cuda:0"), "bf16")
    assert (info["device_name"], info["cuda"], info["cudnn"], info["amp_dtype"]) == ("Fake GPU", "12.4", 90100, "bfloat16")
    assert bench.machine(torch.device("cuda:0"))["amp_dtype"] == "float32 (amp off)"
    assert "cuda" not in bench.machine(torch.device("cpu"))
