"""The clipped surrogate and value losses on hand-computed cases."""

import math

import torch

from vla.ppo import clipped_policy_loss, explained_variance, value_loss


def test_clipped_loss_takes_pessimistic_branch():
    clip = 0.2
    old = torch.zeros(4)
    # ratios 1.5, 0.5, 1.1, 0.9 with advantages +1, +1, -1, -1
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.9]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # per-sample loss = max(-A r, -A clip(r)):
    # r=1.5,A=+1: max(-1.5, -1.2) = -1.2 (clipped: no extra credit for going further)
    # r=0.5,A=+1: max(-0.5, -0.8) = -0.5 (unclipped: full penalty for moving the wrong way)
    # r=1.1,A=-1: max(1.1, 1.1) = 1.1
    # r=0.9,A=-1: max(0.9, 0.9) = 0.9
    expected = (-1.2 - 0.5 + 1.1 + 0.9) / 4
    assert math.isclose(float(clipped_policy_loss(new, old, adv, clip)), expected, rel_tol=1e-6)


def test_clipped_loss_gradient_is_zero_beyond_clip():
    new = torch.log(torch.tensor([1.5])).requires_grad_()
    clipped_policy_loss(new, torch.zeros(1), torch.tensor([1.0]), 0.2).backward()
    assert float(new.grad) == 0.0


def test_value_loss_plain_and_clipped():
    new, old, ret = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])
    assert float(value_loss(new, old, ret, None)) == 0.5 * 1.0
    # clipped value = 0 + clamp(2, -0.2, 0.2) = 0.2; max((2-1)^2, (0.2-1)^2) = 1.0
    assert math.isclose(float(value_loss(new, old, ret, 0.2)), 0.5 * 1.0)
    new = torch.tensor([1.1])  # unclipped error 0.01, clipped error (0.2-1)^2 = 0.64 -> pessimistic 0.64
    assert math.isclose(float(value_loss(new, old, ret, 0.2)), 0.5 * 0.64, rel_tol=1e-6)


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == 1.0
    assert abs(explained_variance(torch.full((4,), 2.5), target)) < 1e-6
