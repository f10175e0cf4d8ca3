"""GM end to end: the shipped gm/ experiment rows, the script with its recipe, tiny training runs on
the phantom and on the real sample (skipped when absent), Hausdorff in mm, and bad input at the
command line."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from unetq import engine, metrics
from unetq.config import load, validate
from unetq.paths import PROJECT_ROOT, base_module

GM_SCRIPT = base_module("GM_BASE", "gmchallenge_unet")

GM = base_module("GM_BASE")
GM_PHANTOM = base_module("GM_BASE", "gm_phantom")
TINY = {"dataset": "gm", "num_epochs": 1, "base_width": 4, "sites": "1", "phantom_subjects": 3, "phantom_slices": 3,
        "train_subjects": "1-2", "val_subjects": "3", "crop_size": 64, "rater_mode": "majority",
        "batch_size": 4, "val_batch_size": 4, "threshold": 0.5, "overlay_every": 0, "experiment_name": "tiny"}
ROWS = {"full_precision", "a8_8_w8_8", "a8_0_w0_8", "a6_0_w0_4", "a4_0_w0_2", "a2_0_w0_2", "BNN", "Ternary",
        "a8_8_w8_8_dropout", "a8_0_w0_8_dropout", "a6_0_w0_4_dropout", "a4_0_w0_2_dropout", "demo"}


def run(folder, section, *overrides):
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": section}))
    return GM_SCRIPT.main(["-f", str(path), "-q", "-o", *overrides])


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def gm_config(name):
    return load(PROJECT_ROOT / "gm" / name / "config.yaml", "UNET", extra_fields=GM.FIELDS, dataset="gm")


# --------------------------------------------------------------------------- the shipped rows

def test_gm_rows_of_the_paper_are_all_there_and_consistent():
    folders = {p.name for p in (PROJECT_ROOT / "gm").iterdir() if p.is_dir()}
    assert ROWS <= folders
    for name in ROWS - {"demo"}:
        cfg = gm_config(name)
        assert cfg.fixed_mode == "paper" and cfg.loss == "dice" and cfg.lr_schedule == "cosine"
        assert (cfg.batch_size, cfg.val_batch_size, cfg.threshold, cfg.base_width) == (16, 16, 0.999, 64)
        assert cfg.dropout == name.endswith("_dropout")
        widths = re.fullmatch(r"a(\d+)_(\d+)_w(\d+)_(\d+)(_dropout)?", name)
        if widths:
            assert cfg.quantization == "fixed"
            assert (cfg.activation_i_width, cfg.activation_f_width, cfg.weight_i_width, cfg.weight_f_width) == \
                tuple(int(w) for w in widths.groups()[:4])
    assert gm_config("Ternary").activation == "ternarytanh" and gm_config("Ternary").quantization == "ternary"
    assert gm_config("BNN").quantization == "bnn" and gm_config("full_precision").quantization == "normal"
    # a dropout row differs from its twin in dropout and name only
    for name in ("a8_8_w8_8", "a8_0_w0_8", "a6_0_w0_4", "a4_0_w0_2"):
        plain, drop = gm_config(name).to_dict(), gm_config(name + "_dropout").to_dict()
        assert {k for k in plain if plain[k] != drop[k]} == {"dropout", "experiment_name"}
    text = (PROJECT_ROOT / "gm" / "a6_0_w0_4" / "config.yaml").read_text()
    assert re.search(r"fixed_mode: paper +# the authors' GM code ran Eq. 1-4", text)


# --------------------------------------------------------------------------- runs

def test_script_end_to_end_with_its_recipe(tmp_path):
    """The real script (through gm/demo's links) trains one tiny epoch on the phantom."""
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "gmchallenge_unet.py", "-f", "config.yaml", "-q", "-o", "num_epochs=1",
                           "base_width=4", "sites=1", "phantom_subjects=3", "train_subjects=1-2", "val_subjects=3",
                           "crop_size=64", f"log_output_dir={out}", "experiment_name=e2e"],
                          cwd=PROJECT_ROOT / "gm" / "demo", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    log = (out / "e2e" / "log.txt").read_text()
    assert "recipe: Adam lr 0.005, cosine schedule, 1 epochs, batch 4/16, loss dice" in log
    assert "data (phantom): GM phantom (seed 0): 1 site(s) x 3 subjects" in log
    assert "mask values found: 0, 1; target = gray matter (mask == 1)" in log
    table = rows(out / "e2e" / "metrics.csv")
    assert len(table) == 1 and table[0]["data_source"] == "phantom" and int(table[0]["n_slices"]) == 4
    assert int(table[0]["n_empty_gt"]) == 1 and table[0]["dice_nonempty"] != ""
    summary = json.loads((out / "e2e" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["dataset"] == "gm"


def test_tiny_run_is_repeatable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    section = {**TINY, "rater_mode": "each"}
    assert run(a, section) == 0 and run(b, section) == 0
    ra, rb = rows(a / "runs/tiny/metrics.csv"), rows(b / "runs/tiny/metrics.csv")
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "time_s"} == {k: v for k, v in y.items() if k != "time_s"}


def test_sample_loads_and_trains_one_epoch(tmp_path, shared_data):
    section = {**TINY, "data_source": "sample", "crop_size": 200}
    assert run(tmp_path, section) == 0
    table = rows(tmp_path / "runs/tiny/metrics.csv")
    assert table[0]["data_source"] == "sample" and int(table[0]["n_slices"]) == 3
    summary = json.loads((tmp_path / "runs/tiny/summary.json").read_text())
    assert "NOT the paper's protocol" in summary["data_description"]


class FixedDisc(torch.nn.Module):
    """A stand-in network predicting the same disc on every slice."""

    def __init__(self, size, centre, radius):
        super().__init__()
        yy, xx = np.mgrid[:size, :size]
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2
        self.register_buffer("logits", torch.tensor(np.where(disc, 10.0, -10.0), dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), 1, *self.logits.shape)


def test_hausdorff_comes_out_in_mm():
    cfg = validate({**TINY, "resample_mm": 0.25, "crop_size": 96}, extra_fields=GM.FIELDS, dataset="gm")
    val = GM.build_datasets(cfg).val
    model = FixedDisc(96, (50, 46), 8)
    loader = engine.make_loader(val, 4, cfg, torch.device("cpu"), shuffle=False)
    got, _ = engine.evaluate(model, loader, cfg, torch.device("cpu"))
    pred = model.logits.numpy() > 0
    in_mm = [metrics.hausdorff(pred, m, 95, spacing=(0.25, 0.25)) for m in val.masks]
    in_px = [metrics.hausdorff(pred, m, 95) for m in val.masks]
    assert got["hd95"] == pytest.approx(np.nanmean(in_mm)) and np.nanmean(in_mm) == pytest.approx(np.nanmean(in_px) / 4)


def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "data"
    GM_PHANTOM.write_phantom(root, subjects=3, slices=3, sites=[1])
    path = root / "site1-sc02-image.nii.gz"
    path.write_bytes(path.read_bytes()[:300])
    section = {**TINY, "data_source": "real", "data_path": str(root)}
    assert run(tmp_path, section) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "site1-sc02-image.nii.gz: unreadable NIfTI file" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()
