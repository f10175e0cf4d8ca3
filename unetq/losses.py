"""Training losses: soft Dice and 0.5 BCE + 0.5 Dice (docs/method.md sections 3 and 4).

Every loss takes the network's raw *logits* (the model returns logits, not probabilities)
and a target of the same shape with values in {0, 1}. The sigmoid is applied here.

The Dice is pooled over the whole batch (all dimensions at once), not averaged per image:
that is what the paper's recipe specifies, and it weighs every pixel of the batch equally.

Nothing here calls ``.item()``: losses stay on the device and never force a host sync.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_EPS = 1e-4
LOSS_NAMES = ("dice", "bce_dice")


def dice_coefficient(probs: torch.Tensor, target: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Batch soft Dice D = (2 sum(p*y) + eps) / (sum p + sum y + eps), summed over all dims.

    Returns a 0-dim tensor. With an empty target and an all-zero prediction D = eps / eps = 1,
    so a correctly empty batch is not penalised.
    """
    target = target.to(probs.dtype)
    intersection = (probs * target).sum()
    return (2.0 * intersection + eps) / (probs.sum() + target.sum() + eps)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """1 - D(sigmoid(logits), target): the GM / NIH training loss."""
    return 1.0 - dice_coefficient(torch.sigmoid(logits), target, eps)


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = DEFAULT_EPS,
    legacy_double_sigmoid: bool = False,
) -> torch.Tensor:
    """0.5 * BCE-with-logits (mean) + 0.5 * (1 - D(sigmoid(logits), target)): the EM loss.

    ``legacy_double_sigmoid=True`` reproduces the original code's bug: its model returned
    probabilities p = sigmoid(logits) and the EM loss then fed p to BCE-with-logits, i.e.
    applied a second sigmoid. Its loss then took sigmoid(p) for the Dice term as well, so both
    terms see q = sigmoid(sigmoid(logits)): BCEWithLogits(p, target) and 1 - D(q, target) (see
    docs/original-experiments.md). Since q lies in (0.5, 0.73) for p in (0, 1), that loss never
    reaches 0 and keeps pushing p toward 1 on foreground, which is why the paper's outputs
    saturated enough for the 0.999 threshold. Off by default.
    """
    target = target.to(logits.dtype)
    probs = torch.sigmoid(logits)
    # The legacy path treats the probabilities as if they were logits (the original bug).
    bce_input = probs if legacy_double_sigmoid else logits
    bce = F.binary_cross_entropy_with_logits(bce_input, target, reduction="mean")
    dice_input = torch.sigmoid(probs) if legacy_double_sigmoid else probs
    return 0.5 * bce + 0.5 * (1.0 - dice_coefficient(dice_input, target, eps))


def build_loss(name: str, legacy_double_sigmoid: bool = False) -> Loss:
    """Return the loss callable ``loss(logits, target)`` named ``name`` ("dice" or "bce_dice").

    ``legacy_double_sigmoid`` only affects "bce_dice" (the bug lived in the BCE term of the
    EM loss); for "dice" it is accepted and has no effect, so a config may set it globally.
    """
    key = str(name).lower()
    if key == "dice":
        return dice_loss
    if key == "bce_dice":
        def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return bce_dice_loss(logits, target, legacy_double_sigmoid=legacy_double_sigmoid)

        loss.__name__ = "bce_dice_loss_legacy" if legacy_double_sigmoid else "bce_dice_loss"
        return loss
    raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
