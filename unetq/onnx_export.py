"""ONNX export of the quantized U-Net, with a check against PyTorch.

    python -m unetq.onnx_export RUN_OR_CHECKPOINT [OUT] [--format reference|qcdq|qonnx|all] [--check]

RUN_OR_CHECKPOINT is a run folder (its best.pt), a ``best.pt`` / ``last.pt`` or a packed ``.uqp``.
OUT is a file or a folder; by default ``<experiment>.<flavour>.onnx`` beside the checkpoint. The
graphs of the three flavours (reference, qcdq, qonnx) are built by :mod:`unetq.onnx_graph`; this
module reads the model, writes the files with their metadata (the config, code version and
formats), and with ``--check`` runs each graph (ONNX Runtime, or the qonnx package's executor) on
the validation slices and compares it with PyTorch layer by layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import export
from .checkpoint import CheckpointError
from .config import ConfigError, validate
from .onnx_graph import (BATCHNORMS, FLAVOURS, ExportRefused, MissingPackage, build_graph, lower_quant, refusal,
                         require, taps_of)
from .paths import base_module, code_version


# --------------------------------------------------------------------------------------------
# Sources, files, metadata
# --------------------------------------------------------------------------------------------

def load_source(path: Path | str) -> tuple[torch.nn.Module, dict, dict]:
    """(U-Net in eval mode, its config keys, where it came from) for a run folder (its best.pt, else
    last.pt), a checkpoint or a packed ``.uqp`` file. Raises CheckpointError with one line."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("best.pt", "last.pt") if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{path}: a folder without best.pt or last.pt; give a run folder or a checkpoint")
        path = found[0]
    if path.suffix == ".uqp":
        header, _ = export.read_packed(path)
        model = export.load_packed(path)
        source = dict(header.get("source") or {})
        config = {**header["model"], "experiment_name": source.get("experiment_name") or path.stem,
                  **({"dataset": source["dataset"]} if source.get("dataset") else {})}
        return model, config, {"file": str(path), **source}
    model, ckpt = export.load_checkpoint_model(path)
    source = {"file": str(path), "epoch": ckpt.get("epoch"), "best_dice": ckpt.get("best_dice"),
              "data_source": ckpt.get("data_source")}
    return model, dict(ckpt["config"]), source


def metadata(model, config: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, str]:
    """The ONNX metadata: config, code version, source and the two formats."""
    return {"unetq.config": json.dumps(dict(config), default=str, sort_keys=True),
            "unetq.code_version": code_version(), "unetq.source": json.dumps(dict(source), default=str),
            "unetq.weights": model.weight_format.describe(), "unetq.activations": model.activation_format.describe()}


def output_path(out: Path | str | None, source: Path | str, experiment: str, flavour: str) -> Path:
    """OUT itself when it names a file; else ``<experiment>.<flavour>.onnx`` in OUT (a folder) or
    beside the source (the original overwrote one ``Unet.onnx`` for every experiment)."""
    name = f"{experiment}.{flavour}.onnx"
    if out is None:
        source = Path(source)
        return (source if source.is_dir() else source.parent) / name
    folder = str(out).endswith("/") or Path(out).is_dir()
    return Path(out) / name if folder else Path(out)


def save(proto, path: Path) -> int:
    """Check the graph with onnx's checker and write it; returns its size in bytes."""
    onnx = require("onnx")
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString()
    path.write_bytes(data)
    return len(data)


# --------------------------------------------------------------------------------------------
# Running the graphs and comparing with PyTorch
# --------------------------------------------------------------------------------------------

QONNX_RUNNERS = ("executor", "lowered")


def run_graph(proto, flavour: str, x: np.ndarray, extra: Sequence[str] = (),
              qonnx_runner: str = "executor") -> dict[str, np.ndarray]:
    """{tensor name: value} of ``logits`` and the ``extra`` tensors: reference and qcdq in ONNX
    Runtime; qonnx in the qonnx package's executor (ONNX Runtime has no Quant kernel), or with
    ``qonnx_runner="lowered"`` in ONNX Runtime after :func:`lower_quant` (fast)."""
    onnx = require("onnx")
    proto = type(proto).FromString(proto.SerializeToString())       # a copy: outputs are added below
    if flavour == "qonnx" and qonnx_runner == "executor":
        return _run_qonnx(onnx, proto, x, extra)
    if flavour == "qonnx":
        proto = lower_quant(proto)
    ort = require("onnxruntime")
    for name in extra:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = ["logits", *extra]
    return dict(zip(names, session.run(names, {"image": x})))


