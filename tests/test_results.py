"""The results table on run folders made here: real-protocol, phantom, running and missing runs, two
datasets, one real tiny training (for the overlay figure); the README section it regenerates."""

import csv
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from unetq import results
from unetq.results import headline
from unetq.results.runs import Entry, discover
from unetq.results.stats import pooled_sd, summarize, welch
from unetq.paths import PROJECT_ROOT, base_module
from unetq.runlog import RunLog

EM_SCRIPT = base_module("EM_BASE", "em_unet")

EM = base_module("EM_BASE")
A6W04 = dict(quantization="FIXED", activation_i_width=6, weight_f_width=4)


def metric_row(epoch, dice, dice_05, hd95, source, **extra):
    return {**extra, "epoch": epoch, "time_s": 1.0, "lr": 1e-3, "train_loss": 0.5, "dice": dice, "precision": 90.0,
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
    assert EM_SCRIPT.main(["-f", str(tiny / "config.yaml"), "-q"]) == 0
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
    assert (fp["em_dice_05"], fp["em_dice_05_epoch"], fp["em_hd95"], fp["em_hd95_unit"]) == ("88.25", "3", "12.5", "px")
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


def _md_rows(text: str, heading: str) -> dict:
    """{setting: line} of the first markdown table after ``heading`` in ``text``."""
    part = text.split(heading, 1)[1]
    lines = [line for line in part.split("\n\n")[1].splitlines() if line.startswith("| ")]
    return {r.split(" | ")[0].strip("| "): r for r in lines[1:]}


def test_missing_running_and_phantom_runs_are_visible(tree):
    _, out, t = tree
    assert t["BNN"]["em_status"] == "no run" and t["BNN"]["em_dice"] == ""
    assert t["a6.0/w0.4 [paper]"]["em_status"] == "running"
    text = (out / "results.md").read_text()
    line = _md_rows(text, "#### EM: details")                       # every run, one line each
    assert "85.50 (2) |" in line["full precision"] and "†" not in line["full precision"].split(" | ")[1]
    assert "83.30 (1) †" in line["a6.0/w0.4"] and "phantom · 2/2 ep · w4" in line["a6.0/w0.4"]
    assert "-2.20 ‡" in line["a6.0/w0.4"]
    assert "running" in line["a6.0/w0.4 [paper]"] and "no run (BNN)" in line["BNN"]
    labels = list(line)
    assert labels[0] == "full precision" and labels.index("a6.0/w0.4") < labels.index("BNN")
    # the headline shows neither the running run nor the missing one, and lists both
    head = _md_rows(text, "Generated by")
    assert "a6.0/w0.4 [paper]" not in head and "BNN" not in head and "full precision" in head
    assert "**Not finished** (nothing shown for them): EM a6.0/w0.4 [paper] (`a6_0_w0_4_paper`: running, 1/50" in text
    assert "**Not run** (nothing shown for them): EM BNN (`BNN`)" in text


def test_figures_latex_and_readme(tree):
    root, out, _ = tree
    for name in ("results.md", "results.csv", "results.tex", "dice_vs_bits.png", "curves_em.png", "overlays.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "curves_gm.png").exists()        # no GM run finished: figures, like the headline, skip it
    assert "\\begin{tabular}" in (out / "results.tex").read_text()
    readme = (root / "README.md").read_text()
    assert readme.startswith("# title\n\nbefore\n") and readme.endswith(f"{results.README_END}\nafter\n")
    assert "old table" not in readme and "| full precision |" in readme
    assert "#### EM: details" not in readme and "[out/results.md](out/results.md)" in readme   # the headline only


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
    text = (tmp_path / "out/results.md").read_text()
    assert "80.00 (1) †" in text and "**Not finished** (nothing shown for them): EM full precision" in text
    assert "| full precision |" not in text.split("### Per run")[0]


# --------------------------------------------------------------------------------------------
# The headline table: seeds, statistics, the threshold rule, unfinished runs
# --------------------------------------------------------------------------------------------

def curve_run(folder, quantization="normal", seed=0, dice=(), dice05=(), bg=None, empty_last=0, status="complete",
              epochs_done=None, **keys):
    """An EM run folder with the given per-epoch Dice at 0.999 and at 0.5 (and membrane Dice at both)."""
    config = dict(dataset="em", experiment_name=folder.name, quantization=quantization, data_source="sample",
                  num_epochs=len(dice), base_width=16, fixed_mode="pow2", threshold=0.999, seed=seed,
                  log_output_dir=str(folder.parent), **keys)
    if quantization == "FIXED":
        config = {"activation_i_width": 6, "weight_f_width": 4, **config}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"UNET": config}))
    log = RunLog(folder, echo=False)
    bg = bg or [None] * len(dice)
    for e, (d, d5, b) in enumerate(zip(dice, dice05, bg), start=1):
        extra = {} if b is None else {"dice_bg": b, "dice_bg_05": b + 1.0}
        row = metric_row(e, d, d5, 10.0, "sample", **extra)
        row["n_empty_pred"] = empty_last if e == len(dice) else 0
        log.metrics_row(row)
    log.update_summary(status=status, dataset="em", experiment_name=folder.name, data_source="sample",
                       num_epochs=len(dice), base_width=16, threshold=0.999,
                       epochs_done=len(dice) if epochs_done is None else epochs_done)


