"""The results table on run folders made here: real-protocol, phantom, running and missing runs, two
datasets, one real tiny training (for the overlay figure); the README section it regenerates."""

import csv

import pytest
import yaml

from unetq import results
from unetq.cli import run_script
from unetq.paths import base_module
from unetq.runlog import RunLog

EM = base_module("EM_BASE")
A6W04 = dict(quantization="FIXED", activation_i_width=6, weight_f_width=4)


def metric_row(epoch, dice, dice_05, hd95, source):
    return {"epoch": epoch, "time_s": 1.0, "lr": 1e-3, "train_loss": 0.5, "dice": dice, "precision": 90.0,
            "recall": 80.0, "specificity": 99.0, "iou": 70.0, "accuracy": 95.0, "rand_index": 90.0, "hd": 20.0,
            "hd95": hd95, "dice_nonempty": dice, "n_slices": 5, "n_empty_gt": 0, "n_empty_pred": 0,
            "n_hd_undefined": 0, "dice_05": dice_05, "val_loss": 0.3, "data_source": source}


def write_run(folder, config, epochs, status="complete", planned=None):
    """A run folder written through RunLog, as the engine writes it: config.yaml, metrics.csv, summary.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"UNET": config}))
    log = RunLog(folder, echo=False)
    for e, (dice, d05, hd95) in enumerate(epochs, start=1):
        log.metrics_row(metric_row(e, dice, d05, hd95, config["data_source"]))
    log.update_summary(status=status, dataset=config["dataset"], experiment_name=config["experiment_name"],
                       data_source=config["data_source"], num_epochs=config["num_epochs"],
                       base_width=config.get("base_width", 64), threshold=0.999,
                       epochs_done=planned or len(epochs))


def experiment(folder, **keys):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"UNET": keys}))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # EM: a paper-protocol full-precision run (fabricated numbers), a phantom a6.0/w0.4 run, a running
    # paper-mode run, an experiment with no run at all
    experiment(root / "em/full_precision", dataset="em", experiment_name="full_precision")
    write_run(root / "em/full_precision/runs/full_precision",
              dict(dataset="em", experiment_name="full_precision", quantization="normal", data_source="real",
                   num_epochs=200, base_width=64, fixed_mode="pow2"),
              [(80.0, 86.0, 14.0), (85.5, 87.0, 12.5), (84.0, 88.25, 11.0)], planned=200)
    write_run(root / "em/a6_0_w0_4/runs/a6_0_w0_4",
              dict(dataset="em", experiment_name="a6_0_w0_4", data_source="phantom", num_epochs=2, base_width=4,
                   fixed_mode="pow2", **A6W04), [(83.3, 90.0, 5.0), (10.0, 91.0, 7.0)])
    write_run(root / "em/a6_0_w0_4_paper/runs/a6_0_w0_4_paper",
              dict(dataset="em", experiment_name="a6_0_w0_4_paper", data_source="sample", num_epochs=50,
                   base_width=4, fixed_mode="paper", **A6W04), [(70.0, 75.0, 9.0)], status="running")
    experiment(root / "em/BNN", dataset="em", experiment_name="BNN", quantization="BNN", base_width=4)
    # GM: its own full-precision reference and a paper-mode a6.0/w0.4 (GM's usual mode: same row as EM's pow2)
    write_run(root / "gm/full_precision", dict(dataset="gm", experiment_name="full_precision", quantization="normal",
                                               data_source="phantom", num_epochs=3, base_width=4), [(60.0, 61.0, 3.0)])
    write_run(root / "gm/a6_0_w0_4", dict(dataset="gm", experiment_name="a6_0_w0_4", data_source="phantom",
                                          num_epochs=3, base_width=4, fixed_mode="paper", **A6W04), [(59.5, 60.0, 4.0)])
    # a real one-epoch training (saturating mode: its own row in EM) for the overlay figure
    tiny = root / "tiny"
    tiny.mkdir()
    (tiny / "config.yaml").write_text(yaml.safe_dump({"UNET": dict(
        dataset="em", num_epochs=1, base_width=4, phantom_images=4, val_sections=2, batch_size=2, val_batch_size=2,
        experiment_name="sat", fixed_mode="saturating", threshold=0.5, **A6W04)}))
    assert run_script("em", EM, {}, ["-f", str(tiny / "config.yaml"), "-q"]) == 0
    out = root / "out"
    readme = root / "README.md"
    readme.write_text(f"# title\n\nbefore\n{results.README_BEGIN}\nold table\n{results.README_END}\nafter\n")
    code = results.main([str(root / "em"), str(root / "gm"), str(tiny), "--out", str(out), "--latex",
                         "--readme", str(readme), "--overlays", str(tiny / "runs/sat"), "--slices", "2"])
    assert code == 0
    with open(out / "results.csv", newline="") as fh:
        table = {r["setting"]: r for r in csv.DictReader(fh)}
    return root, out, table


def test_best_dice_epoch_and_hd95_come_from_metrics(tree):
    _, _, t = tree
    fp = t["full precision"]
    assert (fp["em_dice"], fp["em_dice_epoch"], fp["em_threshold"]) == ("85.5", "2", "0.999")
    assert (fp["em_dice05"], fp["em_dice05_epoch"], fp["em_hd95"], fp["em_hd95_unit"]) == ("88.25", "3", "12.5", "px")
    assert (fp["em_paper_protocol"], fp["em_epochs_done"], fp["em_delta"]) == ("yes", "200", "0.0")


def test_delta_is_against_the_same_datasets_full_precision_row(tree):
    _, _, t = tree
    row = t["a6.0/w0.4"]
    assert float(row["em_delta"]) == pytest.approx(83.3 - 85.5) and row["em_delta_same_protocol"] == "no"
    assert float(row["gm_delta"]) == pytest.approx(59.5 - 60.0) and row["gm_delta_same_protocol"] == "yes"
    assert row["em_weights"] == "Q0.4 (pow2)" and row["gm_weights"] == "Q0.4 (paper)"


def test_bits_and_memory_per_count(tree):
    _, _, t = tree
    gm = t["a6.0/w0.4"]
    assert (gm["gm_w_bits_paper"], gm["gm_w_bits_honest"], gm["gm_w_bits_exact"]) == ("4", "5", "6")
    assert (gm["gm_a_bits_paper"], gm["gm_a_bits_honest"], gm["gm_a_bits_exact"]) == ("6", "7", "7")
    assert float(gm["gm_mem_paper_mib"]) < float(gm["gm_mem_honest_mib"]) < float(gm["gm_mem_exact_mib"])
    assert t["a6.0/w0.4"]["em_w_bits_exact"] == ""               # pow2 without a checkpoint: not guessed
    sat = t["a6.0/w0.4 [saturating]"]                            # the real run: exact = sign-magnitude
    assert sat["em_w_bits_exact"] == sat["em_w_bits_honest"] == "5"


def test_missing_running_and_phantom_runs_are_visible(tree):
    _, out, t = tree
    assert t["BNN"]["em_status"] == "no run" and t["BNN"]["em_dice"] == ""
    assert t["a6.0/w0.4 [paper]"]["em_status"] == "running"
    compact = (out / "results.md").read_text().split("\n\n")[1]          # the paper-style table
    line = {r.split(" | ")[0].strip("| "): r for r in compact.splitlines()}
    assert "85.50 (2) |" in line["full precision"] and "†" not in line["full precision"].split(" | ")[3]
    assert "83.30 (1) †" in line["a6.0/w0.4"] and "phantom · 2/2 ep · w4" in line["a6.0/w0.4"]
    assert "-2.20 ‡" in line["a6.0/w0.4"]
    assert "running" in line["a6.0/w0.4 [paper]"] and "no run (BNN)" in line["BNN"]
    labels = [r.split(" | ")[0].strip("| ") for r in compact.splitlines()[2:]]
    assert labels[0] == "full precision" and labels.index("a6.0/w0.4") < labels.index("BNN")


def test_figures_latex_and_readme(tree):
    root, out, _ = tree
    for name in ("results.md", "results.csv", "results.tex", "dice_vs_bits.png", "curves_em.png", "curves_gm.png",
                 "overlays.png"):
        assert (out / name).stat().st_size > 0
    assert "\\begin{tabular}" in (out / "results.tex").read_text()
    readme = (root / "README.md").read_text()
    assert readme.startswith("# title\n\nbefore\n") and readme.endswith(f"{results.README_END}\nafter\n")
    assert "old table" not in readme and "| full precision |" in readme


def test_bad_input_is_one_line_and_writes_nothing(tree, tmp_path, capsys):
    root, _, _ = tree
    assert results.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o1")]) == 2
    (tmp_path / "README.md").write_text("no markers\n")
    assert results.main([str(root / "gm"), "--out", str(tmp_path / "o2"), "--readme", str(tmp_path / "README.md")]) == 2
    assert results.main([str(root / "gm"), "--out", str(tmp_path / "o3"), "--overlays", str(root / "em/BNN")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_an_interrupted_run_at_the_paper_settings_is_no_paper_number(tmp_path):
    # real data, width 64, 200 epochs planned, but stopped at epoch 5: marked † like any reduced run
    cfg = dict(dataset="em", experiment_name="full_precision", quantization="normal", data_source="real",
               num_epochs=200, base_width=64)
    write_run(tmp_path / "em/full_precision", cfg, [(80.0, 86.0, 14.0)] * 5, status="interrupted")
    assert results.main([str(tmp_path / "em"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out/results.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert (row["em_paper_protocol"], row["em_status"], row["em_epochs_done"]) == ("no", "interrupted", "5")
    assert "80.00 (1) †" in (tmp_path / "out/results.md").read_text()
