"""ONNX export (docs/onnx.md): each activation quantizer against unetq.quantize on edge values, every
quantization type exported or refused per flavour, the graphs run in ONNX Runtime / the qonnx
executor against PyTorch (real ISBI validation sections when present), the QCDQ file size, the
command line (checkpoint and .uqp sources, metadata, file names, refusals, --check)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("qonnx")

from unetq import checkpoint, export  # noqa: E402
from unetq import onnx_export as ox  # noqa: E402
from unetq import onnx_graph as og  # noqa: E402
from unetq.layers import QuantFormat  # noqa: E402
from unetq.models import build_model, validate_model_keys  # noqa: E402
from unetq.paths import PROJECT_ROOT  # noqa: E402

ALL = set(og.FLAVOURS)
# kind: (model keys, the flavours that must carry it; the others must refuse it)
KINDS = {
    "normal": (dict(quantization="normal"), {"reference"}),
    "paper-a6w0.4": (dict(quantization="fixed", activation_i_width=6, weight_f_width=4, fixed_mode="paper"), ALL),
    "paper-q2.3": (dict(quantization="fixed", activation_i_width=2, activation_f_width=3, weight_i_width=2,
                        weight_f_width=3, fixed_mode="paper"), {"reference"}),
    "saturating-a6w0.4": (dict(quantization="fixed", activation_i_width=6, weight_f_width=4,
                               fixed_mode="saturating"), ALL),
    "saturating-q8.8": (dict(quantization="fixed", activation_i_width=8, activation_f_width=8, weight_i_width=8,
                             weight_f_width=8, fixed_mode="saturating"), {"reference", "qonnx"}),
    "pow2": (dict(quantization="fixed", activation_i_width=4, activation_f_width=4, weight_i_width=4,
                  weight_f_width=4, fixed_mode="pow2"), {"reference"}),
    "int4": (dict(quantization="int", activation_i_width=4, weight_i_width=4), ALL),
    "int8": (dict(quantization="int", activation_i_width=8, weight_i_width=8), {"reference", "qonnx"}),
    "bnn": (dict(quantization="bnn"), ALL),
    "ternary": (dict(quantization="ternary", activation="ternarytanh", dropout=True), ALL),
}

EDGES = np.array([-300, -64.6, -63.5, -8.5, -2.97, -1.3, -1.0, -0.53125, -0.5, -0.03125, -0.0, 0.0, 1e-9, 0.03,
                  0.0625, 0.09375, 0.46875, 0.5, 0.96875, 0.99, 1.0, 1.3, 1.5, 2.5, 2.97, 7.4, 8.5, 15.99, 16.5,
                  63.49, 63.5, 64.6, 300], np.float32).reshape(1, 1, -1, 1)

FORMATS = [QuantFormat("fixed", 6, 0, "saturating"), QuantFormat("fixed", 0, 4, "saturating"),
           QuantFormat("fixed", 8, 8, "saturating"), QuantFormat("fixed", 6, 0, "paper"),
           QuantFormat("fixed", 0, 4, "paper"), QuantFormat("fixed", 2, 3, "paper"), QuantFormat("fixed", 4, 4, "pow2"),
           QuantFormat("int", 4), QuantFormat("int", 8), QuantFormat("bnn")]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.describe())
def test_activation_quantizers_equal_pytorch_on_edge_values(fmt):
    """Each quantizer graph against the PyTorch quantizer: equal values (a zero's sign may differ),
    on rounding ties, saturation bounds, the paper wrap and INT's min/max; a constant tensor
    for INT (no scale)."""
    for flavour in og.FLAVOURS:
        if og.refusal(fmt, fmt, flavour):
            with pytest.raises(og.ExportRefused, match=f"^{flavour}: .*(reference|qonnx)"):
                og.activation_graph(fmt, flavour)
            continue
        graph = og.activation_graph(fmt, flavour)
        for x in (EDGES, np.full((1, 1, 3, 2), 0.7, np.float32)):
            want = fmt.quantize_activation(torch.from_numpy(x)).numpy()
            got = ox.run_graph(graph, flavour, x)["logits"]
            assert np.array_equal(got, want), (flavour, got.ravel(), want.ravel())   # -0.0 == +0.0


def test_refusals_say_why_and_who_can():
    wf = QuantFormat("fixed", 0, 4, "paper")
    assert "wraps" in og.refusal(wf, QuantFormat("fixed", 0, 4, "paper"), "qcdq")
    assert "powers of two" in og.refusal(QuantFormat("fixed", 4, 4, "pow2"), QuantFormat("fixed", 4, 4, "pow2"), "qonnx")
    assert og.refusal(wf, QuantFormat("fixed", 6, 0, "paper"), "qcdq") is None
    msg = og.refusal(QuantFormat("int", 8), QuantFormat("int", 8), "qcdq")
    assert "9-bit" in msg and "qonnx" in msg


def _calibrated(keys, seed=0, width=4, images=None):
    """A small model whose BatchNorm statistics come from data (a few train-mode passes without
    updates), so that activations spread over the quantizers' ranges as in a trained model."""
    torch.manual_seed(seed)
    model = build_model(validate_model_keys({**keys, "base_width": width, "init_type": "glorot"}))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None                                              # cumulative average
    x = torch.randn(4, 1, 32, 32) if images is None else torch.from_numpy(images)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(x)
        if keys.get("activation") == "ternarytanh":
            model.set_ternary_beta(5.0)
    return model.eval()


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_quantization_type_exports_or_refuses(kind):
    keys, carriers = KINDS[kind]
    model = _calibrated(keys)
    x = torch.randn(2, 1, 16, 24, generator=torch.Generator().manual_seed(3)).numpy()   # not the built size
    for flavour in og.FLAVOURS:
        if flavour not in carriers:
            with pytest.raises(og.ExportRefused, match=f"^{flavour}: "):
                og.build_graph(model, flavour)
            continue
        graph = og.build_graph(model, flavour)
        onnx.checker.check_model(graph)
        # qonnx: Quant in standard operators, in ONNX Runtime (the executor takes ~0.1 s a node; it
        # checks every quantizer above and whole graphs in the slow test below)
        result = ox.compare(model, graph, flavour, x, threshold=0.5, qonnx_runner="lowered")
        assert ox.within_tolerance(result), (flavour, result["max_logit_diff"], result["mask_mismatch"])
        assert result["pixels"] == 2 * 16 * 24
        quantizers = [n for n in result["layers"] if ".quant" in n]
        assert len(quantizers) == 14                                      # every stage is compared
        ops = {n.op_type for n in graph.graph.node}
        assert "Resize" in ops                                            # the bilinear upsampling
        if flavour == "qcdq" and kind != "ternary":
            assert {"QuantizeLinear", "Clip", "DequantizeLinear"} <= ops
        if flavour == "qcdq":
            codes = [i for i in graph.graph.initializer if i.name.endswith(".weight_codes")]
            assert len(codes) == 12 and all(i.data_type == onnx.TensorProto.INT8 for i in codes)
        if flavour == "qonnx":
            quants = [n for n in graph.graph.node if n.op_type == "Quant"]
            assert quants and all(n.domain == og.QONNX_DOMAIN for n in quants)


def _isbi_check(kinds, sections):
    val = ox.validation_images({"dataset": "em", "data_source": "sample"})      # via EM_BASE/em_data.py
    assert val.shape == (5, 1, 200, 200) and 0.0 <= val.min() < val.max() <= 1.0
    for kind in kinds:
        model = _calibrated(KINDS[kind][0], images=val[:2])
        for flavour in og.FLAVOURS:
            result = ox.compare(model, og.build_graph(model, flavour), flavour, val[:sections], threshold=0.5,
                                batch=5, qonnx_runner="lowered")
            assert result["mask_mismatch"] == 0 and ox.within_tolerance(result), (kind, flavour, result["max_logit_diff"])


def test_real_isbi_validation_sections(shared_data):
    """On real ISBI validation sections (200x200): masks identical to PyTorch's in every flavour,
    logits within the stated tolerance (two sections here, all five of both models in the slow test)."""
    _isbi_check(["saturating-a6w0.4"], 2)


@pytest.mark.slow
def test_real_isbi_validation_sections_all(shared_data):
    _isbi_check(["saturating-a6w0.4", "paper-a6w0.4", "int4", "bnn"], 5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["saturating-a6w0.4", "int4", "bnn", "ternary", "saturating-q8.8"])
def test_qonnx_graphs_in_the_qonnx_executor(kind):
    """Whole qonnx graphs in the qonnx package's own executor: masks and logits as PyTorch's, and the
    same values as the lowered graph the fast tests run."""
    model = _calibrated(KINDS[kind][0])
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(4)).numpy()
    graph = og.build_graph(model, "qonnx")
    result = ox.compare(model, graph, "qonnx", x, threshold=0.5)
    assert ox.within_tolerance(result), result["max_logit_diff"]
    lowered = ox.run_graph(graph, "qonnx", x, qonnx_runner="lowered")["logits"]
    assert np.abs(lowered - ox.run_graph(graph, "qonnx", x)["logits"]).max() <= 1e-5


