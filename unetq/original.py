"""Running the original repository's experiments here: its configs, its checkpoints.

The authors' code (hossein1387/U-Net-Fixed-Point-Quantization-for-Medical-Image-Segmentation) read
some config keys differently from what they mean here, and saved its models under other names. This
module holds that knowledge in one place (docs/original-experiments.md describes it for users):

* :func:`dataset_named` reads the free-text ``dataset`` label the original configs carry
  ('gmchallenge', 'emdataset', 'nih', ...): the script decides the dataset, the label is only shown.
* :func:`differences` lists, for a resolved config, every key whose run here differs from what the
  original code ran with the same config; :func:`apply_original` makes the run do what the original
  did (the ``original_code: true`` switch). Both work on plain dicts of config values.
* :func:`is_original_state` / :func:`from_original_state` recognise and rename a state dict saved by
  the original code (``torch.save(model.state_dict())``) to this project's module names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

DATASETS = ("em", "gm", "nih")

# Words that name a dataset in a free-text label (the label is split on non-letters; each word is
# compared after removing the suffixes the original configs used, e.g. 'gmchallenge', 'emdataset').
_NAMES = {
    "em": ("em", "isbi", "electron", "microscopy", "membrane"),
    "gm": ("gm", "scgm", "gray", "grey", "graymatter", "greymatter", "spinal", "spinalcord"),
    "nih": ("nih", "pancreas", "pancreasct", "ct"),
}
_SUFFIXES = ("challenge", "dataset", "data", "set")


def dataset_named(label: Any) -> str | None:
    """The dataset (em | gm | nih) a free-text label clearly names, or None when it names none or
    several: ``'gmchallenge'`` -> gm, ``'em_challenge'`` -> em, ``'emdataset'`` -> em, ``'nih'`` -> nih."""
    words = [w for w in re.split(r"[^a-z]+", str(label).lower()) if w]
    named = set()
    for word in words:
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix):
                word = word[: -len(suffix)]
                break
        named |= {name for name, keys in _NAMES.items() if word in keys}
    return named.pop() if len(named) == 1 else None


def label_notice(label: Any, dataset: str, where: str) -> str | None:
    """The one notice line for a ``dataset`` label naming another dataset than the script trains."""
    named = dataset_named(label)
    if named is None or named == dataset:
        return None
    return (f"notice: {where}: key 'dataset': {label!r} names the {named.upper()} dataset, but this script "
            f"trains {dataset.upper()}; the label is only shown in the log (as in the original code), the "
            f"script decides the data")


@dataclass(frozen=True)
class Difference:
    """One key whose run here differs from the original code's: the value that reproduces the
    original (``value``), and in words what runs here and what the original ran."""

    key: str
    value: Any
    here: str
    original: str

    def line(self) -> str:
        """The header line of a run without ``original_code``."""
        return (f"original code: key {self.key!r}: here {self.here}; the original code ran {self.original} "
                f"(original_code: true runs that)")

    def applied(self, old: Any) -> str:
        """The header line of a run with ``original_code: true``."""
        return f"original_code: {self.key} {_show(old)} -> {_show(self.value)} ({self.original}, as the original code ran)"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


INIT_WORDS = {"uniform": "U(-1, 1) weights, zero bias on the 12 quantized convs",
              "glorot": "Glorot U(+-sqrt(1.5 / (fan_in + fan_out))) on the 12 quantized convs",
              "torch": "PyTorch's default init on every conv"}


def differences(v: Mapping[str, Any], dataset: str | None) -> list[Difference]:
    """Every key of the resolved config ``v`` whose meaning here differs from what the original code
    ran with the same config, for the dataset ``dataset`` the script trains (None: unknown, only the
    rules shared by the three datasets)."""
    found = []
    # Its Conv2dQuant always drew U(-1, 1) (H = 1) and ignored init_type; with Normal its 12 convs were
    # plain nn.Conv2d, so they kept PyTorch's default init.
    init = "torch" if v["quantization"] == "normal" else "uniform"
    if v["init_type"] != init:
        found.append(Difference("init_type", init, f"{v['init_type']}: {INIT_WORDS[v['init_type']]}",
                                INIT_WORDS[init] + " (it ignored init_type)"))
    # Its blocks ran ternaryTanh for 'ternarytanh' and ReLU for anything else.
    activation = v["activation"]
    if activation == "tanh":
        found.append(Difference("activation", "relu", "tanh is tanh", "ReLU (anything but ternarytanh fell "
                                                                      "through to ReLU)"))
        activation = "relu"
    # The GM model kept ReLU in the first block even with ternaryTanh (its NIH model did not).
    if dataset == "gm" and activation == "ternarytanh" and v.get("first_block_activation", "same") == "same":
        found.append(Difference("first_block_activation", "relu", "ternaryTanh in all 7 blocks",
                                "ReLU in the first encoder block (its GM model)"))
    if v["dropout"]:
        found.append(Difference("dropout", False, "Dropout2d(0.4) after every BatchNorm",
                                "no dropout (its dropout layers were commented out; the key was never read)"))
    if v["quantization"] == "fixed" and dataset in DATASETS:
        mode = "pow2" if dataset == "em" else "paper"
        if v["fixed_mode"] != mode:
            found.append(Difference("fixed_mode", mode, f"fixed_mode {v['fixed_mode']}",
                                    f"{mode} (its {dataset.upper()} quantizer)"))
    if dataset == "em" and v["loss"] == "bce_dice" and not v["legacy_double_sigmoid"]:
        found.append(Difference("legacy_double_sigmoid", True, "the EM loss applies one sigmoid",
                                "a second sigmoid on its model's probabilities in the EM loss"))
    if dataset == "nih" and v.get("intensity") == "window":
        found.append(Difference("intensity", "legacy_clip", "the HU window hu_min..hu_max -> [0, 1]",
                                "HU clipped to 0..255, min-max per slice"))
    if dataset == "nih" and v.get("val_crop") == "body":
        found.append(Difference("val_crop", "legacy_gt", "validation crops centred without the label",
                                "validation crops centred on the validation label"))
    return found


def apply_original(v: dict, dataset: str | None) -> list[str]:
    """Set every key of ``v`` that :func:`differences` names to what the original code ran; returns
    one line per change, for the log. (One pass is enough: :func:`differences` already judges the
    later rules on the corrected activation.)"""
    lines = []
    for d in differences(v, dataset):
        lines.append(d.applied(v.get(d.key)))
        v[d.key] = d.value
    return lines


# --------------------------------------------------------------------------------------------
# State dicts saved by the original code
# --------------------------------------------------------------------------------------------

# Its module names -> ours: DownConv conv1..conv4 are our encoder blocks and bottom, UpConv up1..up3
# hold theirs in .downconv, conv9 is the head. Inside a block: conv1, conv1_bn, conv2, conv2_bn.
_BLOCKS = {"conv1": "enc1", "conv2": "enc2", "conv3": "enc3", "conv4": "bottom",
           "up1.downconv": "dec3", "up2.downconv": "dec2", "up3.downconv": "dec1"}
_LAYERS = {"conv1": "conv1", "conv1_bn": "bn1", "conv2": "conv2", "conv2_bn": "bn2"}
_KEY = re.compile(r"^(conv[1-4]|up[1-3]\.downconv)\.(conv[12](?:_bn)?)\.(\w+)$")


def is_original_state(state: Mapping[str, Any]) -> bool:
    """True for a state dict with the original code's names (``conv1.conv1.weight``, ..., ``conv9.weight``)."""
    keys = set(state)
    return "conv9.weight" in keys and any(k.startswith("up1.downconv.") for k in keys)


