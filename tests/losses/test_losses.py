"""Every registered loss against a hand computation on tiny tensors whose softmax is known exactly.

The probe: two classes on four voxels (a 2D ``1 x 4`` image), logits ``(-ln3/2, +ln3/2)`` or the reverse, so that
softmax gives probabilities of exactly 0.25 and 0.75; labels ``[1, 0, 0, 0]``. Worked by hand (smooth terms of 1e-5
are negligible at this tolerance):

- foreground ``p = [.75, .25, .25, .25]``, ``g = [1, 0, 0, 0]``: ``Σpg = .75``, ``Σp = 1.5``, ``Σp² = .75``, ``Σg = 1``;
- background ``p = [.25, .75, .75, .75]``, ``g = [0, 1, 1, 1]``: ``Σpg = 2.25``, ``Σp = 2.5``, ``Σp² = 1.75``, ``Σg = 3``;
- squared Dice (V-Net): foreground ``1 - 1.5/1.75 = 1/7``, background ``1 - 4.5/4.75 = 1/19``;
- plain Dice: foreground ``1 - 1.5/2.5 = 0.4``, background ``1 - 4.5/5.5 = 2/11``;
- cross-entropy: every voxel has probability .75 on its true class: ``-ln .75``.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import LOSSES

L3 = math.log(3.0)
CE = -math.log(0.75)


def probe(dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(1, 2, 1, 4)`` (or ``(1, 2, 1, 1, 4)``) with softmax .75 on the true class, labels ``[1, 0, 0, 0]``."""
    fg = torch.tensor([L3 / 2, -L3 / 2, -L3 / 2, -L3 / 2])
    logits = torch.stack([-fg, fg])[None].reshape(1, 2, *(1,) * (dims - 1), 4).clone().requires_grad_(True)
    labels = torch.tensor([1, 0, 0, 0]).reshape(1, 1, *(1,) * (dims - 1), 4)
    return logits, labels


def confident(labels: torch.Tensor, num_classes: int, correct: bool = True, scale: float = 30.0) -> torch.Tensor:
    """Logits that put (almost) all probability on the label (``correct``) or on the next class."""
    target = labels[:, 0] if correct else (labels[:, 0] + 1) % num_classes
    return (torch.nn.functional.one_hot(target, num_classes).movedim(-1, 1).float() * scale).requires_grad_(True)


def test_the_registry_holds_the_losses_these_tests_pin() -> None:
    """A new loss gets a hand-computed test here too (the generic ones are in test_registry.py)."""
    assert LOSSES.names() == ["dice", "dice_ce"]


# ---------------------------------------------------------------------------------------------------------- dice
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(("include_background", "expected"), [(False, 1 / 7), (True, (1 / 7 + 1 / 19) / 2)])
def test_dice_matches_the_hand_computation(dims: int, include_background: bool, expected: float) -> None:
    logits, labels = probe(dims)
    loss = LOSSES.get("dice")(include_background=include_background)(logits, labels)
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_dice_without_squared_denominators() -> None:
    logits, labels = probe()
    assert LOSSES.get("dice")(squared_pred=False)(logits, labels).item() == pytest.approx(0.4, abs=1e-4)
    both = LOSSES.get("dice")(squared_pred=False, include_background=True)(logits, labels).item()
    assert both == pytest.approx((0.4 + 2 / 11) / 2, abs=1e-4)


def test_dice_smooth_is_added_to_numerator_and_denominator() -> None:
    """With smooth 1 the foreground term is ``1 - (1.5 + 1)/(1.75 + 1)``."""
    logits, labels = probe()
    assert LOSSES.get("dice")(smooth=1.0)(logits, labels).item() == pytest.approx(1 - 2.5 / 2.75, abs=1e-5)


