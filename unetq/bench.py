"""Speed benchmark: quantizers, training step, inference, memory and data loading, each as a ratio.

    python -m unetq.bench                  # base widths 64 (the paper) and 16, batch 5 at 200x200
    python -m unetq.bench --quick          # a seconds-long smoke run (tiny widths and images)
    python -m unetq.bench --device cuda --amp bf16 --out gpu.json

For every base width it measures, with the code the engine runs (``engine.train_step``, the run's
``engine.compute_for`` precision and memory format):

  quantizers   forward+backward of every quantization type on an activation-sized tensor (batch x
               width x H x W), as a ratio to one ``torch.clamp`` pass over the same tensor (and
               elements/s); the weight quantizers also on the largest conv weight (overhead-bound)
  train step   Normal, FIXED a6.0/w0.4 (paper mode), FIXED a6.0/w0.4 pow2 (what the em/ FIXED rows
               train), INT a8/w8, BNN, Ternary with relu and with ternarytanh (what em/Ternary trains),
               and Normal in NCHW when the run uses channels_last, as ratios to Normal
  inference    the same models in eval mode under ``torch.inference_mode``, as ratios to Normal
  memory       of one training step, as ratios to Normal: on the CPU the autograd saved memory (bytes
               autograd keeps for the backward pass; the CPU keeps no allocator statistics, so this is
               not a process peak); on CUDA the peak allocated during a step above what was allocated
               right before it (so the other models' weights and optimizer state do not count)
  data         one epoch of the training loader without compute, as a ratio to one epoch of compute

Timings are medians over ``--reps`` repetitions after ``--warmup`` ones, the models interleaved
round-robin so that a load change on a shared machine hits them all alike. Wall-clock and process
CPU time are both kept: on a loaded machine the CPU-time ratio is the steadier one. The report is
printed as a table and written as JSON (``--out``, default ``bench.json``) with the machine, the
torch version and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import __version__, engine
from .config import ConfigError, validate
from .data import DataError, SliceDataset
from .losses import build_loss
from .models import build_model, validate_model_keys
from .paths import base_module, base_of
from .quantize import binary, fixed_point, int_quant, ternary

# The trained models: name -> model keys (FIXED is the paper's headline a6.0/w0.4; the em/ folders
# train it in pow2 mode and Ternary with ternarytanh, so those two are timed as well).
MODELS = {
    "normal": {"quantization": "normal"},
    "fixed": {"quantization": "fixed", "activation_i_width": 6, "weight_f_width": 4, "fixed_mode": "paper"},
    "fixed_pow2": {"quantization": "fixed", "activation_i_width": 6, "weight_f_width": 4, "fixed_mode": "pow2"},
    "int": {"quantization": "int", "activation_i_width": 8, "weight_i_width": 8},
    "bnn": {"quantization": "bnn"},
    "ternary": {"quantization": "ternary"},
    "ternary_tanh": {"quantization": "ternary", "activation": "ternarytanh"},
}
MEASURES = {"cpu": "autograd saved memory", "cuda": "cuda peak above baseline"}
TARGETS = {"fixed_train_step": 1.10, "quantizer": 3.0, "fixed_inference": 1.15}
TRAIN_IMAGES = 25         # EM: 30 sections, the last 5 validate


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's command line (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m unetq.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run: widths 4 and 2, 32x32, batch 2")
    p.add_argument("--widths", type=_int_list, help="base widths (default 64,16)")
    p.add_argument("--batch", type=int, help="training batch (default 5, the EM recipe)")
    p.add_argument("--size", type=int, help="image side, divisible by 8 (default 200)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions; the median is kept (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 with --quick)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--amp", default="off", choices=tuple(engine.AMP_DTYPES), help="autocast dtype (default off)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for the data timing")
    p.add_argument("--base", help="time this BASE's training data (e.g. EM_BASE; phantom data) instead of "
                                  "in-memory arrays of the same geometry")
    p.add_argument("--out", default="bench.json", help="JSON report path (default bench.json)")
    args = p.parse_args(argv)
    quick = dict(widths=[4, 2], batch=2, size=32) if args.quick else dict(widths=[64, 16], batch=5, size=200)
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.size % 8 or args.size <= 0 or args.batch <= 0 or args.reps <= 0 or args.warmup < 0:
        p.error("--size must be a positive multiple of 8; --batch and --reps positive; --warmup >= 0")
    if args.base and base_of(args.base) is None:
        p.error(f"--base {args.base}: not a BASE folder (allowed: EM_BASE, GM_BASE, NIH_BASE)")
    return args


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be positive integers")
    return values


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: dict[str, Callable], device: torch.device, reps: int, warmup: int,
            min_sample_s: float = 0.0) -> dict[str, dict]:
    """Median wall and CPU seconds per call of every function, interleaved round-robin.

    A sample repeats a call until it lasts ``min_sample_s`` (a few scheduler ticks), so short
    kernels are not rounded to the tick of a shared machine."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        inner[name] = max(1, int(np.ceil(min_sample_s / max(time.perf_counter() - started, 1e-6))))
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner[name]):
                fn()
            _sync(device)
            wall[name].append((time.perf_counter() - w0) / inner[name])
            cpu[name].append((time.process_time() - c0) / inner[name])
    return {name: {"s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name]),
                   "samples_s": wall[name]} for name in fns}


