"""Loss aggregation, entropy and the clipped policy loss (rlwhf.algo.losses), checked by hand."""

import math

import pytest
import torch

from rlwhf.algo import aggregate, entropy_from_logits, policy_loss

NAN = float("nan")


def assert_close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-6, rtol=1e-5)


# -- aggregate -------------------------------------------------------------------------------------
# two completions of 3 and 1 tokens; padding holds NaN, which must never leak into the result
VALUES = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, NAN, NAN, NAN]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, norm, expected",
    [
        ("token_mean", None, (1 + 2 + 3 + 4) / 4),  # 2.5: every token weighs the same
        ("seq_mean_token_mean", None, ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # 3.0: every completion weighs the same
        ("seq_mean_token_sum_norm", 10.0, (6 / 10 + 4 / 10) / 2),  # 0.5: constant normaliser
        ("seq_mean_token_sum_norm", None, (6 / 4 + 4 / 4) / 2),  # 1.25: default constant is T = 4
    ],
)
def test_each_aggregation_mode_on_an_uneven_batch(mode, norm, expected):
    assert aggregate(VALUES, MASK, mode, norm).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_an_appended_padding_row_changes_no_aggregation(mode):
    values = torch.cat([VALUES, torch.full((1, 4), 7.0)])
    mask = torch.cat([MASK, torch.zeros(1, 4)])
    assert aggregate(values, mask, mode, 10.0).item() == pytest.approx(aggregate(VALUES, MASK, mode, 10.0).item())


def test_an_all_masked_batch_aggregates_to_zero_with_a_gradient_of_zero():
    values = torch.ones(2, 3, requires_grad=True)
    out = aggregate(values, torch.zeros(2, 3), "seq_mean_token_mean")
    out.backward()
    assert out.item() == 0.0 and values.grad.abs().sum().item() == 0.0


def test_aggregate_errors_name_the_bad_value():
    with pytest.raises(
        ValueError,
        match=r"loss_agg 'sum': expected one of 'token_mean', "
        r"'seq_mean_token_mean', 'seq_mean_token_sum_norm'",
    ):
        aggregate(VALUES, MASK, "sum")
    with pytest.raises(ValueError, match="norm_constant 0.0: expected a positive number of tokens"):
        aggregate(VALUES, MASK, "seq_mean_token_sum_norm", 0.0)
    with pytest.raises(ValueError, match=r"values \(2, 4\) and mask \(2, 3\)"):
        aggregate(VALUES, MASK[:, :3])


# -- entropy ---------------------------------------------------------------------------------------
def test_entropy_by_hand():
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4 = 1.386294
            [0.0, math.log(3.0), -math.inf, -math.inf],  # p = (.25, .75): .25 ln 4 + .75 ln(4/3) = .562335
            [1000.0, 1000.0, -math.inf, -1000.0],  # (.5, .5, 0, ~0): ln 2, no overflow
        ]
    )
    assert entropy_from_logits(logits).tolist() == pytest.approx([1.386294, 0.562335, 0.693147], abs=1e-5)


def test_entropy_keeps_leading_dims_upcasts_bf16_and_has_finite_gradients_with_banned_tokens():
    logits = torch.zeros(2, 3, 5)
    logits[..., 0] = -math.inf
    logits.requires_grad_()
    h = entropy_from_logits(logits)
    assert h.shape == (2, 3)
    assert h[0, 0].item() == pytest.approx(math.log(4))
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert entropy_from_logits(torch.zeros(3, dtype=torch.bfloat16)).dtype == torch.float32


# -- policy_loss: the clipped surrogate ------------------------------------------------------------
def _batch():
    """Two completions (3 and 2 tokens), old probs .5, advantages +1 and -1.

    ratios: row 0: .75/.5 = 1.5, .45/.5 = .9, .5/.5 = 1.0;  row 1: .3/.5 = .6, .55/.5 = 1.1.
    Padding holds NaN (new) and +inf (old): it must not matter.
    """
    logp = torch.log(torch.tensor([[0.75, 0.45, 0.5], [0.3, 0.55, NAN]])).requires_grad_()
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    old[1, 2] = math.inf
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp, old, torch.tensor([1.0, -1.0]), mask


