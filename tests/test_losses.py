"""Tests of unetq.losses: hand-computed values, the eps rule, gradients and the legacy switch."""

import math

import pytest
import torch
import torch.nn.functional as F

from unetq.losses import bce_dice_loss, build_loss, dice_coefficient, dice_loss

EPS = 1e-4
LN3 = math.log(3.0)

# A 2x2 example whose sigmoids are simple: logits (0, ln3, -ln3, 0) -> p = (0.5, 0.75, 0.25, 0.5).
LOGITS_2X2 = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]], dtype=torch.float64)
TARGET_2X2 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
# By hand: sum(p*y) = 0.5 + 0.75 = 1.25, sum p = 2.0, sum y = 2.0
#   D = (2.5 + eps) / (4 + eps),  1 - D = 1.5 / (4 + eps)
#   BCE per pixel: ln2, -ln(0.75), -ln(0.75), ln2 -> mean = (ln2 + ln(4/3)) / 2 = ln(8/3) / 2
HAND_DICE_LOSS = 1.5 / (4.0 + EPS)
HAND_BCE = math.log(8.0 / 3.0) / 2.0


def test_dice_coefficient_hand_2x2_on_probabilities():
    probs = torch.tensor([[0.5, 1.0], [0.0, 0.25]])
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # sum(p*y) = 1.5, sum p = 1.75, sum y = 2 -> D = (3 + eps) / (3.75 + eps)
    d = dice_coefficient(probs, target)
    assert d.dim() == 0
    assert d.item() == pytest.approx(3.0001 / 3.7501, rel=1e-6)


def test_dice_is_pooled_over_the_batch_not_averaged_per_image():
    probs = torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])
    # Per image: D_a ~ 1, D_b ~ 0 (mean 0.5). Pooled: (2*2 + eps) / (3 + 3 + eps).
    assert dice_coefficient(probs, target).item() == pytest.approx((4 + EPS) / (6 + EPS), rel=1e-6)


def test_empty_target_and_empty_prediction_give_dice_one():
    zeros = torch.zeros(2, 1, 3, 3)
    assert dice_coefficient(zeros, zeros).item() == pytest.approx(1.0)
    # Strongly negative logits: sigmoid underflows to ~0, loss ~0 thanks to eps.
    assert dice_loss(torch.full((2, 1, 3, 3), -200.0), zeros).item() == pytest.approx(0.0, abs=1e-6)


def test_empty_target_with_nonempty_prediction_is_penalised():
    probs = torch.zeros(1, 4)
    probs[0, 0] = 1.0
    # D = eps / (1 + eps)
    assert dice_coefficient(probs, torch.zeros(1, 4)).item() == pytest.approx(EPS / (1 + EPS), rel=1e-6)


def test_dice_loss_hand_2x2():
    assert dice_loss(LOGITS_2X2, TARGET_2X2).item() == pytest.approx(HAND_DICE_LOSS, rel=1e-9)


def test_bce_dice_loss_hand_2x2():
    expected = 0.5 * HAND_BCE + 0.5 * HAND_DICE_LOSS
    assert bce_dice_loss(LOGITS_2X2, TARGET_2X2).item() == pytest.approx(expected, rel=1e-9)


def test_perfect_and_inverted_predictions():
    torch.manual_seed(0)
    y = (torch.rand(2, 1, 8, 8) > 0.5).float()
    y[0, 0, 0, 0] = 1.0  # make sure the target is non-empty
    perfect = 30.0 * (2 * y - 1)
    assert dice_loss(perfect, y).item() == pytest.approx(0.0, abs=1e-6)
    assert bce_dice_loss(perfect, y).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-perfect, y).item() == pytest.approx(1.0, abs=1e-4)
    # BCE of a confidently wrong logit of 30 is ~30 per pixel.
    assert bce_dice_loss(-perfect, y).item() == pytest.approx(0.5 * 30 + 0.5, rel=1e-3)


