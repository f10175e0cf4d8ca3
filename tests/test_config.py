"""Configuration: every class of bad input gives one clear line, a non-zero exit, nothing written."""

from pathlib import Path

import pytest
import yaml

from unetq.config import COMMON_FIELDS, RECIPES, ConfigError, load, parse_overrides, validate
from unetq.paths import base_module

EM_SCRIPT = base_module("EM_BASE", "em_unet")

EM = base_module("EM_BASE")
DEFAULTS = {f.name: f.default for f in COMMON_FIELDS}
GOOD = {"dataset": "em", "num_epochs": 1, "base_width": 4, "phantom_images": 4, "val_sections": 2}


def write_config(folder: Path, section: dict | str, name: str = "UNET") -> Path:
    path = folder / "config.yaml"
    text = section if isinstance(section, str) else yaml.safe_dump({name: section})
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(tmp_path, section, capsys, extra_args=(), name="UNET"):
    path = write_config(tmp_path, section, name)
    code = EM_SCRIPT.main(["-f", str(path), "-t", "UNET", "-q", *extra_args])
    err = capsys.readouterr().err.strip()
    return code, err


BAD = [
    ({**GOOD, "num_epoch": 3}, r"unknown key 'num_epoch' \(did you mean 'num_epochs'\?\)"),
    ({**GOOD, "num_epochs": "ten"}, r"key 'num_epochs': 'ten' is not an integer; allowed: an integer from 1"),
    ({**GOOD, "lr": "fast"}, r"key 'lr': 'fast' is not a number"),
    ({**GOOD, "dropout": "maybe"}, r"key 'dropout': 'maybe' is not a boolean"),
    ({**GOOD, "weight_f_width": -1}, r"key 'weight_f_width': -1 is out of range; allowed: an integer from 0 to 16"),
    ({**GOOD, "activation_i_width": 99}, r"key 'activation_i_width': 99 is out of range"),
    ({**GOOD, "quantization": "fixed", "weight_i_width": 16, "weight_f_width": 16,
      "activation_i_width": 6}, r"'weight_i_width' \+ 'weight_f_width' = 16 \+ 16"),
    ({**GOOD, "quantization": "fixed"}, r"'weight_i_width' \+ 'weight_f_width' = 0 \+ 0"),
    ({**GOOD, "quantization": "int", "weight_i_width": 4}, r"key 'activation_i_width': 0 is not allowed for INT"),
    ({**GOOD, "quantization": "FIXD"}, r"key 'quantization': 'FIXD' is not allowed; allowed: one of normal, fixed, "
                                       r"int, bnn, ternary \(did you mean 'fixed'\?\)"),
    ({**GOOD, "activation": "relu6"}, r"key 'activation': 'relu6' is not allowed.*\(did you mean 'relu'\?\)"),
    ({**GOOD, "operation_mode": "train"}, r"key 'operation_mode': 'train' is not allowed"),
    ({**GOOD, "fixed_mode": "pow"}, r"key 'fixed_mode': 'pow' is not allowed.*did you mean 'pow2'"),
    ({**GOOD, "operation_mode": "inference"}, r"key 'trained_model' is required when operation_mode is 'inference'"),
    ({**GOOD, "operation_mode": "retrain"}, r"key 'trained_model' is required"),
    ({**GOOD, "operation_mode": "visualize"}, r"key 'trained_model' is required"),
    ({**GOOD, "data_source": "real"}, r"key 'data_path' is required when data_source is 'real'"),
    ("UNET:\n  lr: 0.1\n  LR: 0.2\n", r"key 'lr' is given twice \(as 'lr' and 'LR'\)"),
    ({**GOOD, "device": "tpu"}, r"key 'device': 'tpu' is not allowed; allowed: auto, cpu, cuda, cuda:N"),
    ({**GOOD, "foreground": "nucleus"}, r"key 'foreground': 'nucleus' is not allowed; allowed: one of cell, membrane"),
    ({**GOOD, "operation_mode": "inference", "trained_model": "nowhere.pt"}, r"nowhere.pt: checkpoint not found"),
    ("UNET: [1, 2]\n", r"section 'UNET' must be a mapping"),
    ("", r"the file is empty"),
    ("UNET:\n  lr: [unclosed\n", r"unreadable YAML at line"),
    ("- just\n- a list\n", r"expected sections like 'UNET:'"),
]