# per-token losses, eps .2:
#   row 0 (A=+1): -min(1.5, 1.2) = -1.2 (clipped high), -.9, -1.0
#   row 1 (A=-1): -min(-.6, -.8) = .8 (clipped low), -min(-1.1, -1.1) = 1.1
@pytest.mark.parametrize(
    "mode, norm, expected",
    [
        ("token_mean", None, (-1.2 - 0.9 - 1.0 + 0.8 + 1.1) / 5),  # -.24
        ("seq_mean_token_mean", None, ((-3.1) / 3 + 1.9 / 2) / 2),  # -.041667
        ("seq_mean_token_sum_norm", 4.0, ((-3.1) / 4 + 1.9 / 4) / 2),  # -.15
    ],
)
def test_clipped_loss_by_hand_in_each_aggregation_mode(mode, norm, expected):
    logp, old, adv, mask = _batch()
    loss, _ = policy_loss(logp, old, adv, mask, loss_agg=mode, norm_constant=norm)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_clipped_tokens_get_zero_gradient_and_the_others_minus_a_ratio_over_n():
    logp, old, adv, mask = _batch()
    loss, m = policy_loss(logp, old, adv, mask)
    loss.backward()
    # d loss / d logp = -A * ratio / 5 where unclipped; 0 where clipped or padding
    assert_close(logp.grad, [[0.0, -0.9 / 5, -1.0 / 5], [0.0, 1.1 / 5, 0.0]])
    assert m["clip_fraction_high"] == pytest.approx(1 / 5)
    assert m["clip_fraction_low"] == pytest.approx(1 / 5)
    assert m["clip_fraction"] == pytest.approx(2 / 5)
    assert m["ratio_mean"] == pytest.approx((1.5 + 0.9 + 1.0 + 0.6 + 1.1) / 5)
    assert m["ratio_max"] == pytest.approx(1.5)
    # k3 with r = new/old: (r - 1) - ln r -> .094535, .005361, 0, .110826, .004690
    assert m["approx_kl"] == pytest.approx((0.094535 + 0.005361 + 0 + 0.110826 + 0.004690) / 5, abs=1e-5)
    assert m["pg_loss"] == pytest.approx(-0.24) and m["kl"] == 0.0 and m["entropy"] == 0.0


def test_metrics_are_plain_floats_with_the_agreed_keys():
    _, m = policy_loss(*_batch())
    for key in [
        "pg_loss",
        "kl",
        "entropy",
        "clip_fraction",
        "clip_fraction_low",
        "clip_fraction_high",
        "ratio_mean",
        "ratio_max",
        "ratio_spread",
        "approx_kl",
    ]:
        assert type(m[key]) is float, key


def test_clip_higher_decouples_the_two_bounds():
    old = torch.log(torch.tensor([[0.4]]))
    up = torch.log(torch.tensor([[0.5]])).requires_grad_()  # ratio 1.25, A = +1
    loss, _ = policy_loss(up, old, torch.tensor([1.0]), torch.ones(1, 1), clip_low=0.2, clip_high=0.28)
    loss.backward()
    assert loss.item() == pytest.approx(-1.25) and up.grad.item() == pytest.approx(-1.25)  # inside 1.28
    loss, _ = policy_loss(up, old, torch.tensor([1.0]), torch.ones(1, 1), clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-1.2)  # clipped at 1.2
    down = torch.log(torch.tensor([[0.3]]))  # ratio .75, A = -1
    loss, _ = policy_loss(down, old, torch.tensor([-1.0]), torch.ones(1, 1), clip_low=0.2)
    assert loss.item() == pytest.approx(0.8)  # -min(-.75, -.8)
    loss, _ = policy_loss(down, old, torch.tensor([-1.0]), torch.ones(1, 1), clip_low=0.3)
    assert loss.item() == pytest.approx(0.75)  # .75 > .7: inside