def _with_ratios(times: dict[str, dict], reference: str) -> dict[str, dict]:
    ref = times[reference]
    for t in times.values():
        t["ratio"] = t["s"] / ref["s"]
        t["cpu_ratio"] = t["cpu_s"] / ref["cpu_s"] if ref["cpu_s"] > 0 else float("nan")
    return times


# --------------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------------

def quantizer_cases() -> list[tuple[str, str, Callable]]:
    """(name, role, quantizer) for every quantization type. Every type runs on the activation-sized
    tensor (Ternary too, with dim 0 as its filters): that measures the kernels, and the 3x target
    applies there. The weight quantizers also run on the largest conv weight, for information: on
    so few elements the fixed cost of an autograd call (tens of microseconds) dominates."""
    cases = [
        ("FIXED Q6.0 paper", lambda t: fixed_point(t, 6, 0)),
        ("FIXED Q0.4 paper", lambda t: fixed_point(t, 0, 4)),
        ("FIXED Q8.8 paper", lambda t: fixed_point(t, 8, 8)),
        ("FIXED Q6.0 saturating", lambda t: fixed_point(t, 6, 0, "saturating")),
        ("FIXED Q6.0 pow2", lambda t: fixed_point(t, 6, 0, "pow2")),
        ("FIXED Q0.4 pow2", lambda t: fixed_point(t, 0, 4, "pow2")),
        ("INT8", lambda t: int_quant(t, 8)),
        ("BNN", binary),
        ("Ternary", ternary),
    ]
    weights = ("FIXED Q0.4 paper", "FIXED Q0.4 pow2", "INT8", "BNN", "Ternary")
    return ([(name, "activation", q) for name, q in cases]
            + [(name, "weight", q) for name, q in cases if name in weights])


def _fwd_bwd(quantizer: Callable, t: torch.Tensor, grad: torch.Tensor) -> Callable:
    def run():
        torch.autograd.grad(quantizer(t), t, grad)     # the gradient flows on; no .grad accumulation
    return run


