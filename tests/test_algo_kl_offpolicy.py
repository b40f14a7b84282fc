"""KL estimators (rlwhf.algo.kl) and off-policy corrections (rlwhf.algo.offpolicy), checked by hand."""

import math

import pytest
import torch

from rlwhf.algo import kl_estimate, logprob_mismatch, truncated_is_weights

LN2 = math.log(2.0)


def test_k1_k2_k3_by_hand():
    # p = .5, ref = .25: log_r = ln(ref/p) = -ln 2
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(LN2)  # -log_r
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * LN2**2)  # .240227
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + LN2)  # r - 1 - log_r = .193147


def test_every_estimator_is_zero_when_the_policies_agree():
    x = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    for est in ("k1", "k2", "k3"):
        assert kl_estimate(x, x, est).tolist() == [0.0, 0.0, 0.0]


def test_k1_and_k3_average_to_the_exact_kl_under_the_sampling_policy():
    # p = (.5, .5), ref = (.25, .75): KL(p || ref) = .5 ln 2 + .5 ln(2/3) = .143841
    p, ref = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    kl = 0.5 * LN2 + 0.5 * math.log(2 / 3)
    for est in ("k1", "k3"):
        assert (p * kl_estimate(p.log(), ref.log(), est)).sum().item() == pytest.approx(kl, abs=1e-6)
    assert (kl_estimate(p.log(), ref.log(), "k3") >= 0).all()  # k3 is never negative, k1 can be


def test_k3_gradient_is_one_minus_ref_over_p():
    logp = torch.tensor([math.log(0.5)], requires_grad=True)
    kl_estimate(logp, torch.tensor([math.log(0.25)]), "k3").sum().backward()
    assert logp.grad.item() == pytest.approx(1 - 0.25 / 0.5)


def test_unknown_kl_estimator_names_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"kl estimator 'k4': expected one of 'k1', 'k2', 'k3'"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# -- off-policy correction between the rollout engine and the trainer ------------------------------
def test_truncated_is_weights_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.3, 0.9]]))
    rollout = torch.log(torch.tensor([[0.25, 0.6, 0.1]]))
    # ratios old/rollout: 2, .5, 9 -> capped at 2 (and at 5)
    assert truncated_is_weights(old, rollout).tolist() == [pytest.approx([2.0, 0.5, 2.0])]
    assert truncated_is_weights(old, rollout, cap=5.0).tolist() == [pytest.approx([2.0, 0.5, 5.0])]


def test_truncated_is_weights_are_detached_and_finite_for_huge_mismatches():
    old = torch.tensor([0.0, -1.0], requires_grad=True)
    w = truncated_is_weights(old, torch.tensor([-1000.0, -1.0]))
    assert not w.requires_grad
    assert w.tolist() == pytest.approx([2.0, 1.0])


def test_truncated_is_weights_refuse_a_non_positive_cap():
    with pytest.raises(ValueError, match=r"cap 0.0: expected a positive truncation level"):
        truncated_is_weights(torch.zeros(1), torch.zeros(1), cap=0.0)


def test_logprob_mismatch_by_hand_ignores_padding():
    old = torch.log(torch.tensor([[0.5, 0.3, 1.0]]))
    rollout = torch.log(torch.tensor([[0.25, 0.6, 1e-30]]))  # last token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    m = logprob_mismatch(old, rollout, mask)
    assert m["logp_diff_abs_mean"] == pytest.approx(LN2)  # |ln 2| and |ln .5|
    assert m["is_ratio_max"] == pytest.approx(2.0)
    assert logprob_mismatch(old, rollout, torch.zeros(1, 3)) == {"logp_diff_abs_mean": 0.0, "is_ratio_max": 1.0}