# ------------------------------------------------------------------------------------------------------- dice_ce
@pytest.mark.parametrize(("include_background", "dice"), [(False, 0.4), (True, (0.4 + 2 / 11) / 2)])
def test_dice_ce_matches_the_hand_computation(include_background: bool, dice: float) -> None:
    """nnU-Net's soft Dice (plain denominators) plus the voxel-mean cross-entropy."""
    logits, labels = probe()
    loss = LOSSES.get("dice_ce")(include_background=include_background)(logits, labels)
    assert loss.item() == pytest.approx(dice + CE, abs=1e-4)


def test_dice_ce_weights_its_terms() -> None:
    logits, labels = probe()
    assert LOSSES.get("dice_ce")(lambda_dice=2.0, lambda_ce=0.5)(logits, labels).item() == pytest.approx(
        2 * 0.4 + 0.5 * CE, abs=1e-4)
    assert LOSSES.get("dice_ce")(lambda_dice=0.0, lambda_ce=1.0)(logits, labels).item() == pytest.approx(CE, abs=1e-5)
    assert LOSSES.get("dice_ce")(lambda_dice=1.0, lambda_ce=0.0)(logits, labels).item() == pytest.approx(0.4, abs=1e-4)


# ------------------------------------------------------------------------------------------------ every loss
@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("include_background", [False, True])
def test_perfect_prediction_scores_zero_and_disjoint_one(name: str, include_background: bool) -> None:
    """Confident and right: ~0; confident and wrong everywhere: the Dice part is ~1 (cross-entropy adds ~30)."""
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 6, 5, 4))
    labels[:, :, 0, 0, :3] = torch.tensor([0, 1, 2])  # every class present in both samples
    factory = LOSSES.get(name)
    right = factory(include_background=include_background)(confident(labels, 3), labels)
    assert right.item() == pytest.approx(0.0, abs=1e-4)
    kwargs = {"lambda_ce": 0.0} if name == "dice_ce" else {}
    wrong = factory(include_background=include_background, **kwargs)(confident(labels, 3, correct=False), labels)
    assert wrong.item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", LOSSES.names())
def test_softmax_is_applied_to_the_logits(name: str) -> None:
    """Softmax ignores a constant added to every class's logit; raw scores (or a sigmoid) would not."""
    logits, labels = probe()
    loss = LOSSES.get(name)()
    shifted = (logits.detach() + 5.0).requires_grad_(True)
    assert loss(shifted, labels).item() == pytest.approx(loss(logits, labels).item(), abs=1e-5)


@pytest.mark.parametrize("name", LOSSES.names())
def test_background_setting_changes_the_value(name: str) -> None:
    """``include_background`` reaches the loss (the probe's background term differs from its foreground term)."""
    logits, labels = probe()
    without = LOSSES.get(name)(include_background=False)(logits, labels).item()
    with_bg = LOSSES.get(name)(include_background=True)(logits, labels).item()
    assert with_bg < without - 0.02


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradient_is_finite_and_points_to_the_label(name: str) -> None:
    """Even for saturated logits and a class absent from labels and prediction, the gradient is finite; on the
    probe, raising the true class's logit lowers the loss everywhere."""
    logits, labels = probe()
    LOSSES.get(name)()(logits, labels).backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    onehot = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).bool()
    assert (grad[onehot] < 0).all() and (grad[~onehot] > 0).all()

    labels3 = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels3[..., :2, :2] = 1  # class 2 nowhere
    saturated = (confident(labels3, 3, scale=1e4).detach() - 5e3).requires_grad_(True)
    loss = LOSSES.get(name)()(saturated, labels3)
    loss.backward()
    assert torch.isfinite(loss) and saturated.grad is not None and torch.isfinite(saturated.grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_shape_mismatch_names_both_shapes(name: str) -> None:
    """Labels on another grid than the logits are refused with both shapes (never silently broadcast)."""
    with pytest.raises((AssertionError, ValueError)) as err:
        LOSSES.get(name)()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 5, dtype=torch.long))
    assert "[1, 1, 4, 5]" in str(err.value) and "[1, 1, 4, 4]" in str(err.value)