def test_dual_clip_bounds_the_loss_of_negative_advantages_at_c_times_minus_a():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[5.0, 2.0]])).requires_grad_()  # ratios 5 and 2 against old prob 1
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx((5 + 2) / 2)  # -min(-5, -1.2), -min(-2, -1.2)
    loss, m = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2), dual_clip=3.0)
    loss.backward()
    assert loss.item() == pytest.approx((3 + 2) / 2)  # min(5, 3) = 3; 2 < 3 stays
    assert_close(logp.grad, [[0.0, 2.0 / 2]])  # dual-clipped token: no gradient
    assert m["clip_fraction_dual"] == pytest.approx(0.5) and m["clip_fraction"] == pytest.approx(0.5)
    # positive advantages are untouched by the dual clip: -min(5, 1.2) and -min(2, 1.2)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), dual_clip=3.0)
    assert loss.item() == pytest.approx(-1.2)


# -- GSPO: one length-normalised ratio per sequence ------------------------------------------------
def test_gspo_sequence_ratio_by_hand_and_its_gradient_is_shared_by_the_tokens():
    old = torch.log(torch.full((1, 2), 0.5))
    logp = (old + torch.tensor([[0.1, 0.3]])).requires_grad_()  # token log-ratios .1 and .3
    loss, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_high=0.3, ratio_level="sequence")
    loss.backward()
    s = math.exp(0.2)  # exp(mean(.1, .3)) = 1.221403
    assert loss.item() == pytest.approx(-s)
    # d(-s)/d logp_t = -s / 2 for both tokens (token-level would give -e^.1/2 and -e^.3/2)
    assert_close(logp.grad, [[-s / 2, -s / 2]])
    assert m["ratio_max"] == pytest.approx(s) and m["ratio_spread"] == 0.0
    _, token_level = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_high=0.3)
    assert token_level["ratio_spread"] == pytest.approx(math.exp(0.3) - math.exp(0.1))


def test_gspo_clips_the_whole_sequence():
    old = torch.log(torch.full((1, 2), 0.5))
    logp = (old + torch.tensor([[0.1, 0.3]])).requires_grad_()
    loss, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_high=0.2, ratio_level="sequence")
    loss.backward()
    assert loss.item() == pytest.approx(-1.2)  # 1.221 > 1.2: clipped
    assert logp.grad.abs().sum().item() == 0.0
    assert m["clip_fraction_high"] == 1.0


def test_gspo_on_an_uneven_batch_averages_per_sequence():
    old = torch.log(torch.full((2, 2), 0.5))
    logp = old + torch.tensor([[0.1, 0.3], [-0.2, 99.0]])  # row 1 has one token; 99 is padding
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = policy_loss(
        logp,
        old,
        torch.tensor([1.0, -1.0]),
        mask,
        clip_high=0.3,
        ratio_level="sequence",
        loss_agg="seq_mean_token_mean",
    )
    # row 0: -e^.2 = -1.221403; row 1: A = -1, s = e^-.2 = .818731 inside [.8, 1.3] -> +.818731
    assert loss.item() == pytest.approx((-math.exp(0.2) + math.exp(-0.2)) / 2)


# -- KL, entropy and importance weights inside the loss --------------------------------------------
def test_kl_term_adds_coef_times_k3_and_is_reported_even_when_its_coef_is_zero():
    logp, old = torch.log(torch.full((1, 2), 0.5)), torch.log(torch.full((1, 2), 0.5))
    ref = torch.log(torch.full((1, 2), 0.25))
    k3 = 0.5 - 1 - math.log(0.5)  # ref/p - 1 - ln(ref/p) = .193147
    base, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2))
    with_kl, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), ref_logp=ref, kl_coef=0.1)
    assert with_kl.item() - base.item() == pytest.approx(0.1 * k3)
    assert m["kl"] == pytest.approx(k3)
    no_coef, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), ref_logp=ref)
    assert no_coef.item() == pytest.approx(base.item()) and m["kl"] == pytest.approx(k3)
    _, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), ref_logp=ref, kl_estimator="k2")
    assert m["kl"] == pytest.approx(0.5 * math.log(0.5) ** 2)


