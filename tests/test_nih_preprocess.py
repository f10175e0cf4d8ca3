"""Tests of pre-processing/nih_pancreas.py (synthetic DICOM and NIfTI cases, good and bad, in one
batch; the real sample when present) and tiny end-to-end NIH training runs: on the phantom, and on a
folder the script prepared."""

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import yaml

from unetq.paths import base_module
from nih_cases import edit_dicom, toy_volume, write_dicom_series, write_nifti
from unetq.config import validate
from unetq.newexp import create
from unetq.paths import PROJECT_ROOT

NIH_SCRIPT = base_module("NIH_BASE", "nih_unet")

nih = base_module("NIH_BASE")
nih_scans = base_module("NIH_BASE", "nih_scans")
nih_patients = base_module("NIH_BASE", "nih_patients")
nih_prepare = base_module("NIH_BASE", "nih_prepare")
nih_layout = base_module("NIH_BASE", "nih_layout")
SCRIPT = PROJECT_ROOT / "pre-processing" / "nih_pancreas.py"
CROP = ("--crop", "16", "24")


def script_main(*args):
    """The script's main() in this process (saves the interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("nih_pancreas_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def raw_batch(root):
    """Seven patients, three of them bad, plus a label without an image:
    1 DICOM, 2 DICOM with a missing slice, 3 NIfTI with an empty label, 4-6 NIfTI, 7 DICOM, 9 label only."""
    images, labels = root / "Pancreas-CT", root / "labels"
    labels.mkdir(parents=True)
    for n in range(1, 8):
        hu, label = toy_volume(slices=5, seed=n, centre=(18 + n, 26 + 2 * n))
        if n == 3:
            label[:] = 0
        if n in (1, 2, 7):
            zs = [100.0 + 2.5 * k for k in range(5)]
            if n == 2:
                zs, hu = zs[:2] + zs[3:], np.delete(hu, 2, axis=0)
            write_dicom_series(images / f"PANCREAS_{n:04d}" / "series", hu, positions=zs)
            if n == 2:
                label = np.delete(label, 2, axis=0)
        else:
            write_nifti(images / f"image{n:04d}.nii.gz", hu)
        write_nifti(labels / f"label{n:04d}.nii.gz", label)
    write_nifti(labels / "label0009.nii.gz", toy_volume()[1])
    return images, labels


def test_script_batch_with_bad_cases(tmp_path):
    images, labels = raw_batch(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), images, out, "--labels", labels, *CROP, "--val-fraction", "0.3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "3 case(s) skipped" in done.stdout
    for patient, reason in (("0002", "missing slice"), ("0003", "empty label"), ("0009", "a label without an image")):
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"  skipped patient {patient}:")]
        assert len(lines) == 1 and reason in lines[0]
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["patient"] for r in rows if r["split"] == "train"} == {"0001", "0004", "0005"}
    assert {r["patient"] for r in rows if r["split"] == "val"} == {"0006", "0007"}            # the last 30 %
    for row in rows:
        folder = "data" if row["split"] == "train" else "val_img"
        assert (out / folder / f"{row['name']}.png").is_file()
        box = [int(row[k]) for k in ("crop_top", "crop_left", "crop_bottom", "crop_right")]
        assert (box[2] - box[0], box[3] - box[1]) == (16, 24)
        assert row["centred_on"] == ("gt" if row["split"] == "train" else "body")
    assert sum(1 for _ in (out / "data").iterdir()) == sum(r["split"] == "train" for r in rows) == 9
    info = json.loads((out / "preprocessing.json").read_text())
    assert len(info["skipped"]) == 3 and info["excluded"] == [] and len(info["body_prior"]) == 2
    # what training reads back equals the in-memory pipeline on the same cases
    cases, problems, _ = nih_patients.find_cases(images, labels)
    train, val = nih_patients.split_patients(cases, 0.3)
    direct = nih_prepare.Collector()
    nih_prepare.prepare(train, val, nih_prepare.Options(crop=(16, 24)), direct, problems)
    stored = nih_layout.read_prepared(out)
    for split in ("train", "val"):
        images_d, masks_d, names_d, spacings_d = direct.arrays(split)
        images_s, masks_s, names_s, spacings_s = stored[split]
        assert names_s == sorted(names_d) == names_d
        assert np.array_equal(masks_s, masks_d) and np.allclose(spacings_s, spacings_d)
        assert np.abs(images_s - images_d).max() <= 0.5 / 65535 + 1e-7
    # a second run into the now non-empty folder is refused and changes nothing
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    again = subprocess.run([sys.executable, str(SCRIPT), images, out, "--labels", labels], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_script_batch_survives_malformed_headers_and_surprises(tmp_path, capsys, monkeypatch):
    """A malformed DICOM header (one value where PixelSpacing needs two) and an error no check
    anticipated (a reader bug, simulated) each skip their patient; the batch goes on."""
    images, labels = raw_batch(tmp_path)
    edit_dicom(images / "PANCREAS_0001" / "series" / "IM0003.dcm", PixelSpacing=[0.75])
    read_nifti = nih_scans.read_nifti

    def buggy(path, label=False):
        if path.name == "image0005.nii.gz":
            raise IndexError("index 3 is out of bounds for axis 0 with size 3")
        return read_nifti(path, label)

    monkeypatch.setattr(nih_scans, "read_nifti", buggy)               # the module the script loads
    out = tmp_path / "out"
    assert script_main(images, out, "--labels", labels, *CROP, "--val-fraction", "0.3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "5 case(s) skipped" in lines[0]
    reasons = {line.split(":")[0]: line for line in lines[1:]}
    assert "IM0003.dcm: DICOM attribute PixelSpacing has 1 value (0.75)" in reasons["  skipped patient 0001"]
    assert "unexpected error while reading or processing (IndexError: index 3 is out of bounds" in \
        reasons["  skipped patient 0005"]
    info = json.loads((out / "preprocessing.json").read_text())
    assert info["patients"] == {"train": ["0004"], "val": ["0006", "0007"]}      # split before reading
    assert [s["case"] for s in info["skipped"]] == ["patient 0009", "patient 0001", "patient 0002", "patient 0003",
                                                     "patient 0005"]


def test_script_writes_nothing_when_nothing_usable(tmp_path, capsys):
    images, labels = raw_batch(tmp_path)
    out = tmp_path / "out"
    # only patients 2 (missing slice) and 3 (empty label) remain: no slice at all
    assert script_main(images, out, "--labels", labels, "--exclude", "1,4,5,6,7", *CROP) == 2
    err = capsys.readouterr().err
    assert err.startswith("nih_pancreas.py: error: no training slice") and "missing slice" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["Pancreas-CT", "labels"]  # no leftovers
    assert script_main(tmp_path / "absent", out) == 2
    assert "absent: no such folder" in capsys.readouterr().err
    assert script_main(images, out, "--labels", labels, "--crop", "20", "24") == 2
    assert "crop height: 20 is not allowed; allowed: a multiple of 8, at least 8" in capsys.readouterr().err


def readme_recipe() -> str:
    """The shell block of pre-processing/README.md's section on the real one-patient sample."""
    text = (PROJECT_ROOT / "pre-processing" / "README.md").read_text()
    section = text[text.index("### The real one-patient sample"):]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start:section.index("```", start)]