def test_batchnorm_op_variant_is_close_and_uses_the_standard_node():
    model = _calibrated(KINDS["saturating-a6w0.4"][0])
    graph = og.build_graph(model, "qcdq", batchnorm="op")
    assert sum(n.op_type == "BatchNormalization" for n in graph.graph.node) == 14
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(6)).numpy()
    result = ox.compare(model, graph, "qcdq", x, threshold=0.5)
    assert result["layers"]["enc1.bn1"][0] <= 1e-5                            # an ulp here and there


def test_qcdq_file_is_a_third_of_the_float_export_at_width_64():
    """Sizes only (nothing is run): the a6.0/w0.4 saturating U-Net at the paper's width 64."""
    keys = KINDS["saturating-a6w0.4"][0]
    model = build_model(validate_model_keys({**keys, "base_width": 64})).eval()
    float_model = build_model(validate_model_keys({"quantization": "normal", "base_width": 64})).eval()
    float_size = og.build_graph(float_model, "reference").ByteSize()
    qcdq_size = og.build_graph(model, "qcdq").ByteSize()
    assert float_size > 4 * 4_837_249                                      # 4.84 M float32 parameters
    assert qcdq_size <= float_size / 3


def _checkpoint(tmp_path, keys, name="exp1"):
    config = {**keys, "base_width": 4, "dataset": "em", "experiment_name": name, "data_source": "phantom",
              "phantom_images": 4, "val_sections": 2, "threshold": 0.5}
    model = _calibrated(keys)
    run = tmp_path / name
    checkpoint.save({"model": model.state_dict(), "config": config, "epoch": 2}, run / "best.pt")
    return model, run


