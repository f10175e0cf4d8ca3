"""The original repository's experiments run here: its free-text dataset labels, the keys whose meaning
differs (and the original_code switch), trained_model as the best model's path, its checkpoints, and
experiment folders copied to another depth (docs/original-experiments.md)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from unetq import checkpoint, convert, newexp, original, sweep
from unetq.config import validate
from unetq.models import build_model
from unetq.paths import PROJECT_ROOT, base_module, broken_links
from unetq.weights import sha256


SCRIPTS = {name: base_module(f"{name.upper()}_BASE", script) for name, script in
           (("em", "em_unet"), ("gm", "gmchallenge_unet"), ("nih", "nih_unet"))}
# Small phantoms, so that each run takes a few CPU seconds (the configs themselves stay as written).
SMALL = {"em": ["phantom_images=4", "val_sections=2"],
         "gm": ["sites=1", "phantom_subjects=3", "phantom_slices=3", "train_subjects=1-2", "val_subjects=3",
                "crop_size=64", "batch_size=4", "val_batch_size=4"],
         "nih": ["phantom_patients=4", "crop_height=32", "crop_width=48"]}


def run(dataset, config, out, *overrides):
    """Run the dataset's script on ``config`` with a tiny protocol, as its experiment folder would."""
    args = ["-f", str(config), "-t", "UNET", "-q", "-o", f"log_output_dir={out}", "num_epochs=1", "base_width=4",
            *SMALL[dataset], *overrides]
    return SCRIPTS[dataset].main(args)


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text, encoding="utf-8")
    return folder / "config.yaml"


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_dataset_is_a_free_label_naming_at_most_a_notice():
    named = {"gmchallenge": "gm", "emchallenge": "em", "em_challenge": "em", "emdataset": "em", "nih": "nih",
             "NIH pancreas": "nih", "spinal cord gray matter": "gm", "ISBI 2012": "em", "my experiment": None,
             "anything": None, "em vs gm": None}
    assert {label: original.dataset_named(label) for label in named} == named
    line = original.label_notice("gmchallenge", "em", "x/config.yaml")
    assert line.startswith("notice: x/config.yaml: key 'dataset': 'gmchallenge' names the GM dataset, but this "
                           "script trains EM")
    assert original.label_notice("emdataset", "em", "c") is None and original.label_notice("foo", "em", "c") is None
    cfg = validate({"dataset": "gmchallenge"}, dataset="em")
    assert (cfg.dataset, cfg.label) == ("em", "gmchallenge") and "names the GM dataset" in cfg.notices[0]


def resolved(name, /, **keys):
    return validate(keys, dataset=name)


def test_each_key_the_original_code_read_differently_is_named_and_the_switch_runs_what_it_ran():
    keys = dict(init_type="glorot", quantization="FIXED", activation_i_width=6, weight_f_width=4,
                activation="tanh", dropout="enable")
    here = resolved("em", **keys)
    assert here.fixed_mode == "pow2"            # EM's default is the authors' EM quantizer
    lines = [n for n in here.notices if n.startswith("original code:")]
    assert [line.split("'")[1] for line in lines] == ["init_type", "activation", "dropout", "legacy_double_sigmoid"]
    assert "the original code ran ReLU" in lines[1] and "original_code: true runs that" in lines[1]
    switched = resolved("em", **keys, original_code=True)
    assert (switched.init_type, switched.activation, switched.dropout, switched.fixed_mode,
            switched.legacy_double_sigmoid) == ("uniform", "relu", False, "pow2", True)
    assert switched.notices == ["original_code: init_type glorot -> uniform (U(-1, 1) weights, zero bias on the 12 "
                                "quantized convs (it ignored init_type), as the original code ran)",
                                "original_code: activation tanh -> relu (ReLU (anything but ternarytanh fell through "
                                "to ReLU), as the original code ran)",
                                "original_code: dropout true -> false (no dropout (its dropout layers were commented "
                                "out; the key was never read), as the original code ran)",
                                "original_code: legacy_double_sigmoid false -> true (a second sigmoid on its model's "
                                "probabilities in the EM loss, as the original code ran)"]
    assert not [n for n in resolved("em", **switched.to_dict()).notices if n.startswith("original")]   # a fixed point
    gm = resolved("gm", quantization="ternary", activation="ternaryTanh", init_type="glorot", original_code=True)
    assert (gm.first_block_activation, gm.init_type) == ("relu", "uniform")
    nih = resolved("nih", quantization="ternary", activation="ternarytanh", original_code=True)
    assert (nih.first_block_activation, nih.intensity, nih.val_crop) == ("same", "legacy_clip", "legacy_gt")
    full = resolved("gm", quantization="Normal", init_type="glorot", original_code=True)
    assert full.init_type == "torch" and resolved("gm", fixed_mode="pow2", quantization="fixed", activation_i_width=4,
                                                  weight_f_width=2, original_code=True).fixed_mode == "paper"


