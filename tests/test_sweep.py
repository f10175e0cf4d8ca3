"""The sweep command: three tiny experiment folders, one of them broken."""

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

from unetq import sweep, sweep_runner
from unetq.newexp import create
from unetq.paths import PROJECT_ROOT
from unetq.sweep import main

TINY = {"num_epochs": 1, "base_width": 4, "phantom_images": 4, "val_sections": 2, "overlay_every": 0,
        "batch_size": 2, "val_batch_size": 2}


def make_folders(root):
    suite = root / "em"
    create(suite / "full_precision", PROJECT_ROOT / "EM_BASE", TINY)
    create(suite / "a6_0_w0_4", PROJECT_ROOT / "EM_BASE",
           {**TINY, "quantization": "FIXED", "activation_i_width": 6, "weight_f_width": 4})
    broken = create(suite / "broken", PROJECT_ROOT / "EM_BASE", TINY)
    text = (broken / "config.yaml").read_text().replace("quantization: Normal", "quantization: FIXD")
    (broken / "config.yaml").write_text(text)
    return suite


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep over the three folders with --results: (suite, exit status, stdout, stderr, results dir)."""
    root = tmp_path_factory.mktemp("sweep")
    suite = make_folders(root)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(suite), "--results", str(root / "results")])
    return suite, code, out.getvalue(), err.getvalue(), root / "results"


def test_sweep_runs_continues_past_failure_and_skips_complete(swept, capsys):
    suite, code, out, err, _ = swept
    assert code == 1
    assert "em/full_precision: ok" in out and "em/a6_0_w0_4: ok" in out
    assert "1 of 3 runs failed" in err and "em/broken" in err and "'FIXD' is not allowed" in err
    for name in ("full_precision", "a6_0_w0_4"):
        summary = json.loads((suite / name / "runs" / name / "summary.json").read_text())
        assert summary["status"] == "complete"
    assert main([str(suite), "--only", "a6_*,full*"]) == 0          # complete runs are skipped
    out, _ = capsys.readouterr()
    assert out.count("complete, skipped") == 2 and "0 run(s) done, 2 skipped" in out


def test_sweep_results_table_lists_a_failed_folder_as_no_run(swept):
    _, _, _, err, results = swept
    assert "results table was not built" not in err
    table = (results / "results.md").read_text()
    assert "no run (broken)" in table                                   # the broken folder: a row, no error
    assert "full precision" in table and "a6.0/w0.4" in table
    assert (results / "results.csv").is_file()


def test_sweep_reports_a_results_table_that_fails(swept, monkeypatch, capsys):
    suite, *_ = swept
    monkeypatch.setattr(sweep.subprocess, "call", lambda *a, **k: 2)    # unetq.results exits 2 (no run is due)
    assert main([str(suite), "--only", "full*", "--results", "/nowhere"]) == 1
    assert "the results table was not built (python -m unetq.results: exit 2" in capsys.readouterr().err


def test_changed_settings_are_compared_with_the_run_config(tmp_path):
    folder = create(tmp_path / "em" / "full_precision", PROJECT_ROOT / "EM_BASE", TINY)
    job = sweep.make_job(folder, {})
    assert job.settings["num_epochs"] == 1 and job.settings["loss"] == "bce_dice"    # the EM recipe's loss
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "summary.json").write_text(json.dumps({"status": "complete", "mode": "normal", "num_epochs": 1}))
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump({"UNET": job.settings}))
    irrelevant = {"num_workers": 1, "device": "cpu", "overlay_every": 3}
    assert sweep.changed_settings(sweep.make_job(folder, irrelevant)) == []
    changes = sweep.changed_settings(sweep.make_job(folder, {"num_epochs": 5, "base_width": 8, "lr": 1e-3}))
    assert changes == ["num_epochs 1 -> 5", "base_width 4 -> 8"]
    fixed = {"quantization": "FIXED", "activation_i_width": 6, "weight_f_width": 4, "fixed_mode": "paper"}
    assert sweep.changed_settings(sweep.make_job(folder, fixed)) == [
        "quantization 'normal' -> 'fixed'", "activation_i_width 0 -> 6", "weight_f_width 0 -> 4",
        "fixed_mode 'pow2' -> 'paper'"]
    assert sweep.changed_settings(sweep.make_job(folder, {"quantization": "FIXD"})) == [
        "the config does not validate now"]


def test_a_complete_run_with_other_settings_runs_again(swept, tmp_path, capsys):
    suite, *_ = swept
    # a copy of a complete run (same depth: the experiment's relative script links stay valid)
    folder = tmp_path / "em" / "full_precision"
    shutil.copytree(suite / "full_precision", folder, symlinks=True)
    assert main([str(folder), "-o", "num_epochs=2", "base_width=8", "num_workers=0"]) == 0
    out, _ = capsys.readouterr()
    assert ("em/full_precision: its complete run has other settings (num_epochs 1 -> 2; base_width 4 -> 8): "
            "running again (the earlier run is kept as a backup)") in out
    assert "1 run(s) done, 0 skipped" in out
    runs = folder / "runs"
    backups = [p for p in runs.iterdir() if p.name.startswith("full_precision_backup_")]
    assert len(backups) == 1 and json.loads((backups[0] / "summary.json").read_text())["num_epochs"] == 1
    summary = json.loads((runs / "full_precision" / "summary.json").read_text())
    assert (summary["status"], summary["num_epochs"], summary["base_width"]) == ("complete", 2, 8)
    assert main([str(folder), "-o", "num_epochs=2", "base_width=8", "overlay_every=5"]) == 0
    assert "complete, skipped" in capsys.readouterr().out              # same settings now: skipped


def test_sweep_writes_a_slurm_array_instead_of_running(tmp_path, capsys):
    suite = make_folders(tmp_path)
    script = tmp_path / "job.sh"
    # the same folder given twice is one task
    assert main([str(suite), str(suite / "a6_0_w0_4"), "--only", "a6_*,full*", "--slurm", str(script),
                 "-o", "num_epochs=50", "data_path=/tmp/a b'c"]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "a6_0_w0_4" in text and "full_precision" in text
    assert "broken" not in text and "-o num_epochs=50 'data_path=/tmp/a b'\"'\"'c'" in text
    assert sys.executable in text
    assert not (suite / "a6_0_w0_4" / "runs").exists()
    # run one array task with a stand-in "python" (in a folder with a space) that prints its arguments
    fake = tmp_path / "my bin" / "py"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\npwd\nprintf '[%s]\\n' \"$@\"\n")
    fake.chmod(0o755)
    assert main([str(suite), "--only", "a6_*,full*", "--slurm", str(script), "--python", str(fake),
                 "-o", "num_epochs=50", "data_path=/tmp/a b'c"]) == 0
    task = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"},
                          capture_output=True, text=True, timeout=60)
    assert task.returncode == 0, task.stderr
    lines = task.stdout.splitlines()
    assert lines[0] == str((suite / "full_precision").resolve())
    assert lines[1:] == ["[em_unet.py]", "[-f]", "[config.yaml]", "[-t]", "[UNET]", "[-q]", "[-o]",
                         "[num_epochs=50]", "[data_path=/tmp/a b'c]"]


def test_sweep_refuses_two_folders_writing_one_run_folder(tmp_path, capsys):
    create(tmp_path / "em" / "a6_0_w0_4", PROJECT_ROOT / "EM_BASE", TINY)
    create(tmp_path / "gm" / "a6_0_w0_4", PROJECT_ROOT / "GM_BASE", {"num_epochs": 1})
    shared = tmp_path / "all_runs"
    args = [str(tmp_path / "em"), str(tmp_path / "gm"), "-o", f"log_output_dir={shared}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (f"error: em/a6_0_w0_4 and gm/a6_0_w0_4 would both write to the run folder {shared / 'a6_0_w0_4'}; "
            "give them distinct experiment_name or log_output_dir") in err
    assert main([*args, "--slurm", str(tmp_path / "job.sh")]) == 2     # a job array would collide too
    assert not shared.exists() and not (tmp_path / "job.sh").exists()


def test_gpu_slots_map_into_the_inherited_device_list():
    assert sweep_runner.gpu_ids(2, None) == ["0", "1"]
    assert sweep_runner.gpu_ids(2, "4,5") == ["4", "5"]                       # SLURM gave GPUs 4 and 5
    assert sweep_runner.gpu_ids(2, " GPU-a1, GPU-b2 ,GPU-c3") == ["GPU-a1", "GPU-b2"]
    assert sweep_runner.cpu_threads(16, 4, {}) == "4" and sweep_runner.cpu_threads(2, 4, {}) == "1"
    assert sweep_runner.cpu_threads(16, 1, {}) is None                        # one run at a time: torch's choice
    assert sweep_runner.cpu_threads(16, 4, {"OMP_NUM_THREADS": "3"}) is None  # the user's choice stays


@pytest.mark.parametrize("gpus", [2, 0])
def test_children_get_their_gpu_or_their_share_of_the_cores(gpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_runner, "_gpu_count", lambda: gpus)
    monkeypatch.setattr(sweep_runner, "_cores", lambda: 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = {}

    def fake_call(cmd, job, env, stopper):   # the child's environment, instead of running it
        seen[job.name] = env
        return 0

    monkeypatch.setattr(sweep_runner, "_call", fake_call)
    jobs = [sweep.Job(tmp_path / "em" / n, "em_unet.py", tmp_path / "runs" / n) for n in ("a", "b", "c")]
    assert sweep_runner.run_all(jobs, [], 4, "UNET").failures == []
    if gpus:
        assert {e["CUDA_VISIBLE_DEVICES"] for e in seen.values()} == {"4", "5"}
        assert all(e.get("OMP_NUM_THREADS") != "2" for e in seen.values())
    else:
        assert {e["OMP_NUM_THREADS"] for e in seen.values()} == {"2"}   # 8 cores / 3 runs at a time
        assert "3 runs at a time on the CPU: 2 thread(s) each" in capsys.readouterr().out


def test_sweep_refuses_a_folder_without_experiments(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no experiment folders found" in capsys.readouterr().err
