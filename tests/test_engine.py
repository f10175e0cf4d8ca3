"""The engine end to end on tiny EM phantom configs: every mode, every output, never overwriting."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml

from unetq import checkpoint
from unetq.config import validate
from unetq.engine import evaluate, lr_at, ternary_beta
from unetq.paths import base_module

EM_SCRIPT = base_module("EM_BASE", "em_unet")

EM = base_module("EM_BASE")
TINY = {"dataset": "em", "num_epochs": 2, "base_width": 4, "phantom_images": 6, "val_sections": 2,
        "batch_size": 2, "val_batch_size": 2, "quantization": "FIXED", "activation_i_width": 4,
        "activation_f_width": 4, "weight_i_width": 0, "weight_f_width": 4, "overlay_every": 1,
        "experiment_name": "tiny", "threshold": 0.5, "fixed_mode": "paper"}


def run(folder, section, *overrides):
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": section}))
    return EM_SCRIPT.main(["-f", str(path), "-q", "-o", *overrides])


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    assert run(folder, TINY) == 0
    return folder, folder / "runs" / "tiny"


def test_normal_mode_writes_every_output(trained):
    _, out = trained
    names = {p.name for p in out.iterdir()}
    assert {"log.txt", "metrics.csv", "config.yaml", "best.pt", "last.pt", "curves.png", "overlays",
            "summary.json"} <= names
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    epoch_lines = [line for line in (out / "log.txt").read_text().splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(k in epoch_lines[0] for k in ("loss", "dice", "hd95", "px", "lr", " s |"))
    # one console line fits a terminal; at threshold 0.5 "dice@0.5" would repeat "dice"
    assert all(len(line) <= 120 and "dice@0.5" not in line for line in epoch_lines)
    table = rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in table] == [1, 2]
    for key in ("train_loss", "val_loss", "dice", "dice_05", "precision", "recall", "specificity", "iou",
                "accuracy", "rand_index", "hd", "hd95", "dice_nonempty", "lr", "time_s"):
        assert key in table[0] and table[0][key] != ""
    assert table[0]["data_source"] == "phantom"
    # this config's threshold is 0.5, so the metrics "at 0.5" must equal the thresholded ones
    assert all(r["dice_05"] == r["dice"] and r["hd95_05"] == r["hd95"] for r in table)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs_done"] == 2 and summary["data_source"] == "phantom"
    best = max(float(r["dice"]) for r in table)
    assert summary["best_dice"] == pytest.approx(best, abs=1e-4)


def test_checkpoints_are_plain_and_safe(trained):
    _, out = trained
    last = torch.load(out / "last.pt", weights_only=True)
    best = checkpoint.load(out / "best.pt")
    assert last["epoch"] == 2 and "optimizer" in last and "rng" in last
    assert best["config"]["quantization"] == "fixed" and "optimizer" not in best
    resolved = yaml.safe_load((out / "config.yaml").read_text())["UNET"]
    cfg = validate(resolved, extra_fields=EM.FIELDS, dataset="em")     # the resolved config reloads as is
    assert cfg.base_width == 4 and cfg.loss == "bce_dice"


def test_inference_reproduces_the_best_epoch_metrics(trained):
    folder, out = trained
    best = checkpoint.load(out / "best.pt")
    assert run(folder, {**TINY, "operation_mode": "inference", "trained_model": "runs/tiny/best.pt"}) == 0
    sub = [p for p in out.iterdir() if p.name.startswith("inference_")]
    assert len(sub) == 1 and (sub[0] / "overlays.png").exists()
    result = rows(sub[0] / "metrics.csv")[0]
    for key in ("dice", "dice_05", "precision", "hd95"):
        assert float(result[key]) == pytest.approx(best["metrics"][key], rel=1e-5, abs=1e-6)
    assert (out / "best.pt").exists() and (out / "log.txt").exists()        # the training run is untouched


def test_visualize_writes_png_and_pdf(trained):
    folder, out = trained
    assert run(folder, {**TINY, "operation_mode": "visualize", "trained_model": "runs/tiny/last.pt"}) == 0
    sub = [p for p in out.iterdir() if p.name.startswith("visualize_")]
    assert (sub[0] / "weights.png").stat().st_size > 0 and (sub[0] / "weights.pdf").stat().st_size > 0


def test_retrain_keeps_the_earlier_run(tmp_path):
    assert run(tmp_path, {**TINY, "num_epochs": 1}) == 0
    first = (tmp_path / "runs" / "tiny" / "metrics.csv").read_text()
    assert run(tmp_path, {**TINY, "num_epochs": 1, "operation_mode": "retrain",
                          "trained_model": "runs/tiny/best.pt"}) == 0
    backups = list((tmp_path / "runs").glob("tiny_backup_*"))
    assert len(backups) == 1 and (backups[0] / "metrics.csv").read_text() == first
    assert (tmp_path / "runs" / "tiny" / "best.pt").exists()


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    from unetq.session import Session

    config = {**TINY, "num_epochs": 3, "dropout": True, "overlay_every": 0}
    assert run(tmp_path / "a" if (tmp_path / "a").mkdir() is None else None, config) == 0
    real = Session.batches

    def interrupt_at_epoch_3(self, loader, desc):
        if desc == "epoch 3":
            raise KeyboardInterrupt
        return real(self, loader, desc)

    (tmp_path / "b").mkdir()
    monkeypatch.setattr(Session, "batches", interrupt_at_epoch_3)
    assert run(tmp_path / "b", config) == 130
    assert json.loads((tmp_path / "b/runs/tiny/summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(Session, "batches", real)
    assert run(tmp_path / "b", {**config, "operation_mode": "resume"}) == 0
    a, b = (torch.load(tmp_path / x / "runs/tiny/last.pt", weights_only=True) for x in "ab")
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    drop_time = [{k: v for k, v in r.items() if k != "time_s"} for r in rows(tmp_path / "a/runs/tiny/metrics.csv")]
    assert drop_time == [{k: v for k, v in r.items() if k != "time_s"}
                         for r in rows(tmp_path / "b/runs/tiny/metrics.csv")]


def test_lr_schedules_match_pytorch_schedulers():
    params = [torch.nn.Parameter(torch.zeros(1))]
    for name, make in (("step", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [40, 80, 120, 160], 0.1)),
                       ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=200, eta_min=0))):
        cfg = validate({"lr": 1e-3, "num_epochs": 200, "lr_schedule": name})
        opt = torch.optim.Adam(params, lr=1e-3)
        sched = make(opt)
        for epoch in range(1, 201):     # epoch e uses the lr after e - 1 scheduler steps
            assert lr_at(cfg, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
            opt.step()
            sched.step()
    cfg = validate({"num_epochs": 200})
    assert ternary_beta(cfg, 1) == 3.0 and ternary_beta(cfg, 200) == 8.0
    assert math.isclose(ternary_beta(cfg, 100), 3 + 5 * 99 / 199)


class _FixedLogits(torch.nn.Module):
    """A "model" whose logits are a fixed function of the input, so that the probabilities are known."""

    def forward(self, x):
        return 6.0 * (x - 0.5)


def test_other_class_dice_is_the_complements_dice_at_both_thresholds():
    # 3 slices of random images and masks; the scored class is mask 1, the other class its complement
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(3, 1, 16, 16, generator=gen)
    masks = (torch.rand(3, 1, 16, 16, generator=gen) > 0.3).float()
    loader = [{"image": images, "mask": masks, "spacing": torch.full((3, 2), float("nan")),
               "index": torch.arange(3)}]
    cfg = validate({"threshold": 0.7})
    metrics, _ = evaluate(_FixedLogits(), loader, cfg, torch.device("cpu"))
    probs = 1.0 / (1.0 + np.exp(-6.0 * (images[:, 0].numpy().astype(np.float64) - 0.5)))
    gt_other = masks[:, 0].numpy() < 0.5

    def mean_dice(pred, gt):        # per-slice 2|A n B| / (|A| + |B|), then the mean, x100
        return 100 * np.mean([2 * (p & g).sum() / (p.sum() + g.sum()) for p, g in zip(pred, gt)])

    assert metrics["dice_bg"] == pytest.approx(mean_dice(probs < 0.7, gt_other), abs=1e-6)
    assert metrics["dice_bg_05"] == pytest.approx(mean_dice(probs < 0.5, gt_other), abs=1e-6)
    assert metrics["dice"] == pytest.approx(mean_dice(probs >= 0.7, ~gt_other), abs=1e-6)
    assert metrics["dice_bg"] != pytest.approx(metrics["dice_bg_05"])        # the two thresholds differ here