def test_the_model_follows_the_original_rules():
    gm = build_model({"quantization": "ternary", "activation": "ternarytanh", "first_block_activation": "relu",
                      "base_width": 4})
    assert type(gm.enc1.act1).__name__ == "ReLU" and type(gm.dec1.act1).__name__ == "TernaryTanh"
    torch.manual_seed(0)
    plain = build_model({"quantization": "normal", "init_type": "torch", "base_width": 8})
    uniform = build_model({"quantization": "normal", "init_type": "uniform", "base_width": 8})
    w_plain, w_uniform = plain.enc2.conv1.weight, uniform.enc2.conv1.weight
    assert w_plain.abs().max() <= 1 / (8 * 9) ** 0.5 + 1e-6        # PyTorch's bound 1/sqrt(fan_in)
    assert w_uniform.abs().max() > 0.9 and float(plain.enc2.conv1.bias.detach().abs().sum()) > 0


# Configs in the original repository's style (written for this test): its mixed spellings ("Fixed",
# "NOrmal", "ternaryTanh", dropout "false" / "enable"), gpu_core_num 0-3, labels that name other datasets,
# absolute output paths of another machine, a nested folder.
ORIGINALS = {
    "em/UNET_EM_DATASET_a4_0_w0_2/UNET_EM_DATASET_a6_0_w0_2": ("em", """UNET:
    dataset: 'gmchallenge'
    lr: 0.001
    num_epochs: 200
    model_type: "unet"
    init_type: glorot
    quantization: "FIXED" # "INT", "BNN", "Normal", "FIXED"
    activation_f_width: 0
    activation_i_width: 6
    weight_f_width: 2
    weight_i_width: 0
    gpu_core_num: 3
    activation: "tanh"
    trained_model: "/export/somewhere/em_a6_0_w0_2/em_a6_0_w0_2.pkl"
    experiment_name: "em_a6_0_w0_2"
    log_output_dir: "/export/somewhere/results/"
    operation_mode: "normal" # normal, visualize, retrain, inference
    # trained_model: ""
"""),
    "em/UNET_EM_DATASET_FULL_PRECISION": ("em", """UNET:
    dataset: 'em_challenge'
    lr: 0.001
    num_epochs: 200
    model_type: "unet"
    init_type: glorot
    quantization: "Normal"
    gpu_core_num: 1
    activation: 'tanh'
    trained_model: "/export/somewhere/em_fp.pkl"
    experiment_name: "em_tanh_full_precision"
    log_output_dir: "/export/somewhere/results/"
    operation_mode: "NOrmal"
"""),
    "gm/UNET_Quant_Ternary": ("gm", """UNET:
    dataset: 'gmchallenge'
    lr: 0.001
    num_epochs: 200
    model_type: "unet"
    init_type: glorot
    quantization: "Ternary"
    gpu_core_num: 1
    activation: "ternaryTanh"
    dropout: "false"
    trained_model: "/export/somewhere/gm_ternary.pkl"
    experiment_name: "gm_ternary"
    log_output_dir: "/export/somewhere/results/"
    operation_mode: "normal"
"""),
    "gm/UNET_Quant_4_0_0_2_with_drop_out": ("gm", """UNET:
    dataset: 'gmchallenge'
    lr: 0.0001
    num_epochs: 200
    model_type: "unet"
    init_type: glorot
    quantization: "Fixed" # "INT", "BNN", "Normal"
    activation_f_width: 0
    activation_i_width: 4
    weight_f_width: 2
    weight_i_width: 0
    gpu_core_num: 0
    dropout: "enable" # disable
    trained_model: "/export/somewhere/full_precision.pkl"
    experiment_name: "a4_0_w0_2_with_dropout"
    log_output_dir: "/export/somewhere/results/"
    operation_mode: "visualize"
"""),
    "nih/UNET_QUANT_NIH_BNN": ("nih", """UNET:
    dataset: 'nih'
    lr: 0.0025
    num_epochs: 200
    model_type: "unet"
    init_type: glorot
    quantization: "BNN" # "INT", "BNN", "Normal", "FIXED", "XNOR"
    gpu_core_num: 2
    dropout: "disable" # disable
    activation: "relu"
    trained_model: "/export/somewhere/nih_bnn.pkl"
    experiment_name: "nih_bnn"
    log_output_dir: "/export/somewhere/results/"
    operation_mode: "normal"
"""),
}


