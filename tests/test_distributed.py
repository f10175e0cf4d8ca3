"""Multi-process training with torchrun on the CPU (gloo), against a single process."""

import csv
import os
import subprocess
import sys

import pytest
import yaml

from unetq import runlock
from unetq.distributed import EpochShuffle, Shard, World
from unetq.paths import PROJECT_ROOT, base_module

EM_SCRIPT = base_module("EM_BASE", "em_unet")

TINY = {"dataset": "em", "num_epochs": 2, "base_width": 4, "phantom_images": 10, "val_sections": 3,
        "batch_size": 4, "val_batch_size": 2, "overlay_every": 0, "lr_schedule": "constant",
        "experiment_name": "x", "threshold": 0.5}
SCRIPT = str(PROJECT_ROOT / "EM_BASE" / "em_unet.py")


def test_ranks_share_each_global_batch_exactly():
    n, global_batch, world = 11, 4, 2
    single = EpochShuffle(n, seed=3)
    single.set_epoch(5)
    ranks = [EpochShuffle(n, seed=3, world=World(r, world)) for r in range(world)]
    for s in ranks:
        s.set_epoch(5)
    order = list(single)
    per_rank = [list(s) for s in ranks]
    assert sorted(sum(per_rank, [])) == sorted(order + order[:1])      # padded by one repeat
    b = global_batch // world
    for k in range(len(order) // global_batch):                        # every full global batch
        union = sorted(sum((r[k * b:(k + 1) * b] for r in per_rank), []))
        assert union == sorted(order[k * global_batch:(k + 1) * global_batch])
    shards = [list(Shard(7, World(r, 3))) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))


def run(folder, section, nproc=1):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"UNET": section}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + [SCRIPT, "-f", "config.yaml", "-q"]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one = run(root / "one", TINY)
    two = run(root / "two", TINY, nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    return root


def test_torchrun_writes_exactly_one_set_of_outputs(two_runs):
    runs = two_runs / "two" / "runs"
    # no second run folder, no backup; the run-folder lock file (kept: see unetq/runlock.py) is the only other entry
    assert sorted(p.name for p in runs.iterdir()) == [".x.lock", "x"]
    log = (runs / "x" / "log.txt").read_text()
    assert log.count("=== x | mode normal") == 1 and "x 2 processes (torchrun)" in log
    assert [int(r["epoch"]) for r in rows(runs / "x" / "metrics.csv")] == [1, 2]
    assert {"best.pt", "last.pt", "summary.json", "curves.png"} <= {p.name for p in (runs / "x").iterdir()}


def test_two_processes_match_one_within_tolerance(two_runs):
    """Same global batch and data order. What differs: BatchNorm statistics over each rank's half
    batch (no SyncBatchNorm on the CPU) and the batch Dice term, computed per rank. Documented
    tolerance after 2 epochs: training loss within 2 %, Dice@0.5 within 3 points."""
    one = rows(two_runs / "one/runs/x/metrics.csv")
    two = rows(two_runs / "two/runs/x/metrics.csv")
    for a, b in zip(one, two):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) <= 0.02 * float(a["train_loss"])
        assert abs(float(a["dice_05"]) - float(b["dice_05"])) <= 3.0
        assert a["n_slices"] == b["n_slices"] == "3"


def test_sharded_evaluation_equals_single_process_exactly(two_runs):
    best = str(two_runs / "one/runs/x/best.pt")
    section = {**TINY, "operation_mode": "inference", "trained_model": best}
    assert run(two_runs / "inf1", section).returncode == 0
    result = run(two_runs / "inf2", section, nproc=2)
    assert result.returncode == 0, result.stderr
    a, b = (rows(next((two_runs / f / "runs/x").glob("inference_*")) / "metrics.csv")[0] for f in ("inf1", "inf2"))
    for key in ("dice", "dice_05", "precision", "recall", "hd95", "rand_index", "n_slices"):
        assert a[key] == b[key], key             # per-slice metrics: identical
    # the loss is a batch Dice over each batch: sharding regroups the slices into other batches
    assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-3)


def test_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    result = run(tmp_path, {**TINY, "batch_size": 5}, nproc=2)
    assert result.returncode != 0
    assert "key 'batch_size': 5 cannot be shared evenly by 2 processes" in result.stderr
    assert not (tmp_path / "runs").exists()


