"""The GRPO mathematics against numbers computed by hand."""

import math

import pytest
import torch

from rlwhf.algo import aggregate, group_advantages, kl_estimate, pass_at_k, policy_loss, zero_variance_groups


def test_grpo_advantages_normalise_within_each_group():
    # group 1: rewards 1,0 -> mean .5, std (unbiased) sqrt(.5)=0.7071 -> +-0.7071
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2, eps=0.0 + 1e-12)
    assert adv[:2].tolist() == pytest.approx([0.70710678, -0.70710678], abs=1e-5)
    assert adv[2:].tolist() == [0.0, 0.0]  # equal rewards carry no signal


def test_dr_grpo_and_rloo_baselines():
    r = torch.tensor([3.0, 1.0, 2.0])
    assert group_advantages(r, 3, estimator="dr_grpo").tolist() == pytest.approx([1.0, -1.0, 0.0])
    # RLOO: 3 - (1+2)/2 = 1.5; 1 - (3+2)/2 = -1.5; 2 - (3+1)/2 = 0
    assert group_advantages(r, 3, estimator="rloo").tolist() == pytest.approx([1.5, -1.5, 0.0])
    with pytest.raises(ValueError, match="estimator 'ppo'"):
        group_advantages(r, 3, estimator="ppo")


def test_zero_variance_groups_flags_groups_with_equal_rewards():
    assert zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist() == [True, False]


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log(ref/p) = -1
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)


def test_aggregation_modes_on_uneven_lengths():
    values = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx((1 + 3 + 2) / 3)
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 2) / 2)
    assert aggregate(values, mask, "seq_mean_token_sum_norm", 4).item() == pytest.approx((4 / 4 + 2 / 4) / 2)


def test_clipped_loss_by_hand_and_clipped_tokens_get_no_gradient():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    # ratios 1.5 and 0.9 with advantage +1: min(1.5, 1.2) = 1.2 (clipped), min(0.9, 0.9) = 0.9
    logp = torch.log(torch.tensor([[0.75, 0.45]])).requires_grad_()
    loss, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.9) / 2)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # clipped: no gradient
    assert logp.grad[0, 1].item() == pytest.approx(-0.9 / 2)
    assert m["clip_fraction_high"] == pytest.approx(0.5) and m["clip_fraction_low"] == 0.0


def test_padding_never_changes_the_loss():
    logp = torch.tensor([[-1.0, -2.0, -9.0]])
    old = torch.tensor([[-1.1, -2.1, 5.0]])
    a, _ = policy_loss(logp, old, torch.tensor([0.7]), torch.tensor([[1.0, 1.0, 0.0]]))
    b, _ = policy_loss(logp[:, :2], old[:, :2], torch.tensor([0.7]), torch.ones(1, 2))
    assert a.item() == pytest.approx(b.item())


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - (2 / 4) * (1 / 3))  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(3, 3, 2) == 1.0


def test_a_group_of_equal_rewards_gets_exactly_zero_advantage():
    # 0.1 summed in float32 is not exactly 0.8: the mean differs from each value by ~1e-9, which
    # divided by (std + eps) used to give every sample a spurious advantage of ~-0.0075.
    rewards = torch.full((8,), 0.1, dtype=torch.float32)
    assert group_advantages(rewards, 8).tolist() == [0.0] * 8