@pytest.mark.parametrize("name", sorted(ORIGINALS), ids=lambda n: n.split("/")[-1])
def test_original_style_configs_run_to_the_end_unchanged(tmp_path, name):
    dataset, text = ORIGINALS[name]
    config = write(tmp_path / name, text)
    out, model = tmp_path / "out", tmp_path / "models" / "model.pkl"
    section = yaml.safe_load(text)["UNET"]
    if section["operation_mode"] == "visualize":      # its trained_model: a model this project wrote
        assert run(dataset, config, out, f"trained_model={model}", "operation_mode=normal") == 0
    assert run(dataset, config, out, f"trained_model={model}") == 0
    run_dir = out / section["experiment_name"]
    done = sorted(run_dir.glob("visualize_*")) or [run_dir]
    log = (done[0] / "log.txt").read_text()
    assert summary(done[0])["status"] == "complete"
    assert f"dataset label {section['dataset']!r}" in log
    assert ("names the GM dataset" in log) == (dataset == "em" and section["dataset"] == "gmchallenge")
    assert "key 'init_type': here glorot" in log                 # every original config said glorot
    if section["operation_mode"] != "visualize":
        assert model.is_file() and summary(run_dir)["trained_model_written"] == str(model.resolve())


def test_paper_readme_example_trains_to_trained_model_then_infers_from_it(tmp_path):
    config = write(tmp_path / "em" / "em_a4_4_w4_4", """UNET:
    dataset: 'emdataset'
    lr: 0.001
    num_epochs: 200
    model_type: "unet"
    init_type: glorot
    quantization: "FIXED"
    activation_f_width: 4
    activation_i_width: 4
    weight_f_width: 4
    weight_i_width: 4
    gpu_core_num: 1
    trained_model: "/path/to/trained/models/em_a4_4_w4_4.pkl"
    experiment_name: "em_a4_4_w4_4"
    log_output_dir: "/path/to/output/folder"
    operation_mode: "normal"
""")
    out, model = tmp_path / "out", tmp_path / "trained" / "em_a4_4_w4_4.pkl"
    assert run("em", config, out, f"trained_model={model}") == 0
    run_dir = out / "em_a4_4_w4_4"
    best = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    written = torch.load(model, weights_only=True)
    assert all(torch.equal(best[k], written["model"][k]) for k in best) and written["format"] == checkpoint.FORMAT
    first = sha256(model)
    assert run("em", config, out, f"trained_model={model}", "operation_mode=inference") == 0
    infer = sorted(run_dir.glob("inference_*"))[0]
    assert summary(infer)["weights_from"] == {"path": str(model.resolve()), "sha256": first}
    assert f"weights from: {model.resolve()} (sha256 {first})" in (infer / "log.txt").read_text()
    # training again keeps the earlier best model as a backup beside it
    assert run("em", config, out, f"trained_model={model}") == 0
    backups = sorted(model.parent.glob("em_a4_4_w4_4_backup_*.pkl"))
    assert len(backups) == 1 and sha256(backups[0]) == first and model.is_file()


