"""Fuzz-style: malformed configs and data files fed to the entry points must give one line, a
non-zero exit, no traceback and no output."""

import random

import numpy as np
import pytest
import yaml
from PIL import Image

from unetq.config import COMMON_FIELDS, ConfigError, load
from unetq.paths import base_module

EM_SCRIPT = base_module("EM_BASE", "em_unet")
GM_SCRIPT = base_module("GM_BASE", "gmchallenge_unet")
NIH_SCRIPT = base_module("NIH_BASE", "nih_unet")

EM = base_module("EM_BASE")
VALID = {"dataset": "em", "num_epochs": 1, "base_width": 4, "phantom_images": 4, "val_sections": 2,
         "experiment_name": "f"}
NASTY = [None, -1, -10**12, 10**30, 1e308, float("nan"), float("inf"), "", "x" * 500, "\u2603", [], [1, 2],
         {}, {"a": 1}, True, 0.5, "1e-3", "-0"]


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Every input here must be refused before training; if one slipped through, fail fast instead
    of training a paper-size model."""
    import unetq.runfolder

    def refuse(*args):
        raise AssertionError("this malformed input was accepted and reached training")

    monkeypatch.setattr(unetq.runfolder, "header", refuse)     # what a run writes once everything was checked


def entry(tmp_path, text_or_bytes, capsys):
    path = tmp_path / "config.yaml"
    if isinstance(text_or_bytes, bytes):
        path.write_bytes(text_or_bytes)
    else:
        path.write_text(text_or_bytes, encoding="utf-8")
    code = EM_SCRIPT.main(["-f", str(path), "-q"])
    err = capsys.readouterr().err
    return code, err


def assert_clean_refusal(tmp_path, code, err):
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_every_field_with_every_nasty_value_validates_or_fails_in_one_line():
    rng = random.Random(0)
    fields = [f.name for f in COMMON_FIELDS] + [f.name for f in EM.FIELDS]
    outcomes = {"ok": 0, "refused": 0}
    for name in fields:
        for value in NASTY:
            section = {**VALID, name: value}
            if rng.random() < 0.3:                     # sometimes break a second key too
                section[rng.choice(fields)] = rng.choice(NASTY)
            try:
                load_section(section)
                outcomes["ok"] += 1
            except ConfigError as err:
                assert "\n" not in str(err) and "config.yaml" in str(err)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 300 and outcomes["ok"] > 10


def load_section(section, tmp=[]):
    import tempfile
    from pathlib import Path

    if not tmp:
        tmp.append(Path(tempfile.mkdtemp()) / "config.yaml")
    tmp[0].write_text(yaml.safe_dump({"UNET": section}, allow_unicode=True))
    return load(tmp[0], "UNET", extra_fields=EM.FIELDS, dataset="em")


@pytest.mark.parametrize("content", [
    b"", b"\x00\x01\x02", b"UNET: \xff\xfe\xfa\n", "UNET:\n\tlr: 1\n", "UNET: [\n", "UNET: 3\n", "42\n",
    "UNET:\n  lr: 1\n  lr: 2\n", "OTHER:\n  lr: 1\n", "UNET:\n  num_epochs: 99999999999999999999\n",
    "UNET:\n  base_width: 1e400\n", "UNET:\n  quantization: !!python/object/apply:os.system ['echo hi']\n",
    "UNET:\n  seed: 1.5\n", "UNET:\n  dropout: 2\n", "UNET:\n  trained_model: [a]\n", "UNET:\n  ? [1]\n  : 2\n",
])
def test_malformed_config_files(tmp_path, capsys, content):
    code, err = entry(tmp_path, content, capsys)
    assert_clean_refusal(tmp_path, code, err)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def preprocessed_layout(root, n_train=3, n_val=2):
    rng = np.random.default_rng(0)
    for split, img_dir, mask_dir, n in (("train", "data", "mask", n_train), ("val", "val_img", "val_mask", n_val)):
        for i in range(n):
            write_png(root / img_dir / f"{i}.png", rng.integers(0, 255, (200, 200), dtype=np.uint8))
            write_png(root / mask_dir / f"{i}.png", (rng.random((200, 200)) > 0.3).astype(np.uint8) * 255)


def corrupt_truncated(root):
    data = (root / "data/1.png").read_bytes()
    (root / "data/1.png").write_bytes(data[: len(data) // 3])


def corrupt_rgb_mask(root):
    write_png(root / "mask/0.png", np.zeros((200, 200, 3), dtype=np.uint8))


def corrupt_zero_bytes(root):
    (root / "val_img/0.png").write_bytes(b"")


def corrupt_float_image(root):
    Image.fromarray(np.random.rand(200, 200).astype(np.float32)).save(root / "data/2.tif")
    (root / "data/2.png").unlink()
    (root / "data/2.tif").rename(root / "data/2.png")


def corrupt_unpaired(root):
    (root / "mask/2.png").unlink()


def corrupt_size(root):
    write_png(root / "val_mask/1.png", np.zeros((100, 120), dtype=np.uint8))


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_rgb_mask, corrupt_zero_bytes, corrupt_float_image,
                                     corrupt_unpaired, corrupt_size])
def test_malformed_data_files(tmp_path, capsys, corrupt):
    data = tmp_path.parent / f"{tmp_path.name}_data"
    preprocessed_layout(data)
    corrupt(data)
    code, err = entry(tmp_path, yaml.safe_dump({"UNET": {**VALID, "data_source": "real", "data_path": str(data)}}),
                      capsys)
    assert_clean_refusal(tmp_path, code, err)
    assert str(data) in err                              # the message names the file or folder


# ---------------------------------------------------------------- GM and NIH volumes (NIfTI)

GM = base_module("GM_BASE")
GM_PHANTOM = base_module("GM_BASE", "gm_phantom")
NIH = base_module("NIH_BASE")


def nifti(path, array):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def gm_zero_bytes(root):
    (root / "site1-sc01-image.nii.gz").write_bytes(b"")


def gm_truncated(root):
    path = root / "site1-sc02-mask-r1.nii.gz"
    path.write_bytes(path.read_bytes()[:200])


def gm_four_d(root):
    nifti(root / "site1-sc03-image.nii.gz", np.zeros((20, 20, 2, 3), np.float32))


def gm_three_channel_mask(root):
    nifti(root / "site1-sc04-mask-r1.nii.gz", np.zeros((20, 20, 2, 3), np.uint8))


def gm_complex_dtype(root):
    nifti(root / "site1-sc05-image.nii.gz", np.zeros((100, 100, 2), np.complex64))


def gm_mask_without_image(root):
    (root / "site1-sc06-image.nii.gz").unlink()


def gm_shape_mismatch(root):
    nifti(root / "site1-sc09-mask-r2.nii.gz", np.zeros((7, 9, 2), np.uint8))


@pytest.mark.parametrize("corrupt", [gm_zero_bytes, gm_truncated, gm_four_d, gm_three_channel_mask, gm_complex_dtype,
                                     gm_mask_without_image, gm_shape_mismatch])
def test_malformed_gm_volumes(tmp_path, capsys, corrupt):
    data = tmp_path.parent / f"{tmp_path.name}_gm"
    GM_PHANTOM.write_phantom(data, seed=0, subjects=10, slices=2, sites=[1])
    corrupt(data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": {"dataset": "gm", "num_epochs": 1, "base_width": 4, "sites": "1",
                                             "data_source": "real", "data_path": str(data)}}))
    code = GM_SCRIPT.main(["-f", str(path), "-q"])
    err = capsys.readouterr().err
    assert_clean_refusal(tmp_path, code, err)
    assert str(data) in err


def nih_zero_bytes_label(root, n):
    (root / f"label{n:04d}.nii.gz").write_bytes(b"")


def nih_truncated_image(root, n):
    path = root / f"PANCREAS_{n:04d}.nii.gz"
    path.write_bytes(path.read_bytes()[:300])


def nih_empty_label(root, n):
    from nih_cases import toy_volume, write_nifti

    write_nifti(root / f"label{n:04d}.nii.gz", np.zeros_like(toy_volume()[1]), dtype=np.uint8)


def nih_label_without_image(root, n):
    (root / f"PANCREAS_{n:04d}.nii.gz").unlink()


@pytest.mark.parametrize("corrupt", [nih_zero_bytes_label, nih_truncated_image, nih_empty_label,
                                     nih_label_without_image])
def test_malformed_nih_cases(tmp_path, capsys, corrupt):
    """Every case broken the same way: nothing usable is left, and the message says why."""
    from nih_cases import toy_volume, write_nifti

    data = tmp_path.parent / f"{tmp_path.name}_nih"
    data.mkdir()
    for n in (1, 2, 3):
        hu, label = toy_volume(seed=n)
        write_nifti(data / f"PANCREAS_{n:04d}.nii.gz", hu)
        write_nifti(data / f"label{n:04d}.nii.gz", label, dtype=np.uint8)
        corrupt(data, n)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"UNET": {"dataset": "nih", "num_epochs": 1, "base_width": 4,
                                             "data_source": "real", "data_path": str(data)}}))
    code = NIH_SCRIPT.main(["-f", str(path), "-q"])
    err = capsys.readouterr().err
    assert_clean_refusal(tmp_path, code, err)
    if corrupt is not nih_label_without_image:
        assert str(data / "label0001.nii.gz") in err or str(data / "PANCREAS_0001.nii.gz") in err