def _legacy_by_hand(logits, target):
    """The legacy loss from its definition, pixel by pixel with the math module."""
    bce_terms, inter, sum_p, sum_y = [], 0.0, 0.0, 0.0
    for x, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1.0 / (1.0 + math.exp(-x))
        q = 1.0 / (1.0 + math.exp(-p))  # the second sigmoid of the original bug
        bce_terms.append(-(y * math.log(q) + (1 - y) * math.log(1 - q)))
        inter, sum_p, sum_y = inter + q * y, sum_p + q, sum_y + y   # its Dice term also took sigmoid(p)
    d = (2 * inter + EPS) / (sum_p + sum_y + EPS)
    return 0.5 * sum(bce_terms) / len(bce_terms) + 0.5 * (1 - d)


def test_legacy_double_sigmoid_matches_its_formula_and_differs_from_corrected():
    torch.manual_seed(1)
    logits = 3 * torch.randn(2, 1, 4, 4, dtype=torch.float64)
    target = (torch.rand(2, 1, 4, 4) > 0.4).double()
    legacy = bce_dice_loss(logits, target, legacy_double_sigmoid=True).item()
    corrected = bce_dice_loss(logits, target).item()
    assert legacy == pytest.approx(_legacy_by_hand(logits, target), rel=1e-9)
    assert abs(legacy - corrected) > 1e-3


def test_legacy_bce_never_reaches_zero_on_a_perfect_prediction():
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    perfect = 30.0 * (2 * y - 1)
    # p is exactly 0 or 1, so the legacy BCE is -ln(sigmoid(1)) on fg and -ln(1 - sigmoid(0)) = ln2 on bg.
    expected_bce = (2 * -math.log(1 / (1 + math.exp(-1))) + 2 * math.log(2)) / 4
    # its Dice term saw q = sigmoid(p): sigmoid(1) on fg, 0.5 on bg, so it does not reach 1 either
    q1 = 1 / (1 + math.exp(-1))
    dice = (2 * 2 * q1 + EPS) / (2 * q1 + 2 * 0.5 + 2 + EPS)
    got = bce_dice_loss(perfect, y, legacy_double_sigmoid=True).item()
    assert got == pytest.approx(0.5 * expected_bce + 0.5 * (1 - dice), rel=1e-5)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("name", ["dice", "bce_dice"])
def test_gradients_flow_and_are_finite_even_for_extreme_logits(name, legacy):
    torch.manual_seed(2)
    logits = torch.randn(2, 1, 6, 6) * 5
    logits[0, 0, 0, :3] = torch.tensor([200.0, -200.0, 0.0])
    logits.requires_grad_(True)
    target = (torch.rand(2, 1, 6, 6) > 0.5).float()
    loss = build_loss(name, legacy_double_sigmoid=legacy)(logits, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_build_loss_names_and_targets_of_other_dtypes():
    target = TARGET_2X2.bool()
    assert build_loss("dice")(LOGITS_2X2, target).item() == pytest.approx(HAND_DICE_LOSS, rel=1e-9)
    bce_dice = build_loss("BCE_DICE")(LOGITS_2X2, target.long())
    assert bce_dice.item() == pytest.approx(0.5 * HAND_BCE + 0.5 * HAND_DICE_LOSS, rel=1e-9)
    # The dice loss has no BCE term, so the legacy switch must not change it.
    assert build_loss("dice", legacy_double_sigmoid=True)(LOGITS_2X2, target).item() == pytest.approx(
        HAND_DICE_LOSS, rel=1e-9
    )


def test_build_loss_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="dice.*bce_dice"):
        build_loss("focal")


def test_corrected_bce_term_equals_torch_bce_on_probabilities():
    # Independent route: BCE on p = sigmoid(logits) with torch's probability-space BCE.
    torch.manual_seed(3)
    logits = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    target = (torch.rand(3, 1, 5, 5) > 0.5).double()
    p = torch.sigmoid(logits)
    d = (2 * (p * target).sum() + EPS) / (p.sum() + target.sum() + EPS)
    expected = 0.5 * F.binary_cross_entropy(p, target) + 0.5 * (1 - d)
    assert bce_dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-9)