@pytest.mark.parametrize("section,message", BAD)
def test_bad_config_gives_one_clear_line_and_writes_nothing(tmp_path, capsys, section, message):
    code, err = run_cli(tmp_path, section, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert pytest.importorskip("re").search(message, err), err
    assert "config.yaml" in err or "nowhere.pt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_missing_section_lists_the_sections_found(tmp_path, capsys):
    code, err = run_cli(tmp_path, GOOD, capsys, name="UNET2")
    assert code == 2 and "no section 'UNET' (the -t argument); sections found: UNET2" in err


def test_non_utf8_and_missing_file(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"UNET:\n  lr: \xff\xfe\n")
    assert EM_SCRIPT.main(["-f", str(path)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert EM_SCRIPT.main(["-f", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_overrides_are_validated_like_the_file(tmp_path, capsys):
    code, err = run_cli(tmp_path, GOOD, capsys, ["-o", "num_epochs=zero"])
    assert code == 2 and "key 'num_epochs': 'zero' is not an integer" in err
    assert err.startswith("error: -o override (on ")          # the override is named, not the good file
    code, err = run_cli(tmp_path, GOOD, capsys, ["-o", "base_width16"])
    assert code == 2 and "'base_width16' is not of the form key=value" in err
    assert parse_overrides(["num_epochs=2", "base_width=16", "dropout=true", "lr=1e-3"]) == \
        {"num_epochs": 2, "base_width": 16, "dropout": True, "lr": "1e-3"}


def test_an_override_in_another_case_replaces_the_file_key(tmp_path):
    path = write_config(tmp_path, {**GOOD, "lr": 1e-3})
    cfg = load(path, "UNET", parse_overrides(["LR=0.01"]), extra_fields=EM.FIELDS, dataset="em")
    assert cfg.lr == 0.01


def test_values_are_case_insensitive_and_typed(tmp_path):
    path = write_config(tmp_path, {**GOOD, "quantization": "Fixed", "activation": "ReLU", "lr": "1e-3",
                                   "weight_f_width": 4, "activation_i_width": 6, "dropout": "Enable",
                                   "fixed_mode": "POW2", "num_epochs": None})
    text = path.read_text().replace("num_epochs: null", "Num_Epochs: 7")
    path.write_text(text)
    cfg = load(path, "UNET", extra_fields=EM.FIELDS, dataset="em")
    assert (cfg.quantization, cfg.activation, cfg.lr, cfg.dropout, cfg.fixed_mode, cfg.num_epochs) == \
        ("fixed", "relu", 1e-3, True, "pow2", 7)
    assert cfg.experiment_name == tmp_path.name              # default: the config's folder
    assert cfg.path("log_output_dir") == tmp_path / "runs"    # paths relative to the config file


def test_precedence_default_recipe_file_override(tmp_path):
    """The dataset's recipe (config.RECIPES) replaces the schema default; the file and -o replace both."""
    path = write_config(tmp_path, {**GOOD, "batch_size": 7})
    cfg = load(path, "UNET", {"val_batch_size": 3}, dataset="em")
    assert (cfg.batch_size, cfg.val_batch_size, cfg.loss, cfg.lr) == (7, 3, "bce_dice", 1e-3)
    assert RECIPES["em"]["loss"] == "bce_dice" and DEFAULTS["loss"] == "dice"          # the recipe decided
    (tmp_path / "gm").mkdir()
    gm = load(write_config(tmp_path / "gm", {"dataset": "gm", "num_epochs": 1}), "UNET", dataset="gm")
    assert (gm.batch_size, gm.loss, gm.lr_schedule) == (16, "dice", "cosine")        # GM: the schema defaults


def test_cuda_request_falls_back_to_cpu_with_a_notice():
    from unetq.engine import select_device
    import torch

    cfg = validate({"device": "cuda:1"}, dataset="em", extra_fields=EM.FIELDS)
    device, notice = select_device(cfg)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert device.type == "cpu" and "running on the CPU" in notice


def test_config_error_is_a_value_error_with_one_line():
    with pytest.raises(ConfigError) as info:
        validate({"lr": -1}, dataset="em")
    assert "\n" not in str(info.value)


def test_repeated_override_flags_accumulate(tmp_path):
    from unetq.session import parse_args

    args = parse_args(["-f", "c.yaml", "-o", "num_epochs=1", "-o", "base_width=4", "seed=3"], prog="x")
    assert args.override == ["num_epochs=1", "base_width=4", "seed=3"]
