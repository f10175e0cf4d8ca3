"""The pieces of an experiment that every dataset shares (docs/method.md sections 4-6): the learning-
rate schedule, the loaders, the device and precision, one training step, the validation pass with
its metrics, and the inference and visualize modes. The training loop itself is in each BASE script.

One epoch e (1-based) trains with the learning rate of schedule index e - 1 (a scheduler would step
at the END of an epoch), then validates in eval mode; the session keeps the best checkpoint on a
strictly greater mean validation Dice (at the configured threshold) and the last one beside it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import figures
from .config import Config
from .distributed import SINGLE, EpochShuffle, Shard, World, gather
from .losses import build_loss
from .metrics import MetricAggregator, dice, hausdorff

N_OVERLAYS = 4


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); one line, the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# Schedule, loaders, device
# --------------------------------------------------------------------------------------------

def lr_at(cfg: Config, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: schedule index t = epoch - 1 of

    step:     lr * 0.1^k, k = number of milestones N/5, 2N/5, 3N/5, 4N/5 that t has reached (compared
              as real numbers, so a short run still starts at lr and keeps the schedule's shape)
    cosine:   annealing from lr to 0 over N epochs, lr (1 + cos(pi t / N)) / 2
    constant: lr
    Written as a function of the epoch (no scheduler object), so a resumed run needs no state.
    """
    n, t = cfg.num_epochs, epoch - 1
    if cfg.lr_schedule == "step":
        return cfg.lr * 0.1 ** sum(t >= k * n / 5 for k in range(1, 5))
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (1 + math.cos(math.pi * t / n)) / 2
    return cfg.lr


def ternary_beta(cfg: Config, epoch: int) -> float:
    """beta of ternaryTanh in ``epoch``: linspace(3, 8, num_epochs)[epoch - 1]."""
    return float(np.linspace(3.0, 8.0, cfg.num_epochs)[epoch - 1])


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and python in DataLoader workers from torch's per-worker seed (itself derived from
    the run's seed), for any transform that draws from the global generators."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, cfg: Config, device: torch.device, shuffle: bool,
                world: World = SINGLE) -> DataLoader:
    """DataLoader with the run's worker count. Training (``shuffle``): the (seed, epoch) order of
    :class:`EpochShuffle`, ``batch_size`` being the global batch shared by the ranks; validation:
    in order, each rank taking its :class:`Shard`."""
    if shuffle:
        sampler, batch_size = EpochShuffle(len(dataset), cfg.seed, world), batch_size // world.size
    else:
        sampler = Shard(len(dataset), world) if world.active else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=cfg.num_workers, worker_init_fn=_seed_worker,
                      pin_memory=device.type == "cuda", drop_last=False)


def select_device(cfg: Config) -> tuple[torch.device, str | None]:
    """The device to run on, and a notice when CUDA was asked for but is absent."""
    want = cfg.device
    if want == "cpu":
        return torch.device("cpu"), None
    index = int(want[5:]) if want.startswith("cuda:") else cfg.gpu_core_num
    if torch.cuda.is_available():
        if index >= torch.cuda.device_count():
            return torch.device("cpu"), (f"notice: CUDA device {index} does not exist "
                                         f"({torch.cuda.device_count()} found); running on the CPU")
        torch.backends.cudnn.benchmark = True    # fixed input sizes: let cuDNN pick its fastest kernels
        # TF32 keeps 11 significant bits of each conv input: Q8.8 codes would not survive it, and the
        # fake quantization would stop simulating fixed point exactly.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.device(f"cuda:{index}"), None
    if want == "auto":
        return torch.device("cpu"), "notice: CUDA is not available; running on the CPU"
    return torch.device("cpu"), f"notice: device {want!r} asked for but CUDA is not available; running on the CPU"