def test_unwritable_trained_model_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    config = write(tmp_path / "exp", "UNET:\n  dataset: em\n")
    assert run("em", config, tmp_path / "out", f"trained_model={blocker}/best.pkl") == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "key 'trained_model': cannot create its folder" in err and str(blocker) in err
    assert not (tmp_path / "out").exists()
    assert run("em", config, tmp_path / "out", f"trained_model={tmp_path}") == 2
    assert "names a folder" in capsys.readouterr().err


def test_a_retrain_records_its_real_source_and_never_writes_it(tmp_path):
    config = write(tmp_path / "exp", "UNET:\n  dataset: em\n  experiment_name: same\n")
    out = tmp_path / "out"
    assert run("em", config, out) == 0
    source_hash = sha256(out / "same" / "best.pt")
    assert run("em", config, out, "operation_mode=retrain", f"trained_model={out / 'same' / 'best.pt'}") == 0
    record = summary(out / "same")["weights_from"]
    backup = next(out.glob("same_backup_*"))
    assert record == {"path": str((backup / "best.pt").resolve()), "sha256": source_hash}
    assert sha256(backup / "best.pt") == source_hash               # the source is left as it was


def original_names(model) -> dict:
    """The model's weights under the original code's names, built from the issue's key table and the
    architecture (DownConv conv1..conv4, UpConv up1..up3 holding .downconv, conv9; inside a block
    conv1, conv1_bn, conv2, conv2_bn), independently of unetq.original."""
    blocks = [("conv1", model.enc1), ("conv2", model.enc2), ("conv3", model.enc3), ("conv4", model.bottom),
              ("up1.downconv", model.dec3), ("up2.downconv", model.dec2), ("up3.downconv", model.dec1)]
    state = {}
    for prefix, block in blocks:
        for theirs, module in (("conv1", block.conv1), ("conv1_bn", block.bn1), ("conv2", block.conv2),
                               ("conv2_bn", block.bn2)):
            for attr, tensor in module.state_dict().items():
                state[f"{prefix}.{theirs}.{attr}"] = tensor.clone()
    for attr, tensor in model.head.state_dict().items():
        state[f"conv9.{attr}"] = tensor.clone()
    return state


def trained_like(options: dict):
    """A model with random weights and BatchNorm statistics (as after training), in eval mode."""
    torch.manual_seed(3)
    model = build_model(options)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith("beta"):
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.25 if "running_var" in name else torch.randn_like(tensor) * 0.3)
    return model.eval()


