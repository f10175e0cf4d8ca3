"""Fault injection with real processes (issue 17): two runs on one folder, a stopped sweep, signals at
chosen moments of a resume and of a shutdown, a run folder that would swallow its experiment folder.
See tests/faults.py for how a child gets its signal at a chosen moment."""

import csv
import signal
import subprocess
import sys
import time

import pytest

from faults import child_env, experiment, kill, one_line, run, start, summary, wait_for
from unetq import checkpoint, runlock
from unetq.sweep import main as sweep_main


def epochs_in(path):
    with open(path, newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_a_live_run_folder_is_never_shared_and_a_killed_run_never_blocks(tmp_path):
    folder = experiment(tmp_path, num_epochs=10000)
    runs, run_dir = folder / "runs", folder / "runs" / "x"
    first = start(folder)
    try:
        wait_for(lambda: (run_dir / "last.pt").is_file(), what="the first run's epoch 1")
        code, err = run(folder, "num_epochs=1")         # the same experiment again, while the first trains
        line = one_line(err)
        assert code == 2 and f"pid {first.pid}, mode normal" in line and "in use by another process" in line, line
        assert sorted(p.name for p in runs.iterdir()) == [".x.lock", "x"]          # nothing was moved aside
        assert first.poll() is None                                                # the first run goes on
        epochs = epochs_in(run_dir / "metrics.csv")
        assert epochs == list(range(1, len(epochs) + 1))                           # one run's rows, in order
    finally:
        kill(first)                                    # kill -9: the kernel drops its lock with the process
    code, err = run(folder, "num_epochs=1")
    assert code == 0, err
    backups = [p for p in runs.iterdir() if p.name.startswith("x_backup_")]
    assert len(backups) == 1 and summary(backups[0])["status"] == "running"      # the killed run, kept
    assert summary(run_dir)["status"] == "complete" and epochs_in(run_dir / "metrics.csv") == [1]


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)], ids=["SIGTERM", "Ctrl-C twice"])
def test_a_stopped_sweep_stops_its_run_and_starts_nothing_else(tmp_path, signals):
    long = experiment(tmp_path, "a_long", num_epochs=10000)
    for name in ("b", "c"):
        experiment(tmp_path, name, num_epochs=1)
    sweep = subprocess.Popen([sys.executable, "-m", "unetq.sweep", str(tmp_path / "em")], env=child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = long / "runs" / "a_long"
    try:
        wait_for(lambda: (run_dir / "summary.json").is_file() and summary(run_dir).get("epochs_done", 0) >= 1,
                 timeout=600, what="the sweep's first run to complete an epoch")
        for sig in signals:
            sweep.send_signal(sig)
            time.sleep(0.3)
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:        # a failed wait: stop the sweep as a user would, so no run is orphaned
            sweep.send_signal(signal.SIGTERM)
            try:
                sweep.communicate(timeout=300)
            finally:
                kill(sweep)
    assert sweep.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "finished: none" in err and "interrupted: em/a_long" in err and "never started: em/b, em/c" in err
    state = summary(run_dir)
    assert state["status"] == "interrupted" and state["epochs_done"] >= 1
    assert "operation_mode: resume" in (run_dir.parent / "sweep_a_long.log").read_text()
    runlock.acquire(run_dir, "test").release()           # no child is left holding the run folder
    assert not (tmp_path / "em" / "b" / "runs" / "b").exists() and not (tmp_path / "em" / "c" / "runs" / "c").exists()


def test_a_resume_stopped_while_it_rewrites_metrics_loses_no_row(tmp_path):
    folder = experiment(tmp_path, num_epochs=2)
    run_dir = folder / "runs" / "x"
    assert run(folder)[0] == 0
    before = (run_dir / "metrics.csv").read_bytes()
    # kill -9 just as the resume starts rewriting metrics.csv, then the documented SIGTERM at that moment
    code, _ = run(folder, "operation_mode=resume", "num_epochs=3", signals="SIGKILL=metrics.csv")
    assert code == -signal.SIGKILL
    assert (run_dir / "metrics.csv").read_bytes() == before
    code, err = run(folder, "operation_mode=resume", "num_epochs=3", signals="SIGTERM=metrics.csv")
    assert code == 130 and "last.pt holds epoch 2" in one_line(err), err
    assert (run_dir / "metrics.csv").read_bytes() == before
    leftover = run_dir / ".metrics.csv.k9x2.tmp"      # what a kill after the temporary file's creation leaves
    leftover.write_text("epoch,half a row")
    code, err = run(folder, "operation_mode=resume", "num_epochs=3")
    assert code == 0, err
    assert epochs_in(run_dir / "metrics.csv") == [1, 2, 3]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]     # leftovers cleaned at start
    assert "removed 1 temporary file(s) a stopped write had left" in (run_dir / "log.txt").read_text()


def test_an_early_stop_of_a_resume_says_where_the_run_is(tmp_path):
    folder = experiment(tmp_path, num_epochs=3)
    run_dir = folder / "runs" / "x"
    assert run(folder, "num_epochs=2")[0] == 0
    code, err = run(folder, "operation_mode=resume", "num_epochs=3", signals="SIGTERM=log.txt")  # in its header
    line = one_line(err)
    assert code == 130 and "last.pt holds epoch 2: continue with operation_mode: resume" in line, line
    state = summary(run_dir)
    assert (state["status"], state["epochs_done"]) == ("interrupted", 2)
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_second_signal_during_shutdown_does_not_break_it(tmp_path, sig):
    folder = experiment(tmp_path, num_epochs=5)
    # the first signal while epoch 1's curves are drawn (last.pt holds epoch 1), the second while the
    # stop is being recorded
    code, err = run(folder, signals=f"{sig}=curves.png,{sig}=summary.json")
    line = one_line(err)
    assert code == 130 and line.startswith("error: interrupted") and "last.pt holds epoch 1" in line, err
    assert summary(folder / "runs" / "x")["status"] == "interrupted"


def test_a_run_folder_that_is_the_experiment_folder_is_refused(tmp_path, capsys):
    folder = experiment(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    code, err = run(folder, "log_output_dir=..")        # runs/../x = the experiment folder itself
    line = one_line(err)
    assert code == 2 and "key 'log_output_dir'" in line and "is the experiment folder" in line, line
    # the same through the sweep: that folder fails, listed; the experiment folder stays as it was
    assert sweep_main([str(folder), "-o", "log_output_dir=.."]) == 1
    assert "is the experiment folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not [p for p in (tmp_path / "em").iterdir() if "backup" in p.name]
