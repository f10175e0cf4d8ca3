"""The one-command paper protocol (unetq.paper_protocol): its tiny protocol end to end on the CPU (real
runs of the EM phantom, then the table), the noise-band-only plan, and bad input."""

import csv
import json

import pytest

from unetq import paper_protocol


def test_tiny_protocol_runs_the_table_and_the_noise_band_then_builds_the_table(tmp_path, capsys):
    out = tmp_path / "runs"
    code = paper_protocol.main(["--protocol", "tiny", "--rows", "full_precision,a6_0_w0_4", "--seeds", "0",
                                "--jobs", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = printed.splitlines()
    assert lines[0].startswith("[paper_protocol] time estimate, from 2 model(s) measured on cpu")
    # the exact commands, in the table's order, each with the protocol's overrides
    commands = [line for line in lines if "em_unet.py -f config.yaml -t UNET -q -o" in line]
    assert len(commands) == 4 and "/em/full_precision &&" in commands[0] and "/em/a6_0_w0_4 &&" in commands[1]
    assert all("base_width=4" in c and "data_source=phantom" in c for c in commands)
    assert "num_epochs=1" in commands[0] and "num_epochs=2 seed=0" in commands[2]
    for run in ("em_w4_e1/full_precision", "em_w4_e1/a6_0_w0_4", "em_w4_e2_seeds/seed0/full_precision",
                "em_w4_e2_seeds/seed0/a6_0_w0_4"):
        summary = json.loads((out / run / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["base_width"] == 4, run
    with open(out / "table/headline.csv", newline="") as fh:
        rows = {(r["setting"], r["n"]) for r in csv.DictReader(fh)}
    # the table rows (1 epoch) and the noise-band rows (2 epochs) are different settings of the same rows
    assert ("full precision", "1") in rows and ("a6.0/w0.4", "1") in rows and len(rows) == 4
    assert "| a6.0/w0.4 |" in (out / "table/results.md").read_text()


def test_noise_band_only_plans_the_seeds_and_runs_nothing_on_a_dry_run(tmp_path, capsys):
    isbi = tmp_path / "isbi"
    isbi.mkdir()
    out = tmp_path / "runs"
    assert paper_protocol.main(["--noise-band-only", "--em-data", str(isbi), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    commands = [line for line in printed.splitlines() if "em_unet.py" in line]
    assert len(commands) == 10
    for seed in range(5):
        mine = [c for c in commands if f" seed={seed} " in c]
        assert len(mine) == 2 and all(f"em_w16_e100_seeds/seed{seed}" in c for c in mine)
    assert all("base_width=16 num_epochs=100" in c and f"data_path={isbi}" in c for c in commands)
    assert "w64" not in printed and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--rows", "full_precision,nope"], "--rows: no em/ experiment folder nope; allowed: full_precision,"),
    (["--gm-data", "/no/such/gm"], "--gm-data /no/such/gm: no such file or folder"),
    (["--seeds", "4-x"], "--seeds '4-x': give a range (0-4) or a list (0,2,3) of seeds >= 0"),
    (["--em-data", "/no/such/isbi"], "--em-data /no/such/isbi: no such file or folder"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert paper_protocol.main([*argv, "--protocol", "tiny", "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
    assert not (tmp_path / "o").exists()