def _run_qonnx(onnx, proto, x: np.ndarray, extra: Sequence[str]) -> dict[str, np.ndarray]:
    """The qonnx executor needs static shapes: the input is fixed to ``x``'s and shapes inferred."""
    require("qonnx")
    # qonnx is optional (only this runner needs it): imported here, after require() named the package
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    proto.graph.output[0].type.tensor_type.ClearField("shape")     # inferred below
    shape = proto.graph.input[0].type.tensor_type.shape
    shape.ClearField("dim")
    for size in x.shape:
        shape.dim.add().dim_value = int(size)
    require("onnxruntime").set_default_logger_severity(3)          # the executor runs node by node
    wrapper = ModelWrapper(proto).transform(InferShapes())
    context = execute_onnx(wrapper, {"image": x}, return_full_exec_context=bool(extra))
    return {name: np.asarray(context[name]) for name in ["logits", *extra]}


def torch_outputs(model, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """{module name: output} of the PyTorch model in eval mode for the tapped modules, and logits
    (copied in the hooks: ReLU works in place on the conv's output)."""
    found: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: found.__setitem__(n, o.detach().clone().numpy()))
             for n in names if n in modules]
    try:
        with torch.no_grad():
            found["logits"] = model.eval()(torch.from_numpy(x)).numpy()
    finally:
        for h in hooks:
            h.remove()
    return found


def compare(model, proto, flavour: str, images: np.ndarray, threshold: float, batch: int = 4,
            qonnx_runner: str = "executor") -> dict:
    """Run PyTorch and the graph on ``images`` (N, 1, H, W) in batches of ``batch``. Returns
    ``layers`` (per tapped tensor: largest |difference| and count of differing elements, in graph
    order), ``max_logit_diff``, ``max_logit`` (largest |logit|), ``mask_mismatch`` (pixels whose
    prediction sigmoid(logit) >= threshold differs) and ``pixels``."""
    names = taps_of(proto)
    layers = {n: [0.0, 0] for n in names}
    mismatch = pixels = 0
    biggest = 0.0
    for start in range(0, len(images), batch):
        x = np.ascontiguousarray(images[start:start + batch], dtype=np.float32)
        ours = run_graph(proto, flavour, x, [n for n in names if n != "logits"], qonnx_runner)
        ref = torch_outputs(model, x, names)
        for n in names:
            diff = np.abs(ours[n].astype(np.float64) - ref[n])
            layers[n][0] = max(layers[n][0], float(diff.max(initial=0)))
            layers[n][1] += int((diff > 0).sum())
        mismatch += int((_mask(ours["logits"], threshold) != _mask(ref["logits"], threshold)).sum())
        pixels += ref["logits"].size
        biggest = max(biggest, float(np.abs(ref["logits"]).max()))
    return {"layers": layers, "max_logit_diff": layers["logits"][0], "max_logit": biggest,
            "mask_mismatch": mismatch, "pixels": pixels}


def _mask(logits: np.ndarray, threshold: float) -> np.ndarray:
    """The prediction as the engine makes it: sigmoid(logits) >= threshold, in float32 torch."""
    return (torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))) >= threshold).numpy()


def validation_images(config: Mapping[str, Any], data_source: str | None = None, limit: int | None = None) -> np.ndarray:
    """The validation slices (N, 1, H, W) of the run's dataset, read by its BASE's data module
    (``data_source`` overrides the run's, e.g. phantom where the sample data is absent)."""
    dataset = config.get("dataset") or "em"
    base = base_module(f"{dataset.upper()}_BASE")
    raw = {k: v for k, v in config.items() if v is not None}
    if data_source:
        raw["data_source"] = data_source
    cfg = validate(raw, extra_fields=getattr(base, "FIELDS", ()), dataset=dataset)
    images = base.build_datasets(cfg).val.images
    return np.ascontiguousarray(images[:limit, None], dtype=np.float32)


