"""Fault injection in-process (issue 17): damaged checkpoints and bookkeeping, masks of every reader,
resume length and schedule, hostile YAML, damaged metrics.csv, a sweep over broken folders, messages
that must be right, the run-folder lock in every mode that writes into a run."""

import json
import random
import shutil
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from unetq import checkpoint, runlock
from unetq.runfolder import check_run_dir
from unetq.config import Config, ConfigError, validate
from unetq.data import DataError
from unetq.engine import format_metrics, lr_at
from unetq.newexp import create
from unetq.paths import PROJECT_ROOT, base_module
from unetq.runlog import RunLog
from unetq.sweep import main as sweep_main

EM_SCRIPT = base_module("EM_BASE", "em_unet")

EM = base_module("EM_BASE")
GM = base_module("GM_BASE")
NIH_LAYOUT = base_module("NIH_BASE", "nih_layout")
TINY = {"dataset": "em", "num_epochs": 2, "base_width": 4, "phantom_images": 4, "val_sections": 2,
        "batch_size": 2, "val_batch_size": 2, "overlay_every": 0, "experiment_name": "r",
        "lr_schedule": "constant", "loss": "bce_dice"}


def write(folder, section):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": section}))
    return path


def run(folder, section, capsys, *overrides):
    """Run ``section`` in-process as em_unet.py would; (exit status, stderr)."""
    argv = ["-f", str(write(folder, section)), "-q"] + (["-o", *overrides] if overrides else [])
    code = EM_SCRIPT.main(argv)
    return code, capsys.readouterr().err