# --------------------------------------------------------------------------------------------
# How a run computes: precision (config key ``amp``) and memory format
# --------------------------------------------------------------------------------------------

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Compute:
    """How tensors are computed: the autocast dtype (None: plain float32), the gradient scaler that
    fp16 needs (small fp16 gradients underflow without one) and the memory format of the images and
    activations. The quantizers run in whatever dtype autocast hands them; a Qi.f grid survives a
    reduced-precision convolution only if it fits the type (bf16: 8 significant bits, fp16: 11)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: object = None
    memory_format: torch.memory_format = torch.contiguous_format

    def autocast(self):
        """The autocast context of a forward pass (disabled at float32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def compute_for(amp: str, device: torch.device) -> Compute:
    """The :class:`Compute` of a run. channels_last on the CPU (oneDNN convolutions ran ~20 % faster
    in ``python -m unetq.bench``) and on CUDA with AMP (the tensor-core layout); NCHW otherwise."""
    dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    fast_layout = device.type == "cpu" or dtype is not None
    return Compute(device.type, dtype, scaler, torch.channels_last if fast_layout else torch.contiguous_format)


def wrap_for_training(model: torch.nn.Module, world: World, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """The module training calls: under torchrun a DistributedDataParallel wrapper (with SyncBatchNorm
    when ``sync_bn``: batch statistics over the global batch instead of each rank's share)."""
    if not world.active:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
# --------------------------------------------------------------------------------------------

def train_step(model, x, y, loss_fn: Callable, optimizer, compute: Compute = Compute()) -> torch.Tensor:
    """One optimisation step on a batch already on the device; returns the detached loss (no host
    sync). The forward runs under ``compute``'s autocast, the loss in float32."""
    with compute.autocast():
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if compute.scaler is not None:
        compute.scaler.scale(loss).backward()
        compute.scaler.step(optimizer)
        compute.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


@torch.inference_mode()
def evaluate(model, loader, cfg: Config, device, loss_fn: Callable | None = None, keep: tuple[int, ...] = (),
             compute: Compute | None = None, world: World = SINGLE) -> tuple[dict, list]:
    """One pass over ``loader`` in eval mode. Returns (metrics, kept) where metrics holds the
    per-slice means (x100) at ``cfg.threshold`` plus ``dice_05`` and ``hd95_05`` (at 0.5), ``dice_bg`` and
    ``dice_bg_05`` (the other class's Dice of the same predictions), ``val_loss`` and the
    counts, and kept lists (index, image, gt, pred) for the dataset indices in ``keep``. Under
    torchrun each rank scores its shard and the per-slice rows are gathered: the result is the same
    as one process's."""
    model.eval()
    compute = compute or Compute()
    agg = MetricAggregator(cfg.hd95_mode)
    total, count, kept, indices = 0.0, 0, [], []
    for batch in tqdm(loader, desc="validate", leave=False, disable=None if world.is_main else True, unit="batch"):
        x = batch["image"].to(device, non_blocking=True, memory_format=compute.memory_format)
        y = batch["mask"].to(device, non_blocking=True)
        with compute.autocast():
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            total += float(loss_fn(logits, y)) * len(x)
            count += len(x)
        probs = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        gts = batch["mask"][:, 0].numpy() > 0.5
        for k in range(len(probs)):
            pred = probs[k] >= cfg.threshold
            spacing = batch["spacing"][k].numpy()
            spacing = None if np.isnan(spacing).any() else spacing
            half = probs[k] >= 0.5
            agg.add(pred, gts[k], spacing, extra={**_at_half(half, gts[k], spacing, cfg.hd95_mode),
                                                  **_other_class(pred, half, gts[k])})
            index = int(batch["index"][k])
            indices.append(index)
            if index in keep:
                kept.append((index, batch["image"][k, 0].numpy(), gts[k], pred))
    if world.active:
        agg, total, count, kept = _merge_ranks(gather((indices, agg.per_slice(), total, count, kept), world),
                                               cfg.hd95_mode)
    metrics = agg.result()
    metrics["val_loss"] = total / count if count else float("nan")
    return metrics, kept


def _at_half(pred, gt, spacing, hd95_mode: str) -> dict:
    """Dice (x100) and HD95 of the prediction at threshold 0.5, reported beside the configured
    threshold's: with the paper's 0.999 a model that has not saturated its outputs scores ~0 there."""
    return {"dice_05": dice(pred, gt) * 100.0, "hd95_05": hausdorff(pred, gt, 95, spacing, hd95_mode)}


def _other_class(pred, half, gt) -> dict:
    """Dice (x100) of the other class (the complement of the scored one: EM's membrane when the
    foreground is the cell) of the same predictions, at the configured threshold and at 0.5. On EM
    the cell class covers ~80 % of the pixels, so its Dice has a high floor (predicting all-cell
    scores ~89) while the membrane's is ~33: differences between rows show better there."""
    return {"dice_bg": dice(~pred, ~gt) * 100.0, "dice_bg_05": dice(~half, ~gt) * 100.0}


def _merge_ranks(parts: list, hd95_mode: str) -> tuple:
    """Join the ranks' evaluation shards in dataset order into one aggregator (and sums)."""
    rows = sorted((i, row) for indices, rank_rows, *_ in parts for i, row in zip(indices, rank_rows))
    agg = MetricAggregator(hd95_mode)
    agg.extend(row for _, row in rows)
    total = sum(p[2] for p in parts)
    count = sum(p[3] for p in parts)
    kept = [k for p in parts for k in p[4]]
    return agg, total, count, kept


def overlay_indices(n: int) -> tuple[int, ...]:
    """Up to N_OVERLAYS validation slices spread evenly over the set."""
    k = min(n, N_OVERLAYS)
    return tuple(sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}))


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------