LOGIT_TOLERANCE = 1e-3
"""Stated tolerance: max |logit difference| <= LOGIT_TOLERANCE * max(1, largest |logit|). The
graphs compute the same quantizers; what remains is float32 summation order in the convs (and
ONNX Runtime's own tanh / exp), which can move a value across a rounding boundary now and then."""


def within_tolerance(result: Mapping[str, Any]) -> bool:
    """Logits within :data:`LOGIT_TOLERANCE` (relative to the largest logit) and no mask pixel differs."""
    return (result["max_logit_diff"] <= LOGIT_TOLERANCE * max(1.0, result["max_logit"])
            and result["mask_mismatch"] == 0)


def print_check(result: Mapping[str, Any], flavour: str, out=None) -> None:
    """The per-layer table of --check, then the verdict line (to ``out``, default stdout)."""
    out = out or sys.stdout
    print(f"  {'tensor':<14} {'max |diff|':>12} {'differing':>10}", file=out)
    for name, (diff, count) in result["layers"].items():
        print(f"  {name:<14} {diff:12.3g} {count:10d}", file=out)
    verdict = "OK" if within_tolerance(result) else "DIFFERS"
    print(f"  {flavour}: {verdict}: largest logit difference {result['max_logit_diff']:.3g} (tolerance "
          f"{LOGIT_TOLERANCE:g} x max(1, {result['max_logit']:.3g})), mismatching mask pixels "
          f"{result['mask_mismatch']} of {result['pixels']}", file=out)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unetq.onnx_export",
                                     description="Export a trained quantized U-Net to ONNX (docs/onnx.md).")
    parser.add_argument("source", help="a run folder, its best.pt / last.pt, or a packed .uqp file")
    parser.add_argument("out", nargs="?", help="the .onnx file, or a folder (default: beside the source, "
                                               "named <experiment>.<flavour>.onnx)")
    parser.add_argument("--format", choices=(*FLAVOURS, "all"), default="reference",
                        help="reference (standard operators), qcdq (int8 Q/Clip/DQ), qonnx (Quant nodes), "
                             "or all (every flavour the model fits; the others are named with the reason)")
    parser.add_argument("--batchnorm", choices=BATCHNORMS, default="exact",
                        help="exact: x * alpha + beta as PyTorch rounds it (default); op: ONNX BatchNormalization, "
                             "for tool flows that fold it (may differ by 1 ulp, see docs/onnx.md)")
    parser.add_argument("--check", action="store_true",
                        help="run the graph on the validation slices and compare with PyTorch, layer by layer")
    parser.add_argument("--data-source", choices=("phantom", "sample", "real"),
                        help="--check: override the run's data_source (e.g. phantom without the sample data)")
    parser.add_argument("--qonnx-runner", choices=QONNX_RUNNERS, default="executor",
                        help="--check of qonnx: the qonnx package's executor (default; slow, node by node) or "
                             "ONNX Runtime on the graph with Quant written in standard operators")
    parser.add_argument("--slices", type=int, default=None, help="--check: only the first N validation slices")
    args = parser.parse_args(argv)
    try:
        return _export(args)
    except (MissingPackage, CheckpointError, ConfigError, ExportRefused, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _export(args) -> int:
    require("onnx")
    model, config, source = load_source(args.source)
    flavours = FLAVOURS if args.format == "all" else (args.format,)
    experiment = str(config.get("experiment_name") or "unet")
    images = None
    failed = False
    for flavour in flavours:
        reason = refusal(model.weight_format, model.activation_format, flavour)
        if reason and args.format == "all":
            print(f"skipped {reason}")
            continue
        proto = build_graph(model, flavour, metadata(model, config, source), args.batchnorm)
        # --format all writes several files: OUT is then a folder
        out = f"{args.out}/" if args.out and args.format == "all" else args.out
        path = output_path(out, args.source, experiment, flavour)
        size = save(proto, path)
        print(f"wrote {path}: {size:,} bytes, {flavour}, weights {model.weight_format.describe()}, "
              f"activations {model.activation_format.describe()}")
        if args.check:
            if images is None:
                images = validation_images(config, args.data_source, args.slices)
            result = compare(model, proto, flavour, images, float(config.get("threshold", 0.5)),
                             qonnx_runner=args.qonnx_runner)
            print_check(result, flavour)
            failed |= not within_tolerance(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
