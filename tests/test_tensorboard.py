"""TensorBoard events of a tiny EM phantom run read back: the same numbers as metrics.csv, overlay
images when overlays are drawn, weight histograms; the key off, and the package missing."""

import csv
import math
import subprocess
import sys

import pytest
import yaml

from unetq.paths import PROJECT_ROOT, base_module
from unetq.tensorboard_log import open_writer, scalar_name

EM_SCRIPT = base_module("EM_BASE", "em_unet")

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

EM = base_module("EM_BASE")
TINY = {"dataset": "em", "num_epochs": 2, "base_width": 4, "phantom_images": 6, "val_sections": 2,
        "batch_size": 2, "val_batch_size": 2, "quantization": "FIXED", "activation_i_width": 6,
        "weight_f_width": 4, "fixed_mode": "saturating", "overlay_every": 2, "experiment_name": "tb",
        "threshold": 0.5}


def _run(folder, **keys):
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": {**TINY, **keys}}))
    assert EM_SCRIPT.main(["-f", str(path), "-q"]) == 0
    return folder / "runs" / "tb"


def test_events_hold_the_metrics_csv_numbers_images_and_histograms(tmp_path):
    out = _run(tmp_path)
    assert list(out.glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    with open(out / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    compared = 0
    for key in table[0]:
        tag = scalar_name(key)
        if tag is None:
            continue
        events = {e.step: e.value for e in acc.Scalars(tag)}
        for row in table:
            want, got = float(row[key]), events[int(row["epoch"])]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=5e-6, abs=1e-9), key   # the CSV keeps 6 digits
            compared += 1
    assert {"train/loss", "val/loss", "val/dice", "val/hd95", "lr"} <= set(tags["scalars"]) and compared >= 40
    assert [e.step for e in acc.Images("overlays")] == [2]                  # overlay_every 2 of 2 epochs
    assert acc.Images("overlays")[0].width > 100
    assert "weights/enc2.conv1/float" in tags["histograms"] and len(
        [t for t in tags["histograms"] if t.endswith("/quantized")]) == 12
    quantized = acc.Histograms("weights/enc2.conv1/quantized")[-1].histogram_value
    assert quantized.min >= -15 / 16 and quantized.max <= 15 / 16           # Q0.4 saturating weights


def test_key_off_writes_no_events(tmp_path):
    board = open_writer(False, tmp_path, True, print)
    board.epoch({"train_loss": 1.0}, None, 1)
    board.close()
    assert board.writer is None and not list(tmp_path.iterdir())


def test_a_run_without_tensorboard_says_what_to_install_and_goes_on(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": {**TINY, "num_epochs": 1}}))
    code = ("import sys; sys.modules['torch.utils.tensorboard'] = None; sys.modules['onnx'] = None\n"
            "from unetq.paths import base_module\n"
            f"sys.exit(base_module('EM_BASE', 'em_unet').main(['-f', {str(path)!r}, '-q']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "runs" / "tb" / "log.txt").read_text()
    notes = [line for line in log.splitlines() if line.startswith("note: tensorboard")]
    assert len(notes) == 1 and "pip install tensorboard" in notes[0]
    assert (tmp_path / "runs" / "tb" / "best.pt").is_file()