def test_command_line_all_flavours_with_check(tmp_path, capsys):
    model, run = _checkpoint(tmp_path, KINDS["saturating-a6w0.4"][0])
    out = tmp_path / "onnx"
    assert ox.main([str(run), str(out), "--format", "all", "--check", "--slices", "2", "--qonnx-runner", "lowered"]) == 0
    text = capsys.readouterr().out
    for flavour in og.FLAVOURS:
        path = out / f"exp1.{flavour}.onnx"                               # per-experiment names
        assert path.is_file() and f"{flavour}: OK" in text
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["unetq.config"])["experiment_name"] == "exp1"
        assert meta["unetq.code_version"] and meta["unetq.flavour"] == flavour
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    assert "dec1.quant2" in text and "mismatching mask pixels 0" in text       # the per-layer table


def test_packed_source_exports_the_same_graph_values(tmp_path):
    model, run = _checkpoint(tmp_path, KINDS["paper-a6w0.4"][0])
    export.save_packed(model, tmp_path / "m.uqp", source={"experiment_name": "exp1", "dataset": "em"})
    assert ox.main([str(tmp_path / "m.uqp"), str(tmp_path / "a.onnx"), "--format", "qcdq"]) == 0
    assert ox.main([str(run / "best.pt"), str(tmp_path / "b.onnx"), "--format", "qcdq"]) == 0
    x = torch.randn(1, 1, 24, 16, generator=torch.Generator().manual_seed(5)).numpy()
    a = ox.run_graph(onnx.load(str(tmp_path / "a.onnx")), "qcdq", x)["logits"]
    b = ox.run_graph(onnx.load(str(tmp_path / "b.onnx")), "qcdq", x)["logits"]
    assert np.array_equal(a, b)


def test_refused_flavour_is_one_line_and_writes_nothing(tmp_path, capsys):
    _, run = _checkpoint(tmp_path, KINDS["pow2"][0], name="p")
    assert ox.main([str(run), str(tmp_path / "x.onnx"), "--format", "qcdq"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: qcdq: pow2") and "reference" in err[0]
    assert not (tmp_path / "x.onnx").exists()
    assert ox.main([str(tmp_path / "nothing"), "--format", "reference"]) == 2


def test_missing_package_is_one_line_and_training_does_not_need_it():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
            "import unetq.session, unetq.engine\n"
            "from unetq import onnx_export\n"
            "sys.exit(onnx_export.main(['whatever.pt']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: the 'onnx' package is needed for this; install it with: pip install onnx"
