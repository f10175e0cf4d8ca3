"""Fuzz-style: malformed configs and data files fed to the entry points must give one line, a
non-zero exit, no traceback and no output."""

import random

import numpy as np
import pytest
import yaml
from PIL import Image

from unetq.cli import run_script
from unetq.config import COMMON_FIELDS, ConfigError, load
from unetq.paths import base_module

EM = base_module("EM_BASE")
VALID = {"dataset": "em", "num_epochs": 1, "base_width": 4, "phantom_images": 4, "val_sections": 2,
         "experiment_name": "f"}
NASTY = [None, -1, -10**12, 10**30, 1e308, float("nan"), float("inf"), "", "x" * 500, "\u2603", [], [1, 2],
         {}, {"a": 1}, True, 0.5, "1e-3", "-0"]


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Every input here must be refused before training; if one slipped through, fail fast instead
    of training a paper-size model."""
    import unetq.cli

    def refuse(*args):
        raise AssertionError("this malformed input was accepted and reached training")

    monkeypatch.setattr(unetq.cli, "_dispatch", refuse)


def entry(tmp_path, text_or_bytes, capsys):
    path = tmp_path / "config.yaml"
    if isinstance(text_or_bytes, bytes):
        path.write_bytes(text_or_bytes)
    else:
        path.write_text(text_or_bytes, encoding="utf-8")
    code = run_script("em", EM, {}, ["-f", str(path), "-q"])
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
