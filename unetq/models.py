"""The paper's U-Net with quantized convolutions (docs/method.md section 3).

    input (1 ch) -> enc1 -> pool -> enc2 -> pool -> enc3 -> pool -> bottom
                 -> up + cat(enc3) -> dec3 -> up + cat(enc2) -> dec2 -> up + cat(enc1) -> dec1 -> head

Every block is two times [3x3 conv -> activation -> BatchNorm -> (dropout) -> activation quantizer].
enc1's two convs and the 3x3 head are plain ``nn.Conv2d`` (float); the other 12 convs are
:class:`~unetq.layers.QuantConv2d`, so ``isinstance(m, QuantConv2d)`` tells a quantized conv from a
float one everywhere. At base width 64 the network has 4,837,249 trainable parameters. It returns logits.

:func:`build_model` takes a config that is already validated (a :class:`unetq.config.Config`, or a
mapping made by :func:`validate_model_keys`); it does not check values again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import COMMON_FIELDS, Config, validate
from .layers import FLOAT, ActivationQuantizer, QuantConv2d, QuantFormat, TernaryTanh, make_activation


class Block(nn.Sequential):
    """Two [conv -> activation -> BatchNorm -> (Dropout2d) -> activation quantizer] stages. With
    ``weights=None`` the convs are plain float ``nn.Conv2d`` (the first block), else QuantConv2d."""

    def __init__(self, cin: int, cout: int, weights: QuantFormat | None, acts: QuantFormat, activation: str,
                 dropout: bool):
        layers = OrderedDict()
        for k, c in ((1, cin), (2, cout)):
            # the same 3x3 / padding 1 conv either way: same parameters, same init draws
            layers[f"conv{k}"] = (nn.Conv2d(c, cout, 3, padding=1) if weights is None
                                  else QuantConv2d(c, cout, weights))
            layers[f"act{k}"] = make_activation(activation)
            layers[f"bn{k}"] = nn.BatchNorm2d(cout, momentum=0.1)
            if dropout:
                # before the quantizer, so that the 1/(1-p) rescaling does not push values off the grid
                layers[f"drop{k}"] = nn.Dropout2d(0.4)
            layers[f"quant{k}"] = ActivationQuantizer(acts)
        super().__init__(layers)


class UNet(nn.Module):
    """The quantized U-Net. ``weights`` / ``acts`` are the formats of the 12 quantized convs and of
    every activation quantizer; ``base_width`` scales all widths (64 = the paper)."""

    def __init__(self, weights: QuantFormat = FLOAT, acts: QuantFormat = FLOAT, activation: str = "relu",
                 dropout: bool = False, base_width: int = 64, init_type: str = "uniform",
                 first_block_activation: str = "same"):
        super().__init__()
        w1, w2, w4 = base_width, 2 * base_width, 4 * base_width

        def block(cin, cout, fmt=weights, act=activation):
            return Block(cin, cout, fmt, acts, act, dropout)

        # first block: float convs, quantized activations (ReLU there with "relu": the original GM model)
        self.enc1 = block(1, w1, None, activation if first_block_activation == "same" else first_block_activation)
        self.enc2 = block(w1, w2)
        self.enc3 = block(w2, w4)
        self.bottom = block(w4, w4)
        self.dec3 = block(w4 + w4, w4)
        self.dec2 = block(w4 + w2, w2)
        self.dec1 = block(w2 + w1, w1)
        self.head = nn.Conv2d(w1, 1, kernel_size=3, padding=1)
        self.weight_format, self.activation_format = weights, acts
        self.init_type = init_type          # recorded so that a model can describe itself (unetq.export)
        self._init_quantized(init_type)

    def quantized_convs(self) -> list[tuple[str, QuantConv2d]]:
        """The 12 convs whose weights are quantized (named as in the state dict)."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, QuantConv2d)]

    def _init_quantized(self, init_type: str) -> None:
        """U(-1, 1) weights and zero bias on the quantizable convs (what the original did when it
        quantized), or the Glorot variant U(+-sqrt(1.5 / (fan_in + fan_out))), or ``torch``: PyTorch's
        default kept (what the original's plain convs had under Normal); the float convs keep PyTorch's
        default."""
        if init_type == "torch":
            return
        for _, conv in self.quantized_convs():
            if init_type == "glorot":
                fan_in = conv.in_channels * 9
                fan_out = conv.out_channels * 9
                bound = math.sqrt(1.5 / (fan_in + fan_out))
            elif init_type == "uniform":
                bound = 1.0
            else:
                raise ValueError(f"init_type must be uniform, glorot or torch, got {init_type!r}")
            nn.init.uniform_(conv.weight, -bound, bound)
            nn.init.zeros_(conv.bias)

    def set_ternary_beta(self, beta: float) -> None:
        """Set beta of every ternaryTanh (the engine follows linspace(3, 8, num_epochs))."""
        for m in self.modules():
            if isinstance(m, TernaryTanh):
                m.beta.fill_(float(beta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected input of shape (batch, 1, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"input height and width must be divisible by 8 (the U-Net pools 3 times), "
                             f"got {h}x{w}")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        b = self.bottom(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([_up(b), e3], dim=1))
        d2 = self.dec2(torch.cat([_up(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([_up(d2), e1], dim=1))
        return self.head(d1)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


MODEL_KEYS = ("quantization", "weight_i_width", "weight_f_width", "activation_i_width", "activation_f_width",
              "fixed_mode", "activation", "dropout", "init_type", "base_width", "first_block_activation")
# the documented default of each model key (unetq.config), for a mapping that leaves a key out
_DEFAULTS = {f.name: f.default for f in COMMON_FIELDS if f.name in MODEL_KEYS}


def validate_model_keys(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """The model keys of a plain mapping (a checkpoint's recorded config, a run's config.yaml, a packed
    file's header, a YAML section with overrides) validated by :func:`unetq.config.validate`; the
    other keys are left out, since they need the dataset's own fields and do not change the network.
    Raises ConfigError naming ``source``."""
    return validate({k: v for k, v in raw.items() if str(k).lower() in MODEL_KEYS}, source=source)


def model_options(config: Config | Mapping[str, Any]) -> dict:
    """The model keys of a validated config (a :class:`unetq.config.Config` or a mapping of validated
    values); a key it leaves out takes its documented default. Nothing is checked here."""
    return {key: config.get(key, _DEFAULTS[key]) for key in MODEL_KEYS}


def formats(opts: Mapping[str, Any]) -> tuple[QuantFormat, QuantFormat]:
    """(weight format, activation format) for validated model options."""
    kind, mode = opts["quantization"], opts["fixed_mode"]
    weights = QuantFormat(kind, opts["weight_i_width"], opts["weight_f_width"], mode)
    acts = QuantFormat(kind, opts["activation_i_width"], opts["activation_f_width"], mode)
    return weights, acts


def build_model(config: Config | Mapping[str, Any]) -> UNet:
    """The U-Net for a validated config: a :class:`unetq.config.Config`, or a mapping the caller
    validated (:func:`validate_model_keys` for recorded or hand-written keys). Missing model keys
    take their defaults; values are used as they are (validation happens once, where the config is
    read)."""
    opts = model_options(config)
    weights, acts = formats(opts)
    return UNet(weights, acts, activation=opts["activation"], dropout=opts["dropout"],
                base_width=opts["base_width"], init_type=opts["init_type"],
                first_block_activation=opts["first_block_activation"])