def one_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def snapshot(folder):
    """Every file under ``folder`` with its bytes (to show that a refusal wrote nothing)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_resume_refused(folder, capsys, *words):
    """A resume of ``folder``'s run is refused in one line holding ``words``, and writes nothing."""
    before = snapshot(folder / "runs")
    code, err = run(folder, {**TINY, "operation_mode": "resume"}, capsys, "num_epochs=3")
    line = one_line(err)
    assert code == 2 and all(w in line for w in words), line
    assert snapshot(folder / "runs") == before              # log.txt, summary.json, metrics.csv untouched


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One complete 2-epoch run (its folder is copied by the tests that change it)."""
    root = tmp_path_factory.mktemp("trained")
    code = EM_SCRIPT.main(["-f", str(write(root, TINY)), "-q"])
    assert code == 0
    return root


@pytest.fixture
def copy(trained, tmp_path):
    """A private copy of the trained experiment folder."""
    shutil.copytree(trained, tmp_path / "exp")
    return tmp_path / "exp"


# --- 5. checkpoint integrity -------------------------------------------------------------------

def test_a_checkpoint_with_flipped_bytes_is_named_not_used(trained, tmp_path, capsys):
    data = bytearray((trained / "runs/r/best.pt").read_bytes())
    rng = random.Random(0)
    for _ in range(200):
        data[rng.randrange(len(data) // 4, 3 * len(data) // 4)] ^= 0x5A
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    code, err = run(tmp_path / "exp", {**TINY, "operation_mode": "inference", "trained_model": str(bad)}, capsys)
    line = one_line(err)
    assert code == 2 and str(bad) in line and "damaged checkpoint" in line, line
    assert not (tmp_path / "exp" / "runs").exists()


# --- 7. bookkeeping that cannot be true ---------------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("epoch", -5, "epoch -5 is outside 1..2"), ("epoch", 0, "epoch 0 is outside"),
    ("epoch", 10**12, "epoch 1000000000000 is outside"), ("best_dice", float("nan"), "best_dice nan"),
    ("best_epoch", 3, "best_epoch 3 is outside 0..2"), ("best_dice", 250.0, "best_dice 250.0")])
def test_impossible_bookkeeping_is_refused_before_anything_is_written(copy, capsys, key, value, words):
    last = copy / "runs/r/last.pt"
    checkpoint.save({**checkpoint.load(last), key: value}, last)
    assert_resume_refused(copy, capsys, str(last), words)


def test_an_optimizer_state_of_another_width_or_a_bad_rng_is_refused_before_writing(copy, capsys):
    last = copy / "runs/r/last.pt"
    good = checkpoint.load(last)
    # Adam's moments as a model twice as wide would have them (same parameter count, other shapes)
    wider = {**good["optimizer"], "state": {k: {n: (torch.zeros(2 * v.shape[0], *v.shape[1:]) if v.dim() else v)
                                                 for n, v in s.items()} for k, s in good["optimizer"]["state"].items()}}
    for bad, words in (({**good, "optimizer": wider}, "Adam's exp_avg has shape"),
                       ({**good, "rng": {"torch": torch.zeros(3)}}, "random state does not fit")):
        checkpoint.save(bad, last)
        assert_resume_refused(copy, capsys, str(last), words)


def test_a_negative_batchnorm_variance_is_refused(trained, tmp_path, capsys):
    ckpt = checkpoint.load(trained / "runs/r/best.pt")
    name = next(k for k in ckpt["model"] if k.endswith("running_var"))
    ckpt["model"][name] = -ckpt["model"][name].abs() - 1
    checkpoint.save(ckpt, tmp_path / "negvar.pt")
    code, err = run(tmp_path / "exp", {**TINY, "operation_mode": "inference",
                                       "trained_model": str(tmp_path / "negvar.pt")}, capsys)
    line = one_line(err)
    assert code == 2 and name in line and "negative variance" in line, line


# --- 8. a resume continues the run it resumes ---------------------------------------------------

def test_a_resume_keeps_the_runs_length_and_says_what_an_extension_does(tmp_path, capsys):
    section = {**TINY, "num_epochs": 200, "lr_schedule": "step"}      # the file says 200; the run is 4
    assert run(tmp_path, section, capsys, "num_epochs=4")[0] == 0
    code, err = run(tmp_path, {**section, "operation_mode": "resume"}, capsys)
    assert code == 0, err
    log = (tmp_path / "runs/r/log.txt").read_text()
    assert "resume: continuing the run's 4 epochs (the config file says 200" in log
    assert json.loads((tmp_path / "runs/r/summary.json").read_text())["num_epochs"] == 4
    assert checkpoint.load(tmp_path / "runs/r/last.pt")["epoch"] == 4          # not extended to 200
    code, err = run(tmp_path, {**section, "operation_mode": "resume"}, capsys, "num_epochs=6")
    assert code == 0, err
    log = (tmp_path / "runs/r/log.txt").read_text()
    assert ("resume: extending the run from 4 to 6 epochs (-o num_epochs); epochs 1-4 were trained on the 4-epoch "
            "step schedule, the rest follow the 6-epoch one: epoch 5 trains at lr 1e-06 (the 4-epoch schedule: "
            "none (it ended at epoch 4))") in log
    rows = (tmp_path / "runs/r/metrics.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[2]) for r in rows]
    cfg4, cfg6 = (Config({"num_epochs": n, "lr": 1e-3, "lr_schedule": "step"}, None, "UNET") for n in (4, 6))
    assert lrs == pytest.approx([lr_at(cfg4, e) for e in range(1, 5)] + [lr_at(cfg6, 5), lr_at(cfg6, 6)])
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6, 1e-6, 1e-7])


def test_resuming_a_finished_run_keeps_its_record(copy, capsys):
    before = json.loads((copy / "runs/r/summary.json").read_text())
    code, err = run(copy, {**TINY, "operation_mode": "resume"}, capsys)
    assert code == 0, err
    after = json.loads((copy / "runs/r/summary.json").read_text())
    assert after["status"] == "complete" and after["epochs_done"] == 2
    assert after["last"] == before["last"] and after["best_dice"] == before["best_dice"]


# --- 9, 10. hostile configs: one bounded line, fast -----------------------------------------------

BOMB = """UNET:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  experiment_name: [*g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


@pytest.mark.parametrize("text, words", [
    (BOMB, "YAML aliases"),
    ("UNET:\n" + "".join(f"  k{i}: {i}\n" for i in range(40000)), "larger than 256 kB"),
    ("UNET:\n  quantization: " + "x" * 100000 + "\n", "is not allowed"),
    ("UNET:\n  lr: [" + ", ".join("1" for _ in range(20000)) + "]\n", "<a list of 20000 items>"),
    ('UNET:\n  experiment_name: "a\\0b"\n', "NUL byte"),
    ('UNET:\n  log_output_dir: "runs\\0x"\n', "NUL byte"),
    ("UNET:\n  experiment_name: " + "n" * 300 + "\n", "255"),
], ids=["alias bomb", "40000 keys", "huge value", "huge list", "NUL in name", "NUL in path", "long name"])
def test_hostile_configs_get_one_short_line_quickly(tmp_path, capsys, text, words):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    started = time.process_time()          # CPU time: the test machine may be busy with other work
    code = EM_SCRIPT.main(["-f", str(path), "-q"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and words in line and len(line) < 400, line
    assert time.process_time() - started < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("damage, words", [
    (lambda text: text.replace("\n1,", "\n1\xff,", 1).encode("latin-1"), "not UTF-8 text"),
    (lambda text: text.replace(text.splitlines()[2], text.splitlines()[2][:15]).encode(), "line 3 (epoch 2) has"),
    (lambda text: text.replace("epoch,", "ep#ch,", 1).encode(), "line 1 is not a metrics.csv header"),
    (lambda text: (text + text.splitlines()[1] + "\n").encode(), "epoch 1 appears twice"),
])
def test_a_damaged_metrics_csv_stops_a_resume_before_it_writes(copy, capsys, damage, words):
    path = copy / "runs/r/metrics.csv"
    path.write_bytes(damage(path.read_text()))
    assert_resume_refused(copy, capsys, str(path), words)


# --- 11, 10. a sweep over broken folders --------------------------------------------------------

def test_a_sweep_lists_unreadable_folders_as_failed_and_runs_the_others(tmp_path, capsys):
    sweep_tiny = {k: v for k, v in TINY.items() if k not in ("dataset", "experiment_name", "loss")}
    create(tmp_path / "em" / "good", PROJECT_ROOT / "EM_BASE", {**sweep_tiny, "num_epochs": 1})
    broken = {"syntax": "UNET:\n  lr: [1, 2\n", "listed": "UNET: [1, 2]\n", "string": "UNET: hello\n"}
    for name, text in broken.items():
        folder = create(tmp_path / "em" / name, PROJECT_ROOT / "EM_BASE", sweep_tiny)
        (folder / "config.yaml").write_text(text)
    assert sweep_main([str(tmp_path / "em")]) == 1
    out, err = capsys.readouterr()
    assert "em/good: ok" in out and "3 of 4 runs failed" in err and "Traceback" not in err
    assert "em/syntax: error:" in err and "unreadable YAML" in err
    assert "em/listed: error:" in err and "em/string: error:" in err and "must be a mapping" in err


# --- 12. messages that must be right ------------------------------------------------------------

def test_a_full_disk_names_the_figure_and_leaves_no_empty_file(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    def full(self, fname, **kwargs):
        open(fname, "wb").close()                   # what a full disk leaves: an empty file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    code, err = run(tmp_path, TINY, capsys)
    line = one_line(err)
    assert code == 2 and "curves.png" in line and "No space left on device" in line, line
    run_dir = tmp_path / "runs/r"
    assert not (run_dir / "curves.png").exists() and not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_summary_json_is_strict_json(tmp_path):
    log = RunLog(tmp_path, echo=False)
    log.update_summary(best_dice=float("nan"), last={"hd95": float("inf"), "dice": 0.5})

    def refuse(name):
        raise ValueError(name)
    assert json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse) == {
        "best_dice": None, "last": {"hd95": None, "dice": 0.5}}


def test_a_checkpoint_of_another_dataset_is_named(trained, tmp_path, capsys):
    ckpt = checkpoint.load(trained / "runs/r/best.pt")
    checkpoint.save({**ckpt, "config": {**ckpt["config"], "dataset": "gm"}}, tmp_path / "gm.pt")
    code, err = run(tmp_path / "exp", {**TINY, "operation_mode": "inference", "trained_model": str(tmp_path / "gm.pt")},
                    capsys)
    assert code == 0, err
    log = next((tmp_path / "exp/runs/r").glob("inference_*/log.txt")).read_text()
    assert "notice: gm.pt was trained on dataset 'gm'; this run uses 'em'" in log


def test_an_hd95_over_a_few_slices_does_not_read_as_a_score():
    none_defined = {"dice": 0.0, "hd95": 0.0, "n_slices": 10, "n_hd_undefined": 8}
    assert format_metrics(none_defined) == "dice 0.00 | hd95 n/a (2 of 10 slices defined)"
    assert format_metrics({**none_defined, "hd95": 3.5, "n_hd_undefined": 3}, unit="mm") == (
        "dice 0.00 | hd95 3.50 mm (7 of 10 slices)")
    assert format_metrics({**none_defined, "hd95": 3.5, "n_hd_undefined": 0}, unit="px") == "dice 0.00 | hd95 3.50 px"
    assert format_metrics({**none_defined, "dice_05": 1.0}, threshold=0.999) == (
        "dice 0.00 | dice@0.5 1.00 | hd95 n/a (2 of 10 slices defined)")     # beside another threshold only


# --- 3. leftovers of a killed write count as free space ----------------------------------------

def test_leftover_temporaries_are_counted_as_free_space_and_removed(copy, capsys, monkeypatch):
    leftover = copy / "runs/r/.last.pt.abc123.tmp"
    leftover.write_bytes(b"\0" * 8 * 2**20)                   # 8 MB a kill -9 left behind
    import shutil as sh

    model_bytes = sum(t.numel() for t in checkpoint.load(copy / "runs/r/best.pt")["model"].values()) * 16
    needed = model_bytes + 50 * 2**20
    monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(10**12, 10**12, needed - 4 * 2**20))
    code, err = run(copy, {**TINY, "operation_mode": "resume"}, capsys, "num_epochs=3")
    assert code == 0, err
    assert not leftover.exists()


# --- 4. the BASE folder -------------------------------------------------------------------------

def test_a_run_folder_containing_the_base_folder_is_refused(tmp_path):
    cfg = validate({**TINY, "log_output_dir": str(PROJECT_ROOT.parent), "experiment_name": PROJECT_ROOT.name},
                   source=tmp_path / "config.yaml", dataset="em", extra_fields=EM.FIELDS)
    with pytest.raises(ConfigError, match="contains the BASE folder"):
        check_run_dir(cfg, cfg.path("log_output_dir") / cfg.experiment_name, PROJECT_ROOT / "EM_BASE")
    cfg = validate({**TINY, "log_output_dir": "runs"}, source=tmp_path / "config.yaml", dataset="em",
                   extra_fields=EM.FIELDS)
    check_run_dir(cfg, cfg.path("log_output_dir") / cfg.experiment_name, PROJECT_ROOT / "EM_BASE")   # fine


# --- 1. every mode that writes into a run takes its lock ----------------------------------------

@pytest.mark.parametrize("mode", ["resume", "inference", "visualize", "retrain", "normal"])
def test_every_mode_writing_into_a_held_run_is_refused(copy, capsys, mode):
    run_dir = copy / "runs/r"
    keys = {**TINY, "operation_mode": mode}
    if mode != "resume" and mode != "normal":
        keys["trained_model"] = str(run_dir / "best.pt")
    before = snapshot(copy / "runs")
    with runlock.acquire(run_dir, "normal"):            # as a live run holds it
        code, err = run(copy, keys, capsys, "num_epochs=3")
    line = one_line(err)
    assert code == 2 and "in use by another process" in line and "mode normal" in line, line
    assert {k: v for k, v in snapshot(copy / "runs").items() if k.name != ".r.lock"} == \
           {k: v for k, v in before.items() if k.name != ".r.lock"}


# --- 6. one mask rule for every reader, training and validation alike ---------------------------

def _gm_folder(root, val_mask):
    """A 3-subject challenge folder (site 1): subjects 1-2 train, 3 validates with ``val_mask(mask)``."""
    import nibabel as nib

    root.mkdir(parents=True)
    yy, xx = np.mgrid[:40, :40]
    disc = (((yy - 20) ** 2 + (xx - 20) ** 2) < 36).astype(np.uint8)
    mask = np.repeat(disc[:, :, None], 3, axis=2)
    for subject in (1, 2, 3):
        image = (100 + 50 * mask + np.random.default_rng(subject).normal(0, 5, mask.shape)).astype(np.int16)
        saved = val_mask(mask) if subject == 3 else mask
        for name, array in ((f"site1-sc0{subject}-image.nii.gz", image), (f"site1-sc0{subject}-mask-r1.nii.gz", saved)):
            nib.save(nib.Nifti1Image(np.asarray(array), np.diag([0.5, 0.5, 5.0, 1.0])), str(root / name))
    return root


def _gm_cfg(root):
    return validate({"dataset": "gm", "data_source": "real", "data_path": str(root), "sites": "1",
                     "train_subjects": "1-2", "val_subjects": "3", "crop_size": 32, "resample_mm": 0},
                    extra_fields=GM.FIELDS, dataset="gm")


def test_gm_validation_masks_follow_the_one_rule(tmp_path):
    plain = GM.build_datasets(_gm_cfg(_gm_folder(tmp_path / "plain", lambda m: m)))
    scaled = GM.build_datasets(_gm_cfg(_gm_folder(tmp_path / "scaled", lambda m: (m * 255).astype(np.uint8))))
    plain_masks = np.stack([plain.val[i]["mask"].numpy() for i in range(len(plain.val))])
    scaled_masks = np.stack([scaled.val[i]["mask"].numpy() for i in range(len(scaled.val))])
    assert plain_masks.sum() > 0 and np.array_equal(plain_masks, scaled_masks)      # 0/255: not an empty target
    with pytest.raises(DataError, match=r"site1-sc03-mask-r1.nii.gz: a gray-matter mask must hold .* found values 0, 0.5"):
        GM.build_datasets(_gm_cfg(_gm_folder(tmp_path / "half", lambda m: m.astype(np.float32) * 0.5)))


def test_nih_prepared_masks_follow_the_one_rule(tmp_path):
    for split in ("data", "mask", "val_img", "val_mask"):
        (tmp_path / split).mkdir()
    square = np.zeros((16, 16), np.uint8)
    square[4:12, 4:12] = 1
    for image_dir, mask_dir, mask in (("data", "mask", square * 255), ("val_img", "val_mask", square)):
        Image.fromarray((square * 200).astype(np.uint8)).save(tmp_path / image_dir / "s1.png")
        Image.fromarray(mask).save(tmp_path / mask_dir / "s1.png")
    out = NIH_LAYOUT.read_prepared(tmp_path)
    assert out["train"][1].sum() == out["val"][1].sum() == 64                     # 0/1 validation: not empty
    Image.fromarray(square * 7).save(tmp_path / "val_mask" / "s1.png")
    with pytest.raises(DataError, match="val_mask/s1.png: a mask must hold 0/255 or 0/1 only"):
        NIH_LAYOUT.read_prepared(tmp_path)