def bench_quantizers(width: int, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Every quantizer's forward+backward against one clamp pass over the same tensor."""
    g = torch.Generator(device="cpu").manual_seed(0)
    tensors = {
        "activation": torch.randn(args.batch, width, args.size, args.size, generator=g) * 4,
        "weight": torch.rand(4 * width, 8 * width, 3, 3, generator=g) * 2 - 1,   # dec3.conv1, the largest
    }
    tensors = {k: v.to(device, dtype).requires_grad_() for k, v in tensors.items()}
    grads = {k: torch.randn_like(v) for k, v in tensors.items()}
    fns = {}
    for role, t in tensors.items():
        fns[f"clamp {role}"] = (lambda t=t: torch.clamp(t.detach(), -1.0, 1.0))
    cases = quantizer_cases()
    for name, role, q in cases:
        fns[f"{name} {role}"] = _fwd_bwd(q, tensors[role], grads[role])
        fns[f"{name} {role} fwd"] = (lambda q=q, t=tensors[role]: q(t.detach()))
    times = measure(fns, device, args.reps, args.warmup, min_sample_s=0.0 if args.quick else 0.1)
    rows = []
    for name, role, _ in cases:
        t, base, fwd = times[f"{name} {role}"], times[f"clamp {role}"], times[f"{name} {role} fwd"]
        n = tensors[role].numel()
        rows.append({"quantizer": name, "role": role, "shape": list(tensors[role].shape), "elements": n,
                     "fwd_bwd_s": t["s"], "clamp_s": base["s"], "ratio": t["s"] / base["s"],
                     "cpu_ratio": _safe_div(t["cpu_s"], base["cpu_s"]), "fwd_ratio": fwd["s"] / base["s"],
                     "elements_per_s": n / t["s"], "clamp_elements_per_s": n / base["s"],
                     "target": role == "activation"})
    return rows


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Models: training step, inference, memory
# --------------------------------------------------------------------------------------------

def _models(width: int, device: torch.device, compute: engine.Compute) -> dict[str, tuple]:
    """name -> (model, optimizer, compute); plus Normal in NCHW when the run is channels_last."""
    out = {}
    for name, keys in MODELS.items():
        torch.manual_seed(0)
        model = build_model(validate_model_keys({**keys, "base_width": width})).to(device,
                                                                                 memory_format=compute.memory_format)
        out[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), compute)
    if compute.memory_format == torch.channels_last:
        torch.manual_seed(0)
        model = build_model(validate_model_keys({**MODELS["normal"], "base_width": width})).to(device)
        nchw = engine.Compute(compute.device_type, compute.dtype, compute.scaler, torch.contiguous_format)
        out["normal_nchw"] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), nchw)
    return out


def _batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch in NCHW. (Each model converts it to its layout: with one channel the
    channels_last strides also pass as NCHW-contiguous, so a converted image would silently turn an
    NCHW network channels_last from its first convolution on.)"""
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=g)
    y = (torch.rand(args.batch, 1, args.size, args.size, generator=g) > 0.5).float()
    return x.to(device), y.to(device)


def bench_models(width: int, args, device: torch.device, compute: engine.Compute) -> dict:
    """Training step, inference and memory of every model, as ratios to Normal."""
    models = _models(width, device, compute)
    x, y = _batch(args, device)
    loss_fn = build_loss("bce_dice")

    def step(model, opt, comp):
        xx = x.contiguous(memory_format=comp.memory_format)
        return lambda: engine.train_step(model, xx, y, loss_fn, opt, comp)

    def infer(model, comp):
        xx = x.contiguous(memory_format=comp.memory_format)

        def run():
            with torch.inference_mode(), comp.autocast():
                model(xx)
        return run

    memory = {name: _memory(m, o, c, x, y, loss_fn, device) for name, (m, o, c) in models.items()}
    for m, _, _ in models.values():
        m.train()
    train = measure({n: step(*v) for n, v in models.items()}, device, args.reps, args.warmup)
    for m, _, _ in models.values():
        m.eval()
    inference = measure({n: infer(m, c) for n, (m, _, c) in models.items()}, device, args.reps, args.warmup)
    ref = memory["normal"]["bytes"]
    for m in memory.values():
        m["ratio"] = _safe_div(m["bytes"], ref)
    return {"train_step": _with_ratios(train, "normal"), "inference": _with_ratios(inference, "normal"),
            "memory": memory}


def _memory(model, opt, compute, x, y, loss_fn, device) -> dict:
    """Memory of one training step: on CUDA see :func:`_cuda_memory`; on the CPU (which keeps no
    allocator statistics) the autograd saved memory: the bytes autograd holds for the backward
    pass, the bulk of training memory."""
    model.train()
    xx = x.contiguous(memory_format=compute.memory_format)
    if device.type == "cuda":
        return _cuda_memory(model, opt, compute, xx, y, loss_fn, device)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with compute.autocast():
            logits = model(xx)
        loss = loss_fn(logits.float(), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return {"bytes": sum(storages.values()), "measure": MEASURES["cpu"]}


def _cuda_memory(model, opt, compute, xx, y, loss_fn, device) -> dict:
    """The CUDA peak of one training step above what is allocated right before it. Every model of
    the benchmark stays on the GPU with its optimizer state, so the absolute peak would count them
    all; the difference is this model's activations, gradients and workspace only."""
    # A first step, not measured: cuDNN's benchmark trials and Adam's lazily created state belong
    # to no steady-state step.
    engine.train_step(model, xx, y, loss_fn, opt, compute)
    model.zero_grad(set_to_none=True)
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    engine.train_step(model, xx, y, loss_fn, opt, compute)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    model.zero_grad(set_to_none=True)     # freed: the next model's baseline holds none of these gradients
    return {"bytes": peak, "measure": MEASURES["cuda"]}


