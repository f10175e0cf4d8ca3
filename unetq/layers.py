"""Building blocks of the quantized U-Net: the number format of a layer, the quantized conv,
the activation quantizer and the ternaryTanh activation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import quantize

QUANTIZATIONS = ("normal", "fixed", "int", "bnn", "ternary")


@dataclass(frozen=True)
class QuantFormat:
    """How one tensor role (weights or activations) is quantized.

    kind: normal | fixed | int | bnn | ternary. i_bits / f_bits: the Qi.f widths, from the config keys
    ``weight_i_width`` / ``weight_f_width`` (or ``activation_*``). INT reads i_bits, i.e. the
    ``*_i_width`` key, as its bit count n (INTn) and ignores f_bits. mode: the fixed-point mode
    (paper | saturating | pow2), used by ``fixed`` only.
    """

    kind: str = "normal"
    i_bits: int = 0
    f_bits: int = 0
    mode: str = "paper"

    def __post_init__(self):
        if self.kind not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.kind!r}")

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight quantizer of this format (identity for ``normal``)."""
        if self.kind == "fixed":
            return quantize.fixed_point(w, self.i_bits, self.f_bits, self.mode)
        if self.kind == "int":
            return quantize.int_quant(w, self.i_bits)
        if self.kind == "bnn":
            return quantize.binary(w)
        if self.kind == "ternary":
            return quantize.ternary(w)
        return w

    def quantize_activation(self, a: torch.Tensor) -> torch.Tensor:
        """The activation quantizer of this format (identity for ``normal`` and ``ternary``: TWN
        quantizes weights only)."""
        if self.kind == "fixed":
            return quantize.fixed_point(a, self.i_bits, self.f_bits, self.mode)
        if self.kind == "int":
            return quantize.int_quant(a, self.i_bits)
        if self.kind == "bnn":
            return quantize.binary(a)
        return a

    def describe(self) -> str:
        """Short human-readable name, e.g. ``Q0.4 (paper)``, ``INT4``, ``BNN``."""
        if self.kind == "fixed":
            return f"Q{self.i_bits}.{self.f_bits} ({self.mode})"
        if self.kind == "int":
            return f"INT{self.i_bits}"
        return {"normal": "float32", "bnn": "BNN", "ternary": "Ternary"}[self.kind]


FLOAT = QuantFormat()


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose weights pass through ``fmt.quantize_weight`` on every forward (quantization-
    aware training keeps float "shadow" weights and trains them through the straight-through
    gradient). The bias stays float, as in the paper. The U-Net's float convs (the first block, the
    head) are plain ``nn.Conv2d``, so being a QuantConv2d is what marks a quantized conv."""

    def __init__(self, in_channels: int, out_channels: int, fmt: QuantFormat = FLOAT, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, **kwargs)
        self.fmt = fmt
        self._cache = None                       # (key, quantized weight, alias of the float weight)

    def quantized_weight(self) -> torch.Tensor:
        """The weights as the convolution uses them.

        Without autograd (evaluation, inference) the quantized weights are computed once and reused
        while the float weight is unchanged: the cache is keyed on the weight's version counter
        (bumped by every in-place update: optimizer steps, ``load_state_dict``, ``copy_`` under
        ``no_grad``), its address, shape, dtype and device, and the format. It holds an alias of the
        float weight so that the old storage stays alive and its address cannot be reused by a
        replacement. (Like autograd itself, it cannot see writes through ``weight.data``.)
        """
        w = self.weight
        if self.fmt.kind == "normal" or torch.is_grad_enabled() or w.is_inference():
            return self.fmt.quantize_weight(w)
        key = (w._version, w.data_ptr(), w.shape, w.dtype, w.device, self.fmt)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.fmt.quantize_weight(w), w.detach())
        return self._cache[1]

    def train(self, mode: bool = True):
        """Switching to training drops the cached quantized weights (they are rebuilt at eval)."""
        if mode:
            self._cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a training step quantizes the float weights afresh (autograd follows them); evaluation reuses
        # the cached codes of quantized_weight
        w = self.fmt.quantize_weight(self.weight) if torch.is_grad_enabled() else self.quantized_weight()
        return F.conv2d(x, w, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weights={self.fmt.describe()}"


class ActivationQuantizer(nn.Module):
    """Quantizes activations (placed after every BatchNorm of the U-Net)."""

    def __init__(self, fmt: QuantFormat = FLOAT):
        super().__init__()
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fmt.quantize_activation(x)

    def extra_repr(self) -> str:
        return "identity" if self.fmt.kind in ("normal", "ternary") else self.fmt.describe()


class TernaryTanh(nn.Module):
    """ternaryTanh(x) = 0.5 tanh(beta (2x - 1)) + 0.5 tanh(beta (2x + 1)): a smooth staircase with
    plateaus at -1, 0, +1 that sharpens as beta grows. beta is a buffer, so it is saved with the
    model (the original kept it outside the state dict and lost it)."""

    def __init__(self, beta: float = 3.0):
        super().__init__()
        self.register_buffer("beta", torch.tensor(float(beta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.beta.to(x.dtype)
        return 0.5 * torch.tanh(b * (2 * x - 1)) + 0.5 * torch.tanh(b * (2 * x + 1))

    def extra_repr(self) -> str:
        return f"beta={float(self.beta):.3f}"


def make_activation(name: str) -> nn.Module:
    """relu | tanh | ternarytanh."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    if name == "ternarytanh":
        return TernaryTanh()
    raise ValueError(f"activation must be one of relu, tanh, ternarytanh, got {name!r}")
