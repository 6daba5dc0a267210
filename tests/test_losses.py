import math

import pytest
import torch
import torch.nn.functional as F

from core.losses import (
    CrossEntropy,
    OhemCrossEntropy,
    SoftCrossEntropy,
    build_loss,
    cross_entropy,
    soft_cross_entropy,
)


def _logits_with_true_probs(probs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits for a 1 x 1 x n image whose true class (0) has the given probabilities.

    With logits (log p, log(1 - p)) the softmax of class 0 is exactly p, so its CE is -log p.
    """
    p = torch.tensor(probs, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()]).view(1, 2, 1, len(probs))
    target = torch.zeros((1, 1, len(probs)), dtype=torch.long)
    return logits.requires_grad_(), target


PROBS = [0.1, 0.2, 0.3, 0.5, 0.65, 0.75, 0.8, 0.9, 0.95, 0.99]


def test_cross_entropy_equals_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 6)
    target = torch.randint(0, 5, (2, 4, 6))
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(cross_entropy(logits, target), expected)
    torch.testing.assert_close(CrossEntropy()(logits, target), expected)


def test_cross_entropy_accepts_uint8_targets():
    logits, target = _logits_with_true_probs([0.5, 0.25])
    value = cross_entropy(logits, target.to(torch.uint8))
    assert value.item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_cross_entropy_all_ignored_is_zero_with_grad():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    loss = cross_entropy(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ohem_keeps_exactly_the_pixels_below_the_threshold():
    logits, target = _logits_with_true_probs(PROBS)
    # Five pixels have p < 0.7 (0.1 .. 0.65), more than min_kept = 3: all five and only they count.
    loss = OhemCrossEntropy(thresh=0.7, min_kept=3)(logits, target)
    expected = -sum(math.log(p) for p in [0.1, 0.2, 0.3, 0.5, 0.65]) / 5
    assert loss.item() == pytest.approx(expected)


def test_ohem_keeps_min_kept_hardest_when_few_are_hard():
    logits, target = _logits_with_true_probs(PROBS)
    # Only two pixels have p < 0.25; min_kept = 4 adds the next two hardest (0.3, 0.5).
    loss = OhemCrossEntropy(thresh=0.25, min_kept=4)(logits, target)
    expected = -sum(math.log(p) for p in [0.1, 0.2, 0.3, 0.5]) / 4
    assert loss.item() == pytest.approx(expected)


def test_ohem_min_kept_larger_than_valid_pixels_keeps_all_valid():
    logits, target = _logits_with_true_probs(PROBS)
    target[0, 0, 0] = 255  # drop p = 0.1
    loss = OhemCrossEntropy(thresh=0.05, min_kept=100)(logits, target)
    expected = -sum(math.log(p) for p in PROBS[1:]) / 9
    assert loss.item() == pytest.approx(expected)


def test_ohem_ignores_255_even_when_hard():
    logits, target = _logits_with_true_probs(PROBS)
    target[0, 0, 0] = 255  # p = 0.1 would be the hardest pixel
    target[0, 0, 3] = 255  # p = 0.5
    loss = OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, target)
    expected = -sum(math.log(p) for p in [0.2, 0.3, 0.65]) / 3
    assert loss.item() == pytest.approx(expected)


def test_ohem_gradient_only_flows_to_kept_pixels():
    logits, target = _logits_with_true_probs(PROBS)
    OhemCrossEntropy(thresh=0.7, min_kept=3)(logits, target).backward()
    has_grad = logits.grad.abs().sum(dim=1).flatten() > 0
    assert has_grad.tolist() == [True] * 5 + [False] * 5


def test_ohem_all_ignored_is_zero_with_grad_and_no_nan():
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), 255)
    loss = OhemCrossEntropy(thresh=0.7, min_kept=5)(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert not torch.isnan(logits.grad).any()


def test_ohem_with_threshold_one_and_no_min_kept_equals_plain_ce():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    loss = OhemCrossEntropy(thresh=1.0, min_kept=0)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_build_loss_picks_the_loss():
    ohem = build_loss(True, thresh=0.6, min_kept=10)
    assert isinstance(ohem, OhemCrossEntropy) and ohem.thresh == 0.6 and ohem.min_kept == 10
    assert isinstance(build_loss(False), CrossEntropy)


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="target"):
        cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_soft_cross_entropy_equals_hand_computed_values():
    # Two pixels, two classes. Pixel 0: logits (0, ln 3) -> softmax (1/4, 3/4), target (0.5,
    # 0.5): -(0.5 ln 1/4 + 0.5 ln 3/4) = 0.5 ln 16/3. Pixel 1: logits (0, 0) -> (1/2, 1/2),
    # target one-hot class 1: ln 2. Mean: (0.5 ln(16/3) + ln 2) / 2.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[0, 128, 128], [1, 0, 255]]]], dtype=torch.uint8)  # (1, 1, 2, 3)
    expected = (0.5 * math.log(16 / 3) + math.log(2)) / 2
    assert soft_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # An ignored pixel counts for nothing: only pixel 1 is left.
    target[0, 0, 0, 0] = 255
    assert soft_cross_entropy(logits, target).item() == pytest.approx(math.log(2), rel=1e-6)


def test_soft_cross_entropy_of_one_hot_targets_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 4, (2, 3, 5))
    labels[0, 0, 0] = 255
    one_hot = F.one_hot(labels.clamp(max=3), 4) * 255
    target = torch.cat([labels[..., None], one_hot], dim=-1).to(torch.uint8)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(
        cross_entropy(logits, labels).item(), rel=1e-5
    )
    assert isinstance(build_loss(False, soft=True), SoftCrossEntropy)
    with pytest.raises(ValueError, match="OHEM"):
        build_loss(True, soft=True)
    with pytest.raises(ValueError, match=r"target \(N, H, W, 1 \+ C\)"):
        soft_cross_entropy(logits, target[..., :3])
