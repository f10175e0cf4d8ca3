"""The shipped experiment folders and the new-experiment tool."""

import os

import pytest
import yaml

from unetq.config import ConfigError, load
from unetq import newexp
from unetq.newexp import create, edit_yaml_text
from unetq.paths import PROJECT_ROOT, base_module, broken_links

# (experiments folder, its BASE, the entry script, the dataset key)
SUITES = [("em", "EM_BASE", "em_unet.py", "em"), ("gm", "GM_BASE", "gmchallenge_unet.py", "gm"),
          ("nih", "NIH_BASE", "nih_unet.py", "nih")]
FOLDERS = [(suite, folder) for suite in SUITES for folder in sorted((PROJECT_ROOT / suite[0]).iterdir())
           if folder.is_dir() and not folder.name.startswith(".")]


@pytest.mark.parametrize("suite,folder", FOLDERS, ids=[f.relative_to(PROJECT_ROOT).as_posix() for _, f in FOLDERS])
def test_shipped_experiment_is_valid_and_linked(suite, folder):
    _, base, script, dataset = suite
    module = base_module(base)
    cfg = load(folder / "config.yaml", "UNET", extra_fields=module.FIELDS, dataset=dataset)
    assert cfg.experiment_name == folder.name
    # the folder holds its config and one link, to the script; the script finds its BASE's modules itself
    assert {p.name for p in folder.iterdir() if not p.name == "runs"} == {"config.yaml", script}
    path = folder / script
    assert path.is_symlink() and not os.path.isabs(os.readlink(path))       # relative: survives a clone
    assert path.resolve() == (PROJECT_ROOT / base / script).resolve()


def test_em_rows_of_the_paper_are_all_there():
    names = {f.name for _, f in FOLDERS}
    assert {"full_precision", "a8_8_w8_8", "a8_0_w0_8", "a6_0_w0_4", "a6_0_w0_2", "a4_0_w0_2", "BNN", "Ternary",
            "a4_4_w4_4", "demo"} <= names
    em = base_module("EM_BASE")
    a6 = load(PROJECT_ROOT / "em/a6_0_w0_4/config.yaml", "UNET", extra_fields=em.FIELDS)
    assert (a6.quantization, a6.activation_i_width, a6.activation_f_width, a6.weight_i_width,
            a6.weight_f_width, a6.fixed_mode) == ("fixed", 6, 0, 0, 4, "pow2")


def test_newexp_creates_links_and_edited_config(tmp_path):
    dest = create(tmp_path / "a5_0_w0_3", PROJECT_ROOT / "EM_BASE",
                  {"quantization": "FIXED", "activation_i_width": 5, "weight_f_width": 3})
    text = (dest / "config.yaml").read_text()
    section = yaml.safe_load(text)["UNET"]
    assert (section["quantization"], section["activation_i_width"], section["weight_f_width"],
            section["experiment_name"]) == ("FIXED", 5, 3, "a5_0_w0_3")
    assert "  quantization: FIXED\n" in text              # an edited key loses the comment about the BASE's value
    assert "activation: relu            # relu | tanh | ternarytanh" in text          # the others keep theirs
    assert (dest / "em_unet.py").resolve() == (PROJECT_ROOT / "EM_BASE/em_unet.py").resolve()
    assert sorted(p.name for p in dest.iterdir()) == ["config.yaml", "em_unet.py"]


def test_relink_removes_links_of_the_older_layout(tmp_path):
    """A folder made when experiment folders also linked the BASE's data module (datasets.py) keeps a
    link that points nowhere: --relink removes it and keeps the script's."""
    dest = create(tmp_path / "em" / "old", PROJECT_ROOT / "EM_BASE", {})
    os.symlink(os.path.relpath(PROJECT_ROOT / "EM_BASE" / "datasets.py", dest), dest / "datasets.py")
    assert broken_links(dest)
    assert newexp.relink(dest, PROJECT_ROOT / "EM_BASE") == ["datasets.py (removed)"]
    assert broken_links(dest) == [] and sorted(p.name for p in dest.iterdir()) == ["config.yaml", "em_unet.py"]


def test_newexp_refuses_existing_folder_and_bad_values(tmp_path):
    existing = tmp_path / "taken"
    existing.mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        create(existing, PROJECT_ROOT / "EM_BASE", {})
    with pytest.raises(ConfigError, match="'weight_f_width': -2 is out of range"):
        create(tmp_path / "bad", PROJECT_ROOT / "EM_BASE", {"weight_f_width": -2})
    assert not (tmp_path / "bad").exists()


def test_newexp_command_line(tmp_path):
    from unetq.newexp import main

    dest = tmp_path / "cli_exp"
    assert main([str(dest), "--base", str(PROJECT_ROOT / "EM_BASE"), "quantization=BNN"]) == 0
    assert yaml.safe_load((dest / "config.yaml").read_text())["UNET"]["quantization"] == "BNN"
    assert main([str(dest), "--base", str(PROJECT_ROOT / "EM_BASE")]) == 2


def test_edit_yaml_text_appends_missing_keys():
    text = "# head\nUNET:\n  lr: 0.1   # rate\nOTHER:\n  x: 1\n"
    out = edit_yaml_text(text, {"lr": 0.5, "seed": 3})
    assert yaml.safe_load(out) == {"UNET": {"lr": 0.5, "seed": 3}, "OTHER": {"x": 1}}
    assert "  lr: 0.5\n" in out and "# rate" not in out and out.startswith("# head\n")   # stale comment gone