def format_metrics(m: dict, threshold: float = 0.5, unit: str = "") -> str:
    """The metrics part of a console line: ``dice 85.12 | dice@0.5 88.10 | hd95 4.23 px``. Dice at 0.5 is
    shown only beside another threshold; everything else is in metrics.csv."""
    parts = [f"dice {m['dice']:.2f}"]
    if threshold != 0.5 and "dice_05" in m:
        parts.append(f"dice@0.5 {m['dice_05']:.2f}")
    if "hd95" in m:
        parts.append(distance_text(m, "hd95", "hd95", unit))
    return " | ".join(parts)


def distance_text(m: dict, key: str, label: str, unit: str = "") -> str:
    """A Hausdorff mean (hd, hd95) for the log. It is undefined on a slice where exactly one mask is
    empty, and its mean is over the other slices only: say how many it covers, and when that is fewer
    than half (e.g. a model that predicts nothing, where only the both-empty slices, each 0, remain)
    show no number that reads as a good score."""
    n, undefined = m.get("n_slices") or 0, m.get("n_hd_undefined") or 0
    value = f"{m[key]:.2f}{' ' + unit if unit else ''}"
    if not undefined:
        return f"{label} {value}"
    defined = n - undefined
    if 2 * defined < n:
        return f"{label} n/a ({defined} of {n} slices defined)"
    return f"{label} {value} ({defined} of {n} slices)"


def distance_unit(dataset) -> str:
    """The unit of a dataset's Hausdorff distances: mm when every validation slice has a pixel spacing,
    else px (they are then measured in pixels)."""
    spacings = getattr(dataset, "spacings", None)
    return "mm" if spacings is not None and len(spacings) and np.isfinite(spacings).all() else "px"


def plain(d: dict) -> dict:
    """Metric values as plain Python floats (a checkpoint stores no numpy scalars)."""
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


def rng_state() -> dict:
    """The random states a resumed run needs (torch CPU and CUDA, numpy's and python's global
    generators), as tensors and plain numbers so that ``weights_only`` loading accepts them."""
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`rng_state` (missing parts are left alone)."""
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


def save_overlays(run, kept: list, path: Path, label: str) -> None:
    """The kept validation slices (index, image, gt, prediction) of ``run`` drawn as overlays into ``path``."""
    kept = sorted(kept, key=lambda item: item[0])
    if not kept:
        return
    names = getattr(run.data.val, "names", None)
    titles = [f"{names[i] if names else i}" for i, *_ in kept]
    figures.save_overlays([k[1] for k in kept], [k[2] for k in kept], [k[3] for k in kept], path,
                          titles=titles, suptitle=f"{run.cfg.experiment_name}: {label}, threshold {run.cfg.threshold}")


def infer(run) -> dict:
    """Inference mode: one evaluation pass over the validation set in eval mode, no training;
    the metrics are logged, written (metrics.csv) and drawn as overlays."""
    cfg = run.cfg
    loss_fn = build_loss(cfg.loss, cfg.legacy_double_sigmoid)
    loader = make_loader(run.data.val, cfg.val_batch_size, cfg, run.device, shuffle=False, world=run.world)
    started = time.perf_counter()
    metrics, kept = evaluate(run.model, loader, cfg, run.device, loss_fn, overlay_indices(len(run.data.val)),
                             run.compute, run.world)
    row = {"time_s": time.perf_counter() - started, **metrics, "data_source": run.data.source}
    unit = distance_unit(run.data.val)
    run.log.line(f"inference | {row['time_s']:.1f} s | {metrics['n_slices']} slices | val loss {metrics['val_loss']:.4f} | "
                 f"{format_metrics(metrics, cfg.threshold, unit)} | {distance_text(metrics, 'hd', 'hd', unit)}")
    run.log.metrics_row(row)
    if run.world.is_main:
        save_overlays(run, kept, run.log.folder / "overlays.png", "inference")
    return metrics


def visualize(run) -> list[Path]:
    """Visualize mode: the distribution of every conv layer's weights, float and quantized."""
    paths = [run.log.folder / "weights.png", run.log.folder / "weights.pdf"]
    if not run.world.is_main:
        return paths
    figures.plot_weight_distributions(run.model, paths, title=f"{run.cfg.experiment_name}: conv weights")
    for p in paths:
        run.log.line(f"wrote {p}")
    return paths