def test_readme_recipe_for_the_real_sample(tmp_path, shared_data):
    """The README's recipe, run as written from the project root (its /tmp folders moved into
    tmp_path): the TotalSegmentator sample as two links under NIH names (one patient cannot be
    split by patient), label value 7, 1 mm pixels."""
    recipe = readme_recipe()
    src, out = tmp_path / "src", tmp_path / "out"
    assert "/tmp/nih_sample_src" in recipe and "/tmp/nih_sample_prepared" in recipe
    script = (recipe.replace("/tmp/nih_sample_src", str(src)).replace("/tmp/nih_sample_prepared", str(out))
              .replace("python pre-processing/", f"{sys.executable} pre-processing/"))
    done = subprocess.run(["bash", "-e", "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (f"wrote 18 train slices (1 patient), 18 validation slices (1 patient), "
                                            f"0 case(s) skipped to {out}")
    sample = shared_data / "pancreas_ct_totalseg"
    assert (src / "label0002.nii.gz").resolve() == (sample / "example_seg.nii.gz").resolve()
    data = nih_layout.read_prepared(out)
    assert len(data["train"][2]) == len(data["val"][2]) == 18              # z 2-19 hold pancreas
    assert data["train"][0].shape[1:] == (112, 176) and np.allclose(data["val"][3], 1.0)
    # the same scan: the label-free crop lands where the training crops were centred on the label
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = [float(r["pancreas_kept"]) for r in rows if r["split"] == "val"]
    assert np.mean(kept) > 0.9


# --------------------------------------------------------------------------- end-to-end training

def tiny_section(**keys):
    return {"dataset": "nih", "num_epochs": 1, "base_width": 4, "batch_size": 4, "val_batch_size": 8,
            "quantization": "FIXED", "activation_i_width": 6, "weight_f_width": 4, "experiment_name": "tiny",
            "threshold": 0.5, "overlay_every": 1, **keys}


def test_tiny_training_run_on_the_phantom(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": tiny_section(phantom_patients=2, crop_height=32, crop_width=48)}))
    assert NIH_SCRIPT.main(["-f", str(path), "-q"]) == 0
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["data_source"] == "phantom"
    assert "NIH phantom" in summary["data_description"] and "val 0002" in summary["data_description"]
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and 0 <= float(rows[0]["dice_05"]) <= 100 and rows[0]["data_source"] == "phantom"
    assert "loss dice" in (run / "log.txt").read_text()                  # the NIH recipe's Dice loss


def test_prepare_then_train_from_an_experiment_folder(tmp_path, capsys):
    images, labels = raw_batch(tmp_path)
    prepared = tmp_path / "prepared"
    assert script_main(images, prepared, "--labels", labels, *CROP, "--val-fraction", "0.3") == 0
    exp = create(tmp_path / "exp", PROJECT_ROOT / "NIH_BASE", {"data_source": "real", "data_path": str(prepared)})
    overrides = [f"{k}={v}" for k, v in tiny_section(experiment_name="exp").items() if k != "dataset"]
    done = subprocess.run([sys.executable, str(exp / "nih_unet.py"), "-f", str(exp / "config.yaml"), "-q", "-o",
                           *overrides], capture_output=True, text=True, timeout=300, cwd=exp)
    assert done.returncode == 0, done.stderr
    summary = json.loads((exp / "runs" / "exp" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["data_source"] == "real"
    assert "Pancreas-CT prepared" in summary["data_description"]
    assert "9 train / 6 val slices 16x24" in summary["data_description"]
    assert NIH_SCRIPT.main(["-f", str(exp / "config.yaml"), "-q", "-o", "data_path=nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere: no such folder" in err


def test_every_nih_config_uses_the_paper_mode_and_recipe():
    for folder in sorted((PROJECT_ROOT / "nih").iterdir()):
        if not folder.is_dir():
            continue
        text = (folder / "config.yaml").read_text()
        section = yaml.safe_load(text)["UNET"]
        cfg = validate(section, dataset="nih")
        assert cfg.fixed_mode == "paper" and "fixed_mode: paper           # the authors' NIH code ran" in text
        assert (cfg.loss, cfg.lr_schedule) == ("dice", "cosine")
        if folder.name in ("a8_8_w8_8", "Ternary"):
            assert cfg.lr == 2.5e-3
        if folder.name == "Ternary":
            assert (cfg.quantization, cfg.activation) == ("ternary", "relu")
        if folder.name != "demo":
            assert (cfg.batch_size, cfg.val_batch_size, cfg.threshold, cfg.base_width) == (16, 16, 0.999, 64)
        else:                          # as gm/demo: a short run's outputs do not saturate to 0.999 in time
            assert cfg.threshold == 0.5 and "not the paper's 0.999" in text
    names = {f.name for f in (PROJECT_ROOT / "nih").iterdir() if f.is_dir()}
    assert {"full_precision", "a8_8_w8_8", "a8_0_w0_8", "a6_0_w0_4", "a4_0_w0_2", "BNN", "Ternary", "demo"} <= names