def torchrun_error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", ["unwritable output", "sync_bn on the cpu"])
def test_every_rank_stops_with_the_same_line(case, tmp_path):
    """Rank 0 alone checks the output folder: when that fails, rank 1 (waiting for the folder) gets
    the reason and stops with the same line, not with a traceback from the broadcast. A refused
    setting (sync_bn without CUDA) stops both ranks before they join."""
    (tmp_path / "afile").write_text("not a folder")
    keys = {"log_output_dir": "afile"} if case == "unwritable output" else {"sync_bn": True}
    result = run(tmp_path, {**TINY, "num_epochs": 1, **keys}, nproc=2)
    assert result.returncode != 0
    # torchrun stops the other process as soon as one exits with an error, so the slower rank may be
    # stopped (SIGTERM, or an "interrupted" line) before it prints: every reason printed is the same line
    lines = [line for line in torchrun_error_lines(result) if not line.startswith("error: interrupted")]
    expected = ("cannot create the output folder (afile is a file); set log_output_dir to a folder"
                if case == "unwritable output" else "key 'sync_bn': SyncBatchNorm needs a CUDA device")
    assert 1 <= len(lines) <= 2 and len(set(lines)) == 1 and expected in lines[0], result.stderr
    assert "[rank1]" not in result.stderr and "broadcast" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "config.yaml"]   # nothing written
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_a_held_run_folder_stops_every_rank_without_a_hang(tmp_path):
    """Rank 0 alone takes the run folder's lock, without waiting (docs/running.md, "Reliability"): when
    another process holds it, the other rank gets rank 0's line through the folder broadcast and stops
    too; no rank waits on the lock."""
    with runlock.acquire(tmp_path / "runs" / "x", "normal"):
        result = run(tmp_path, {**TINY, "num_epochs": 1}, nproc=2)
    assert result.returncode != 0
    lines = [line for line in torchrun_error_lines(result) if not line.startswith("error: interrupted")]
    assert 1 <= len(lines) <= 2 and len(set(lines)) == 1 and "in use by another process" in lines[0], result.stderr
    assert f"pid {os.getpid()}" in lines[0] and "[rank1]" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".x.lock"]     # nothing written


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_sync_bn_is_refused_when_the_run_is_not_on_cuda(device, tmp_path, monkeypatch, capsys):
    """The run's device decides, not the machine: device cpu on a GPU machine (faked here) is refused
    too, with one line, before anything is written, even for a single process."""
    import torch

    if device == "cpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    elif torch.cuda.is_available():
        pytest.skip("a CUDA machine: device auto runs on the GPU")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"UNET": {**TINY, "sync_bn": True, "device": device}}))
    assert EM_SCRIPT.main(["-f", str(tmp_path / "config.yaml"), "-q"]) == 2
    err = capsys.readouterr().err
    why = "device: cpu" if device == "cpu" else "device: auto, and no usable CUDA GPU was found"
    assert err == (f"error: {tmp_path / 'config.yaml'}: key 'sync_bn': SyncBatchNorm needs a CUDA device, but "
                   f"this run's device is cpu ({why}); set sync_bn: false to train on the CPU\n")
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("base, script, section", [
    ("GM_BASE", "gmchallenge_unet.py", {"dataset": "gm", "sites": "1", "phantom_slices": 4, "crop_size": 32,
                                        "resample_mm": 0, "train_subjects": "1-2", "val_subjects": "9"}),
    ("NIH_BASE", "nih_unet.py", {"dataset": "nih", "phantom_patients": 4, "crop_height": 32, "crop_width": 48}),
])
def test_torchrun_runs_the_gm_and_nih_scripts_too(tmp_path, base, script, section):
    cfg = {**section, "num_epochs": 1, "base_width": 4, "batch_size": 2, "val_batch_size": 2, "overlay_every": 0,
           "experiment_name": "x", "threshold": 0.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"UNET": cfg}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(PROJECT_ROOT / base / script), "-f", "config.yaml", "-q"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".x.lock", "x"]
    assert len(rows(tmp_path / "runs/x/metrics.csv")) == 1 and "x 2 processes" in (tmp_path / "runs/x/log.txt").read_text()
