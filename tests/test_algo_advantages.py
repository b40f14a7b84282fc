"""Group-relative advantages (rlwhf.algo.advantages) against numbers computed by hand."""

import pytest
import torch

from rlwhf.algo import group_advantages, zero_variance_groups


def test_grpo_divides_each_group_by_its_own_sample_std():
    # group [1, 0, 0, 0]: mean .25, deviations .75 and -.25 (x3),
    #   sample var = (.75^2 + 3 * .25^2) / 3 = .75 / 3 = .25, std .5 -> 1.5, -.5, -.5, -.5
    # group [0, 1, 1, 1]: mean .75, same std .5 -> -1.5, .5, .5, .5
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 1]), 4)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, -1.5, 0.5, 0.5, 0.5], abs=1e-5)


def test_grpo_adds_eps_to_the_std():
    # [0, 1]: mean .5, std sqrt(.5) = .707107; eps 1 -> .5 / 1.707107 = .292893
    adv = group_advantages(torch.tensor([0.0, 1.0]), 2, eps=1.0)
    assert adv.tolist() == pytest.approx([-0.292893, 0.292893], abs=1e-6)


def test_dr_grpo_only_subtracts_the_group_mean():
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 2, 4, 6, 8]), 4, estimator="dr_grpo")
    # means .25 and 5
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, -3, -1, 1, 3])


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    # 1 - (0+0+0)/3 = 1;  0 - (1+0+0)/3 = -1/3;  group 2: 2 - 18/3 = -4, 4 - 16/3, 6 - 14/3, 8 - 12/3
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 2, 4, 6, 8]), 4, estimator="rloo")
    assert adv.tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3, -4, 4 - 16 / 3, 6 - 14 / 3, 4])


def test_batch_std_norm_divides_by_the_std_of_the_whole_batch():
    # dr_grpo on [1, 0 | 3, 1]: .5, -.5, 1, -1; batch mean 0,
    # sample var = (.25 + .25 + 1 + 1) / 3 = .833333, std .912871
    adv = group_advantages(torch.tensor([1.0, 0, 3, 1]), 2, estimator="dr_grpo", batch_std_norm=True)
    assert adv.tolist() == pytest.approx([0.547723, -0.547723, 1.095445, -1.095445], abs=1e-5)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_a_group_of_equal_rewards_gets_exactly_zero_with_every_estimator(estimator):
    # eight float32 copies of 0.1 do not sum to exactly 0.8: the float32 mean is off by ~1e-9
    rewards = torch.cat([torch.full((8,), 0.1), torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])])
    adv = group_advantages(rewards, 8, estimator=estimator, batch_std_norm=True)
    assert adv[:8].tolist() == [0.0] * 8
    assert adv[8] > 0


def test_group_of_one_carries_no_signal_under_grpo():
    assert group_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]


def test_dtype_follows_float_rewards_and_integers_give_float32():
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    assert group_advantages(torch.tensor([1, 0]), 2).dtype == torch.float32


def test_zero_variance_groups_flags_groups_whose_rewards_are_all_equal():
    flags = zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2)
    assert flags.tolist() == [True, False, True]


def test_unknown_estimator_names_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"estimator 'ppo': expected one of 'grpo', 'dr_grpo', 'rloo'"):
        group_advantages(torch.zeros(4), 2, estimator="ppo")


def test_bad_shapes_and_group_sizes_are_refused():
    with pytest.raises(ValueError, match="group_size 3 does not divide the 4 rewards"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="group_size 0"):
        zero_variance_groups(torch.zeros(4), 0)
    with pytest.raises(ValueError, match=r"rewards must be 1-D .* got shape \(2, 2\)"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="'rloo' needs group_size >= 2"):
        group_advantages(torch.zeros(4), 1, estimator="rloo")


def test_scale_negative_shrinks_only_the_negative_advantages():
    from rlwhf.algo import scale_negative

    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, estimator="dr_grpo")  # 0.75, -0.25 x3
    assert torch.allclose(scale_negative(adv, 0.0), torch.tensor([0.75, 0.0, 0.0, 0.0]))
    assert torch.allclose(scale_negative(adv, 0.5), torch.tensor([0.75, -0.125, -0.125, -0.125]))
    assert torch.equal(scale_negative(adv, 1.0), adv)
    with pytest.raises(ValueError, match="expected a number in"):
        scale_negative(adv, 1.5)