def ramp(best, n=12, at=None):
    """n epochs rising to ``best`` at epoch ``at`` (default the last), then 0.3 lower."""
    at = at or n
    return [best - 5 + 5 * min(e, at) / at - (0.3 if e > at else 0.0) for e in range(1, n + 1)]


FP_BEST, A6_BEST, A4_BEST = [90.0, 90.5, 91.0], [89.9, 90.6, 90.9], [80.0, 80.5, 81.5]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Three seeds each of full precision, a6.0/w0.4 (as good) and a4.0/w0.2 (clearly worse), saturating
    at 0.999; one a6.0/w0.4 run at another lr; one run stopped early, one interrupted."""
    root = tmp_path_factory.mktemp("seeds")
    for s, (fp, a6, a4) in enumerate(zip(FP_BEST, A6_BEST, A4_BEST)):
        curve_run(root / f"fp_s{s}", seed=s, dice=ramp(fp, at=9), dice05=ramp(fp + 1), bg=ramp(60 + s))
        curve_run(root / f"a6_s{s}", "FIXED", seed=s, dice=ramp(a6, at=8), dice05=ramp(a6 + 1), bg=ramp(58 + s))
        curve_run(root / f"a4_s{s}", "FIXED", seed=s, dice=ramp(a4), dice05=ramp(a4 + 1),
                  activation_i_width=4, weight_f_width=2)
    curve_run(root / "a6_lr", "FIXED", dice=ramp(88.0), dice05=ramp(89.0), lr=0.002)
    curve_run(root / "a6_s9", "FIXED", seed=9, dice=ramp(10.0), dice05=ramp(11.0), epochs_done=6)
    curve_run(root / "a6_s8", "FIXED", seed=8, dice=ramp(10.0), dice05=ramp(11.0), status="interrupted")
    out = root / "out"
    assert results.main([str(root), "--out", str(out), "--no-plots"]) == 0
    with open(out / "headline.csv", newline="") as fh:
        table = {r["setting"]: r for r in csv.DictReader(fh)}
    return root, out, table


def test_statistics_match_scipy():
    x, y = [90.1, 90.7, 89.8, 91.2], [88.0, 88.9, 87.1]
    d = welch(x, y)
    ref = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert d.delta == pytest.approx(np.mean(x) - np.mean(y)) and not d.contains_zero
    s = summarize(x)
    assert (s.mean, s.sd, s.n) == pytest.approx((np.mean(x), np.std(x, ddof=1), 4))
    assert welch([1.0], y).low is None and summarize([3.0]).sd is None          # one seed: no interval
    assert welch([2.0, 2.0], [2.0, 2.0]).contains_zero
    sd, dof = pooled_sd([x, y, [5.0]])
    assert dof == 5 and sd == pytest.approx(math.sqrt((np.var(x, ddof=1) * 3 + np.var(y, ddof=1) * 2) / 5))


def test_seeds_make_one_row_with_mean_sd_and_welch_interval(seeds):
    _, out, t = seeds
    fp, a6, a4 = t["full precision"], t["a6.0/w0.4"], t["a4.0/w0.2"]
    assert (fp["n"], a6["n"], a4["n"]) == ("3", "3", "3") and fp["threshold"] == "0.999"
    assert a6["experiments"] == "a6_s0 a6_s1 a6_s2"
    for row, best in ((fp, FP_BEST), (a6, A6_BEST)):
        assert float(row["best_mean"]) == pytest.approx(np.mean(best), abs=1e-4)
        assert float(row["best_sd"]) == pytest.approx(np.std(best, ddof=1), abs=1e-4)
    ref = stats.ttest_ind(A6_BEST, FP_BEST, equal_var=False).confidence_interval(0.95)
    assert (float(a6["delta_low"]), float(a6["delta_high"])) == pytest.approx((ref.low, ref.high), abs=1e-4)
    # last 10 epochs: each run's mean of its last 10 rows, then the mean over seeds
    lasts = [np.mean(ramp(b, at=8)[-10:]) for b in A6_BEST]
    assert float(a6["last_mean"]) == pytest.approx(np.mean(lasts), abs=1e-3)
    # membrane Dice at each run's best epoch (epoch 8 for a6: ramp(58 + s) there)
    assert float(a6["bg_mean"]) == pytest.approx(np.mean([ramp(58 + s)[7] for s in range(3)]), abs=1e-3)
    # a run at another lr is its own row, named by what differs; one seed: no interval
    other = t["a6.0/w0.4 — lr 0.002"]
    assert other["n"] == "1" and other["delta_low"] == ""
    assert float(other["delta"]) == pytest.approx(88 - np.mean(FP_BEST), abs=1e-3)
    text = (out / "results.md").read_text()
    head = text.split("### Per run")[0]
    line = {r.split(" | ")[0].strip("| "): r for r in head.splitlines() if r.startswith("| ")}
    assert f"{np.mean(A6_BEST):.2f} ± {np.std(A6_BEST, ddof=1):.2f} (3) † · " in line["a6.0/w0.4"]
    assert f"{np.mean(A6_BEST) - np.mean(FP_BEST):+.2f} [{ref.low:+.2f}, {ref.high:+.2f}]°" in line["a6.0/w0.4"]
    assert "]°" not in line["a4.0/w0.2"].split(" | ")[3]                  # clearly worse: interval without 0
    assert "EM seed noise" in head and "**EM**: threshold 0.999 (the runs' own)" in head


def test_every_seed_keeps_its_own_details_line_and_csv_row(seeds):
    """Seeds of one setting share a folder name in different folders; none may overwrite another."""
    root, out, _ = seeds
    with open(out / "results.csv", newline="") as fh:
        runs = [r["em_run"] for r in csv.DictReader(fh)]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "out")
    assert len(runs) == len(set(runs)) == len(folders)
    details = (out / "results.md").read_text().split("#### EM: details")[1]
    names = [r.split(" | ")[0].strip("| ") for r in details.splitlines() if r.startswith("| ") and " --- " not in r]
    # the preferred run of a setting keeps its name; the other seeds say which seed they are
    assert sum(n.startswith("full precision — seed ") for n in names) == len(FP_BEST) - 1
    assert len(names) - 1 == len(set(names)) - 1 == len(folders)      # minus the header line


def test_seeds_in_folders_of_one_name_are_all_listed(tmp_path):
    """The paper_protocol layout: seed<k>/full_precision, the same experiment name in every seed."""
    for s in range(3):
        curve_run(tmp_path / f"seed{s}" / "full_precision", seed=s, dice=ramp(90.0 + s), dice05=ramp(91.0 + s))
    out = tmp_path / "out"
    assert results.main([str(tmp_path), "--out", str(out), "--no-plots"]) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = {r["setting"]: r["em_run"] for r in csv.DictReader(fh)}
    assert len(rows) == len(set(rows.values())) == 3
    assert sum(name.startswith("full precision — seed ") for name in rows) == 2


def test_unfinished_runs_are_listed_never_shown(seeds):
    _, out, t = seeds
    assert all("a6_s9" not in r["experiments"] and "a6_s8" not in r["experiments"] for r in t.values())
    text = (out / "results.md").read_text()
    assert "`a6_s9`: complete, 6/12 epochs" in text and "`a6_s8`: interrupted, 12/12 epochs" in text


def _entry(dice, dice05, empty_last=0, n_slices=5):
    rows = [{"epoch": e, "dice": d, "dice_05": h, "n_empty_pred": 0, "n_slices": n_slices}
            for e, (d, h) in enumerate(zip(dice, dice05), start=1)]
    rows[-1]["n_empty_pred"] = empty_last
    return Entry(folder=None, config={"threshold": 0.999}, summary={}, rows=rows)


def test_the_accident_rule():
    never = headline.never_saturated
    # best at 0.999 in epoch 1, then nothing predicted there while 0.5 reaches 93: an accident
    why = never(_entry([41.1] + [0.0] * 9, [72.0] + [93.0] * 9, empty_last=5))
    assert why and "epoch 1" in why and "5 of 5 slices" in why
    # outputs that do reach 0.999 (the last epoch keeps most of the Dice at 0.5): a result
    assert never(_entry([60.0, 85.0, 88.0], [70.0, 88.0, 90.0])) is None
    # a run that learned nothing at 0.5 either is a failed run, not a threshold accident
    assert never(_entry([3.0, 0.0, 0.0], [5.0, 4.0, 2.0], empty_last=5)) is None


def test_a_dataset_whose_outputs_never_saturate_falls_back_to_half(tmp_path):
    curve_run(tmp_path / "fp", dice=[41.0] + [0.0] * 11, dice05=ramp(93.0), empty_last=5)
    curve_run(tmp_path / "a6", "FIXED", dice=ramp(80.0), dice05=ramp(81.0))
    assert results.main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    text = (tmp_path / "out/results.md").read_text()
    assert "**EM**: threshold 0.5, not the runs' 0.999: the outputs of 1 of 2 runs never reach 0.999" in text
    with open(tmp_path / "out/headline.csv", newline="") as fh:
        t = {r["setting"]: r for r in csv.DictReader(fh)}
    assert t["full precision"]["threshold"] == "0.5" and float(t["full precision"]["best_mean"]) == pytest.approx(93.0)
    assert float(t["a6.0/w0.4"]["best_mean"]) == pytest.approx(81.0)           # every EM cell at 0.5


def test_the_accident_example_names_its_row_with_its_protocol(tmp_path):
    # two full-precision rows: the first saturates at 0.999, the one at another lr never does; the note's
    # example must say which of the two it is, not just "full precision"
    curve_run(tmp_path / "fp", dice=ramp(92.0), dice05=ramp(93.0))
    curve_run(tmp_path / "fp_lr", dice=[41.0] + [0.0] * 11, dice05=ramp(93.0), empty_last=5, lr=0.002)
    h = headline.build(discover([tmp_path]))
    note = h.thresholds["em"].note
    assert "1 of 2 runs never reach 0.999" in note and "(e.g. full precision — lr 0.002: last epoch 0.00" in note


RECORDS = PROJECT_ROOT / "results/cpu_2026-11-28/records"


def test_headline_of_the_committed_records():
    h = headline.build(discover([RECORDS]))
    assert h.thresholds["em"].value == 0.5 and "12 of 12 runs never reach 0.999" in h.thresholds["em"].note
    with open(RECORDS / "em/full_precision/metrics.csv", newline="") as fh:
        fp = [float(r["dice_05"]) for r in csv.DictReader(fh)]
    with open(RECORDS / "em/a6_0_w0_4/metrics.csv", newline="") as fh:
        a6 = [float(r["dice_05"]) for r in csv.DictReader(fh)]
    assert h.numbers[("full precision", "em")]["best"] == pytest.approx([max(fp)], abs=1e-4)
    assert h.numbers[("full precision", "em")]["last"] == pytest.approx([np.mean(fp[-10:])], abs=1e-4)
    assert headline.difference(h, "a6.0/w0.4", "em", "best").delta == pytest.approx(max(a6) - max(fp), abs=1e-4)
    assert h.numbers[("a6.0/w0.4", "em")]["bg"] == []                           # predates dice_bg: "—"
    assert "a6.0/w0.4 — legacy_double_sigmoid True" in h.rows and not h.not_finished and not h.not_run
    assert all(g.cell["paper_protocol"] == "no" for g in h.groups.values())
