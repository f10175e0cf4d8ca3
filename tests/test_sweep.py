"""The sweep command: three tiny experiment folders, one of them broken."""

import json

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


def test_sweep_runs_continues_past_failure_and_skips_complete(tmp_path, capsys):
    suite = make_folders(tmp_path)
    assert main([str(suite)]) == 1
    out, err = capsys.readouterr()
    assert "em/full_precision: ok" in out and "em/a6_0_w0_4: ok" in out
    assert "1 of 3 runs failed" in err and "em/broken" in err and "'FIXD' is not allowed" in err
    for name in ("full_precision", "a6_0_w0_4"):
        summary = json.loads((suite / name / "runs" / name / "summary.json").read_text())
        assert summary["status"] == "complete"
    assert main([str(suite), "--only", "a6_*,full*"]) == 0          # complete runs are skipped
    out, _ = capsys.readouterr()
    assert out.count("complete, skipped") == 2 and "0 run(s) done, 2 skipped" in out


def test_sweep_writes_a_slurm_array_instead_of_running(tmp_path, capsys):
    suite = make_folders(tmp_path)
    script = tmp_path / "job.sh"
    assert main([str(suite), "--only", "a6_*,full*", "--slurm", str(script), "-o", "num_epochs=50"]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "a6_0_w0_4" in text and "full_precision" in text
    assert "broken" not in text and "-o 'num_epochs=50'" in text
    assert not (suite / "a6_0_w0_4" / "runs").exists()


def test_sweep_refuses_a_folder_without_experiments(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no experiment folders found" in capsys.readouterr().err
