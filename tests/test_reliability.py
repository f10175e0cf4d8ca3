"""Reliability: interrupted runs resume, checkpoints survive a kill, non-finite values stop the run
without harming the last good checkpoint, untrusted files are refused, runs repeat exactly."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from unetq import checkpoint
from unetq.paths import PROJECT_ROOT, base_module

EM_SCRIPT = base_module("EM_BASE", "em_unet")

EM = base_module("EM_BASE")
TINY = {"dataset": "em", "num_epochs": 2, "base_width": 4, "phantom_images": 6, "val_sections": 2,
        "batch_size": 2, "val_batch_size": 2, "quantization": "FIXED", "activation_i_width": 4,
        "activation_f_width": 4, "weight_f_width": 4, "overlay_every": 0, "experiment_name": "r",
        "lr_schedule": "constant", "loss": "bce_dice", "fixed_mode": "pow2"}   # what em_unet.py's recipe sets: a resume must match


def write(folder, section):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": section}))
    return path


def run(folder, section, capsys=None, overrides=()):
    argv = ["-f", str(write(folder, section)), "-q"] + (["-o", *overrides] if overrides else [])
    code = EM_SCRIPT.main(argv)
    err = capsys.readouterr().err if capsys else ""
    return code, err


def metrics_without_time(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(fh)]


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    for name in ("one", "two"):
        assert run(tmp_path / name, {**TINY, "dropout": True})[0] == 0
    one, two = (metrics_without_time(tmp_path / n / "runs/r/metrics.csv") for n in ("one", "two"))
    assert one == two and len(one) == 2


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path):
    section = {**TINY, "num_epochs": 40, "phantom_images": 12}
    path = write(tmp_path, section)
    script = PROJECT_ROOT / "EM_BASE" / "em_unet.py"
    proc = subprocess.Popen([sys.executable, str(script), "-f", str(path), "-q"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    summary = tmp_path / "runs/r/summary.json"
    deadline = time.time() + 300      # a busy machine can take minutes to start torch
    while time.time() < deadline:
        if summary.exists() and json.loads(summary.read_text()).get("epochs_done", 0) >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "SIGTERM" in err and "operation_mode: resume" in err
    state = json.loads(summary.read_text())
    assert state["status"] == "interrupted"
    done = checkpoint.load(tmp_path / "runs/r/last.pt")["epoch"]
    assert done >= 1
    # resume to one more epoch than was completed (a resume keeps the run's length unless -o changes it)
    code, _ = run(tmp_path, {**section, "operation_mode": "resume"}, overrides=[f"num_epochs={done + 1}"])
    assert code == 0
    assert checkpoint.load(tmp_path / "runs/r/last.pt")["epoch"] == done + 1
    epochs = [int(r["epoch"]) for r in metrics_without_time(tmp_path / "runs/r/metrics.csv")]
    assert epochs == list(range(1, done + 2))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, target)

    def broken_save(obj, fh):
        fh.write(b"partial garbage")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save({"model": {"w": torch.zeros(3)}}, target)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(target)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]        # no temporary file left behind


def test_a_process_killed_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    target = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, target)
    code = ("import torch, sys; from unetq import checkpoint\n"
            "big = {'model': {f'w{i}': torch.randn(1_000_000) for i in range(40)}}\n"
            "print('go', flush=True)\n"
            f"checkpoint.save(big, {str(target)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    time.sleep(0.05)
    proc.kill()
    proc.wait()
    loaded = checkpoint.load(target)         # the old one or, if the write finished, the new one
    assert "w" in loaded["model"] or "w0" in loaded["model"]


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path, capsys, monkeypatch):
    real = EM_SCRIPT.build_loss

    def poisoned(name, legacy=False):
        loss = real(name, legacy)
        calls = {"n": 0}

        def wrapped(logits, target):
            calls["n"] += 1
            value = loss(logits, target)
            return value * float("nan") if calls["n"] == 5 else value    # 2 train + 1 val call per epoch: epoch 2, batch 2
        return wrapped

    monkeypatch.setattr(EM_SCRIPT, "build_loss", poisoned)
    code, err = run(tmp_path, {**TINY, "num_epochs": 3}, capsys)
    assert code == 2
    assert "epoch 2" in err and "non-finite training loss at batch 2" in err and "Traceback" not in err
    last = checkpoint.load(tmp_path / "runs/r/last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert json.loads((tmp_path / "runs/r/summary.json").read_text())["status"] == "failed"


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_carrying_code_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, evil)
    code, err = run(tmp_path / "exp", {**TINY, "operation_mode": "inference", "trained_model": str(evil)}, capsys)
    assert code == 2 and "refused" in err and "could run code" in err
    assert not (tmp_path / "exp" / "pwned.txt").exists() and not (tmp_path / "pwned.txt").exists()
    assert not (tmp_path / "exp" / "runs").exists()


def test_a_checkpoint_of_another_architecture_says_what_differs(tmp_path, capsys):
    assert run(tmp_path / "w4", TINY)[0] == 0
    code, err = run(tmp_path / "w8", {**TINY, "base_width": 8, "operation_mode": "inference",
                                      "trained_model": str(tmp_path / "w4/runs/r/best.pt")}, capsys)
    assert code == 2 and "does not fit this model" in err and "base_width: checkpoint 4, config 8" in err
    assert not (tmp_path / "w8" / "runs").exists()


def test_unwritable_output_or_full_disk_fails_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run(tmp_path / "a", {**TINY, "log_output_dir": str(blocker / "runs")}, capsys)
    assert code == 2 and "is a file" in err
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    code, err = run(tmp_path / "b", TINY, capsys)
    assert code == 2 and "only 1 MB free" in err
    assert not (tmp_path / "b" / "runs").exists()


def test_resume_of_a_retrain_run_continues_its_own_last_checkpoint(tmp_path, capsys, monkeypatch):
    import unetq.session as session

    assert run(tmp_path / "src", {**TINY, "num_epochs": 3, "experiment_name": "src"})[0] == 0   # a 3-epoch source
    source = str(tmp_path / "src/runs/src/last.pt")
    retrain = {**TINY, "num_epochs": 3, "operation_mode": "retrain", "trained_model": source}
    real = session.save_epoch

    def stop_at_epoch_2(run_, epoch, *args):
        if epoch == 2:       # after epoch 2's metrics row, before its last.pt: the window an interrupt can hit
            raise KeyboardInterrupt
        return real(run_, epoch, *args)

    monkeypatch.setattr(session, "save_epoch", stop_at_epoch_2)
    code, err = run(tmp_path / "exp", retrain, capsys)
    assert code == 130 and "last.pt holds epoch 1" in err
    monkeypatch.undo()
    # trained_model still names the 3-epoch source: resume must take the run's own last.pt (epoch 1)
    code, err = run(tmp_path / "exp", {**retrain, "operation_mode": "resume"}, capsys)
    assert code == 0, err
    assert checkpoint.load(tmp_path / "exp/runs/r/last.pt")["epoch"] == 3
    epochs = [int(r["epoch"]) for r in metrics_without_time(tmp_path / "exp/runs/r/metrics.csv")]
    assert epochs == [1, 2, 3]
    assert "continuing after epoch 1" in (tmp_path / "exp/runs/r/log.txt").read_text()


def test_resume_refuses_a_changed_config_and_a_tampered_checkpoint(tmp_path, capsys):
    assert run(tmp_path, TINY)[0] == 0
    last = tmp_path / "runs/r/last.pt"
    code, err = run(tmp_path, {**TINY, "operation_mode": "resume", "num_epochs": 3, "lr": 0.5}, capsys)
    assert code == 2 and "resume must continue the run" in err and "lr: run 0.001, now 0.5" in err
    before = (tmp_path / "runs/r/metrics.csv").read_text()
    ckpt = torch.load(last, weights_only=True)
    for key, bad in (("epoch", "abc"), ("optimizer", None), ("rng", {"torch": torch.zeros(3)})):
        checkpoint.save({**ckpt, key: bad}, last)
        code, err = run(tmp_path, {**TINY, "operation_mode": "resume", "num_epochs": 3}, capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert str(last) in err and ("resumable" in err or "does not fit" in err)
    assert (tmp_path / "runs/r/metrics.csv").read_text() == before       # nothing was trained or trimmed


def test_non_finite_and_non_checkpoint_files_are_refused_in_words(tmp_path, capsys):
    assert run(tmp_path / "a", TINY)[0] == 0
    ckpt = checkpoint.load(tmp_path / "a/runs/r/best.pt")
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    checkpoint.save(ckpt, tmp_path / "nan.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    for bad, words in (("nan.pt", "non-finite values"), ("text.pt", "PyTorch checkpoint")):
        code, err = run(tmp_path / bad[:3], {**TINY, "operation_mode": "inference",
                                             "trained_model": str(tmp_path / bad)}, capsys)
        assert code == 2 and words in err and "could run code" not in err, err
        assert not (tmp_path / bad[:3] / "runs").exists()


@pytest.mark.parametrize("name", ["..", "../outside", "a/b", "."])
def test_experiment_name_cannot_leave_the_run_folder(tmp_path, capsys, name):
    code, err = run(tmp_path / "exp", {**TINY, "experiment_name": name}, capsys)
    assert code == 2 and "experiment_name" in err and "plain folder name" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yaml", "exp"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # the drop is the point
def test_a_stop_lost_in_a_finalizer_still_stops_the_loop():
    """A signal whose exception fires inside a finalizer (garbage collection of a matplotlib figure,
    say) is dropped by Python ("Exception ignored in ..."); the loop's check_stop raises it again."""
    from unetq.session import Interrupted, check_stop, interrupts_from_signals

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)     # the handler runs here; its exception is ignored

    with interrupts_from_signals():
        check_stop()                                 # nothing received yet: no stop
        obj = Finalized()
        del obj
        with pytest.raises(Interrupted, match="received SIGTERM"):
            check_stop()
    check_stop()                                     # outside a run the record is cleared