@pytest.mark.parametrize("options", [
    {"quantization": "fixed", "activation_i_width": 6, "weight_f_width": 4, "fixed_mode": "pow2", "base_width": 4},
    {"quantization": "ternary", "activation": "ternarytanh", "first_block_activation": "relu", "base_width": 4},
], ids=["a6_0_w0_4", "ternary"])
def test_original_checkpoints_convert_and_give_the_same_outputs(tmp_path, options):
    native = trained_like(options)
    state = original_names(native)
    assert len(state) == 100 and "up1.downconv.conv2.bias" in state and "conv1.conv1_bn.running_mean" in state
    torch.save(state, tmp_path / "em_model.pkl")
    config = write(tmp_path / "em" / "exp", yaml.safe_dump({"UNET": {"dataset": "emchallenge", **options}}))
    os.symlink(PROJECT_ROOT / "EM_BASE" / "em_unet.py", tmp_path / "em" / "exp" / "em_unet.py")
    assert convert.main([str(tmp_path / "em_model.pkl"), str(tmp_path / "out.pt"), "--config", str(config)]) == 0
    assert convert.main([str(tmp_path / "em_model.pkl"), str(tmp_path / "out.pt"), "--config", str(config)]) == 2
    ckpt = checkpoint.load(tmp_path / "out.pt")
    assert ckpt["source"]["sha256"] == sha256(tmp_path / "em_model.pkl")
    converted = build_model(ckpt["config"])
    converted.load_state_dict(ckpt["model"])
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), native(x))
    # the scripts read the original file as it is, too: the same metrics as the native checkpoint
    checkpoint.save({"model": native.state_dict(), "config": {}}, tmp_path / "native.pt")
    metrics = []
    for source in ("native.pt", "em_model.pkl"):
        assert run("em", config, tmp_path / "runs", "operation_mode=inference", f"trained_model={tmp_path / source}",
                   f"experiment_name={source.split('.')[0]}") == 0
        folder = next((tmp_path / "runs" / source.split(".")[0]).glob("inference_*"))
        metrics.append(summary(folder)["metrics"])
    assert metrics[0] == metrics[1]
    assert "saved by the original code" in (folder / "log.txt").read_text()


def test_newexp_finds_the_base_refuses_another_dataset_and_relinks_a_moved_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gm").mkdir()
    assert newexp.main(["gm/x", "--base", "EM_BASE"]) == 2
    assert "lies in gm/, but EM_BASE trains 'em'; use --base GM_BASE" in capsys.readouterr().err
    assert newexp.main(["em/a4_0_w0_2", "--base", "EM_BASE", "quantization=FIXED", "activation_i_width=4",
                        "weight_f_width=2"]) == 0                          # EM_BASE found in the repository
    shutil.copytree("em/a4_0_w0_2", "em/a4_0_w0_2/a6_0_w0_2", symlinks=True)   # cp -r one level deeper
    nested = tmp_path / "em/a4_0_w0_2/a6_0_w0_2"
    lines = broken_links(nested)
    assert len(lines) == 1 and lines[0].startswith(f"{nested}/em_unet.py: a link to ../../")
    assert lines[0].endswith("recreate the links with: python -m unetq.newexp em/a4_0_w0_2/a6_0_w0_2 --base "
                             "EM_BASE --relink")
    assert sweep.find_experiments([tmp_path / "em"]) == [tmp_path / "em/a4_0_w0_2", nested]   # nested found
    capsys.readouterr()
    assert sweep.main([str(nested)]) == 1                     # not started: the link is named instead
    captured = capsys.readouterr()
    assert "[sweep] a4_0_w0_2/a6_0_w0_2: not run: " in captured.out and "em_unet.py: a link to ../../" in captured.err
    assert "--base EM_BASE --relink" in captured.err and not (nested / "runs").exists()
    assert newexp.main(["em/a4_0_w0_2/a6_0_w0_2", "--base", "EM_BASE"]) == 2
    assert "its links are broken: repair them with --relink" in capsys.readouterr().err
    assert newexp.main(["em/a4_0_w0_2/a6_0_w0_2", "--base", "EM_BASE", "--relink"]) == 0
    assert broken_links(nested) == []
    assert (nested / "em_unet.py").resolve() == (PROJECT_ROOT / "EM_BASE/em_unet.py").resolve()
    assert not os.path.isabs(os.readlink(nested / "em_unet.py"))


def test_a_script_names_a_broken_link_of_its_folder(tmp_path):
    config = write(tmp_path / "exp", "UNET:\n  dataset: em\n  experiment_name: e\n")
    os.symlink("../../nowhere/datasets.py", tmp_path / "exp" / "datasets.py")
    assert run("em", config, tmp_path / "out") == 0
    log = (tmp_path / "out" / "e" / "log.txt").read_text()
    assert f"notice: {tmp_path / 'exp' / 'datasets.py'}: a link to ../../nowhere/datasets.py, which does not exist" in log