def original_name(ours: str) -> str | None:
    """The original code's name of one of our state-dict keys (None for keys it did not have)."""
    if ours.startswith("head."):
        return "conv9." + ours[len("head."):]
    block, _, rest = ours.partition(".")
    layer, _, attr = rest.partition(".")
    theirs = {v: k for k, v in _BLOCKS.items()}.get(block)
    layer_theirs = {v: k for k, v in _LAYERS.items()}.get(layer)
    if theirs is None or layer_theirs is None or not attr:
        return None
    return f"{theirs}.{layer_theirs}.{attr}"


def to_original_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under the original code's names (the keys it lacked, ternaryTanh's beta, dropped):
    what ``torch.save(model.state_dict())`` of the original model holds for the same weights."""
    out = {}
    for key, value in state.items():
        name = original_name(key)
        if name is not None:
            out[name] = value
    return out


def from_original_state(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Rename an original state dict to our names, for a model whose state dict is ``own``.

    Keys the original did not save are taken from ``own`` (ternaryTanh's beta: the original kept it
    outside the state dict, so a loaded model had its initial 3.0, which ``own`` holds; a BatchNorm's
    ``num_batches_tracked`` from PyTorch before 0.4.1). Keys that do not map are kept under their
    original names, so that the caller's check names them. Returns (state dict, notices)."""
    mapped, notices = {}, []
    for key, value in state.items():
        match = _KEY.match(key)
        if match:
            mapped[f"{_BLOCKS[match.group(1)]}.{_LAYERS[match.group(2)]}.{match.group(3)}"] = value
        elif key.startswith("conv9."):
            mapped["head." + key[len("conv9."):]] = value
        else:
            mapped[key] = value
    filled = [k for k in own if k not in mapped and (k.endswith(".beta") or k.endswith(".num_batches_tracked"))]
    for key in filled:
        mapped[key] = own[key].clone()
    if any(k.endswith(".beta") for k in filled):
        notices.append(f"note: the original checkpoint has no ternaryTanh beta (the original code kept it "
                       f"outside the state dict): {float(own[next(k for k in filled if k.endswith('.beta'))]):g} "
                       f"is used, the value the original model had when it loaded one")
    return mapped, notices