# --------------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------------

def _train_dataset(args):
    """The BASE's training set (``--base``), or pre-decoded in-memory arrays of EM's geometry."""
    if args.base:
        module = base_module(args.base)
        dataset = base_of(args.base).dataset
        cfg = validate({"dataset": dataset, "data_source": "phantom"}, extra_fields=getattr(module, "FIELDS", ()))
        return module.build_datasets(cfg).train, f"{args.base} (phantom)"
    rng = np.random.default_rng(0)
    n = TRAIN_IMAGES
    images = rng.random((n, args.size, args.size), dtype=np.float32)
    masks = (rng.random((n, args.size, args.size)) > 0.5).astype(np.uint8)
    return SliceDataset(images, masks), f"{n} in-memory {args.size}x{args.size} slices"


def bench_data(args, device: torch.device, compute: engine.Compute) -> dict:
    """Seconds to iterate one training epoch (batches moved to the device, no compute)."""
    dataset, source = _train_dataset(args)
    cfg = validate({"num_workers": args.num_workers, "seed": 0})
    loader = engine.make_loader(dataset, args.batch, cfg, device, shuffle=True)

    def epoch():
        for batch in loader:
            batch["image"].to(device, non_blocking=True, memory_format=compute.memory_format)
            batch["mask"].to(device, non_blocking=True)

    t = measure({"epoch": epoch}, device, args.reps, args.warmup)["epoch"]
    return {"source": source, "images": len(dataset), "batches": len(loader), "num_workers": args.num_workers,
            "data_s_per_epoch": t["s"], "data_cpu_s_per_epoch": t["cpu_s"]}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def machine(device: torch.device, amp: str = "off") -> dict:
    """Where the numbers come from (on CUDA also the CUDA and cuDNN versions and the autocast dtype,
    which change the kernels that run)."""
    info = {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "unetq": __version__,
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        dtype = engine.AMP_DTYPES[amp]
        info.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    amp_dtype=str(dtype).replace("torch.", "") if dtype is not None else "float32 (amp off)")
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def targets(report: dict) -> list[dict]:
    """The issue's targets, checked at the widest width measured."""
    width = str(max(int(w) for w in report["widths"]))
    r = report["widths"][width]
    rows = [("FIXED training step / Normal", r["train_step"]["fixed"], TARGETS["fixed_train_step"])]
    rows += [(f"{q['quantizer']} fwd+bwd / clamp (activation-sized tensor)", q, TARGETS["quantizer"])
             for q in r["quantizers"] if q["target"]]
    rows += [("FIXED inference / Normal", r["inference"]["fixed"], TARGETS["fixed_inference"])]
    return [{"what": f"{what}, width {width}", "ratio": t["ratio"], "cpu_ratio": t["cpu_ratio"], "limit": limit,
             "met": t["ratio"] <= limit, "met_cpu_time": t["cpu_ratio"] <= limit} for what, t, limit in rows]