def test_entropy_bonus_lowers_the_loss_by_coef_times_mean_entropy():
    logp = old = torch.zeros(1, 2)
    entropy = torch.tensor([[1.0, 2.0]])
    base, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), entropy=entropy)
    bonus, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), entropy=entropy, entropy_coef=0.01)
    assert base.item() - bonus.item() == pytest.approx(0.01 * 1.5)
    assert m["entropy"] == pytest.approx(1.5)


def test_is_weights_scale_each_token_and_receive_no_gradient():
    logp = torch.zeros(1, 2, requires_grad=True)
    weights = torch.tensor([[2.0, 0.5]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), is_weights=weights)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.0 + 0.5) / 2)
    assert_close(logp.grad, [[-1.0, -0.25]])
    assert weights.grad is None


# -- behaviour ----------------------------------------------------------------------------------
@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_sgd_step_moves_sampled_tokens_in_the_direction_of_the_advantage(advantage):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)  # B=2 completions, T=5, V=7
    tokens = torch.randint(0, 7, (2, 5))

    def token_logp():
        return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    before = token_logp().detach()
    loss, _ = policy_loss(token_logp(), before, torch.full((2,), advantage), torch.ones(2, 5))
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    change = token_logp().detach() - before
    assert (change * advantage > 0).all()


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_padding_never_changes_the_loss_or_the_gradient(mode, ratio_level):
    torch.manual_seed(1)
    logp = torch.randn(3, 4).clamp(max=-0.1)
    old = logp + 0.1 * torch.randn(3, 4)
    ref = logp + 0.1 * torch.randn(3, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = torch.tensor([0.5, -1.0, 2.0])
    kwargs = dict(
        loss_agg=mode, norm_constant=8.0, ratio_level=ratio_level, kl_coef=0.1, entropy_coef=0.01, dual_clip=3.0
    )

    def run(lp, o, r, msk, a):
        lp = lp.clone().requires_grad_()
        loss, _ = policy_loss(
            lp, o, a, msk, **kwargs, ref_logp=r, entropy=torch.ones_like(lp), is_weights=torch.ones_like(lp)
        )
        loss.backward()
        return loss.item(), lp.grad

    def pad(x, value):  # two garbage columns and one all-padding row
        x = torch.cat([x, torch.full((3, 2), value)], 1)
        return torch.cat([x, torch.full((1, 6), value)])

    plain_loss, plain_grad = run(logp, old, ref, mask, adv)
    padded_mask = torch.cat([torch.cat([mask, torch.zeros(3, 2)], 1), torch.zeros(1, 6)])
    padded_loss, padded_grad = run(
        pad(logp, NAN), pad(old, math.inf), pad(ref, -math.inf), padded_mask, torch.cat([adv, torch.tensor([5.0])])
    )
    assert padded_loss == pytest.approx(plain_loss)
    torch.testing.assert_close(padded_grad[:3, :4], plain_grad)
    assert padded_grad[:, 4:].abs().sum().item() == 0.0 and padded_grad[3].abs().sum().item() == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio_level="seq"), r"ratio_level 'seq': expected one of 'token', 'sequence'"),
        (dict(loss_agg="mean"), r"loss_agg 'mean': expected one of 'token_mean'"),
        (dict(kl_estimator="k4"), r"kl_estimator 'k4': expected one of 'k1', 'k2', 'k3'"),
        (dict(clip_low=1.0), r"clip_low 1.0 / clip_high 0.2: expected 0 <= clip_low < 1"),
        (dict(clip_high=-0.1), r"clip_high -0.1: expected"),
        (dict(dual_clip=0.5), r"dual_clip 0.5: expected None or a constant > 1"),
    ],
)
def test_policy_loss_option_errors_name_the_bad_value(kwargs, message):
    logp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match=message):
        policy_loss(logp, old, adv, mask, **kwargs)


def test_policy_loss_refuses_mismatched_shapes():
    logp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match=r"advantages \(3,\): expected \[B\] = \(2,\)"):
        policy_loss(logp, old, torch.zeros(3), mask)
    with pytest.raises(ValueError, match=r"old_logp \(2, 2\)"):
        policy_loss(logp, old[:, :2], adv, mask)