def format_report(report: dict) -> str:
    """The readable table printed at the end of a run."""
    m = report["machine"]
    cuda = f" (CUDA {m['cuda']}, cuDNN {m['cudnn']}, autocast {m['amp_dtype']})" if "cuda" in m else ""
    lines = [f"unetq.bench | {report['date']} | torch {m['torch']}{cuda} | {m['device']} "
             f"({m.get('device_name', m['processor'])}), {m['torch_threads']} threads | "
             f"load {report['load_before']} -> {report['load_after']}",
             f"batch {report['settings']['batch']} at {report['settings']['size']}x{report['settings']['size']}, "
             f"amp {report['settings']['amp']}, layout {report['settings']['layout']}, "
             f"median of {report['settings']['reps']} after {report['settings']['warmup']} warm-up; "
             f"ratio = wall clock, cpu = process CPU time"]
    for width, r in report["widths"].items():
        lines += ["", f"== base width {width} =="]
        lines.append(f"{'quantizer (fwd+bwd)':34s} {'tensor':>10s} {'x clamp':>8s} {'cpu':>6s} {'fwd':>6s} {'Melem/s':>9s}")
        for q in r["quantizers"]:
            lines.append(f"{q['quantizer']:22s} {q['role']:11s} {q['elements'] / 1e6:9.2f}M {q['ratio']:8.2f} "
                         f"{q['cpu_ratio']:6.2f} {q['fwd_ratio']:6.2f} {q['elements_per_s'] / 1e6:9.1f}"
                         + ("" if q["target"] else "  (info: call overhead)"))
        measure = r["memory"]["normal"]["measure"]
        lines.append(f"{'model':12s} {'step s':>8s} {'x Normal':>9s} {'cpu':>6s} {'infer s':>8s} {'x Normal':>9s} "
                     f"{'cpu':>6s} {'saved MB' if measure == MEASURES['cpu'] else 'peak MB':>8s} {'x Normal':>9s}")
        for name, t in r["train_step"].items():
            i, mem = r["inference"][name], r["memory"][name]
            lines.append(f"{name:12s} {t['s']:8.3f} {t['ratio']:9.3f} {t['cpu_ratio']:6.3f} {i['s']:8.3f} "
                         f"{i['ratio']:9.3f} {i['cpu_ratio']:6.3f} {mem['bytes'] / 2**20:8.1f} {mem['ratio']:9.3f}")
        lines.append(f"memory: {measure} of one training step"
                     + (" (bytes kept for the backward pass; not a process peak)" if measure == MEASURES["cpu"]
                        else " (peak allocated above the allocation right before the step)"))
        d = r["data"]
        lines.append(f"data: {d['data_s_per_epoch']:.4f} s per epoch ({d['batches']} batches, {d['source']}, "
                     f"{d['num_workers']} workers) = {d['ratio']:.4f} x the {d['compute_s_per_epoch']:.2f} s of Normal "
                     f"compute per epoch")
    lines += ["", "targets:" if report["targets"] else "targets: checked at full size only (not with --quick)"]
    for t in report["targets"]:
        verdict = "met" if t["met"] else ("MISSED (wall clock; met in CPU time: load noise)" if t["met_cpu_time"]
                                          else "MISSED")
        lines.append(f"  {t['what']}: {t['ratio']:.3f} (cpu {t['cpu_ratio']:.3f}), limit {t['limit']} -> {verdict}")
    return "\n".join(lines)


def run(args) -> dict:
    """Run every measurement; returns the report (a JSON-ready dict)."""
    threads = torch.get_num_threads()
    if args.threads or args.quick:
        # --quick: tiny kernels on a shared machine spend their time waiting for a second thread
        torch.set_num_threads(args.threads or 1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> dict:
    device, notice = engine.select_device(validate({"device": args.device}))
    if notice:
        print(notice, file=sys.stderr)
    compute = engine.compute_for(args.amp, device)
    dtype = compute.dtype or torch.float32
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python -m unetq.bench " + " ".join(args.argv),
              "machine": machine(device, args.amp), "load_before": _load(),
              "settings": {"widths": args.widths, "batch": args.batch, "size": args.size, "reps": args.reps,
                           "warmup": args.warmup, "amp": args.amp, "quick": args.quick,
                           "layout": "channels_last" if compute.memory_format == torch.channels_last else "nchw",
                           "quantizer_dtype": str(dtype).replace("torch.", "")},
              "widths": {}}
    data = bench_data(args, device, compute)
    for width in args.widths:
        r = {"quantizers": bench_quantizers(width, args, device, dtype), **bench_models(width, args, device, compute)}
        step = r["train_step"]["normal"]["s"]
        compute_s = step * data["batches"]
        r["data"] = {**data, "compute_s_per_epoch": compute_s, "ratio": data["data_s_per_epoch"] / compute_s}
        report["widths"][str(width)] = r
    report["load_after"] = _load()
    # tiny --quick tensors measure call overhead, not the kernels the targets are about
    report["targets"] = [] if args.quick else targets(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: run, print the table, write the JSON report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"error: --out {out}: folder {out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
