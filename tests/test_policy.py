"""The policy trainer on a real tiny MoE: frozen routers, expert-load counting, Dr. GRPO normaliser."""

import pytest
import torch

from rlwhf.config import AlgoConfig, TrainConfig
from rlwhf.train.batch import pack
from rlwhf.train.policy import ExpertLoad, PolicyTrainer, token_logprobs


def batch_of(n_completions=4, advantages=None):
    prompts = [[5, 6, 7]] * n_completions
    completions = [[8 + i, 9, 10 + i] for i in range(n_completions)]
    advantages = advantages or [1.0, -1.0] * (n_completions // 2)
    return pack(prompts, completions, [[0.0] * 3] * n_completions, advantages, [False] * n_completions, pad_id=0)


def trainer(path, **train):
    return PolicyTrainer(path, AlgoConfig(), TrainConfig(learning_rate=1e-2, warmup_steps=0, **train),
                         temperature=1.0, max_new_tokens=8)


def test_freeze_router_keeps_every_router_and_trains_the_rest(tiny_model):
    policy = trainer(tiny_model, freeze_router=True)
    before = policy.state_dict()
    policy.train_on(batch_of())
    after = policy.state_dict()
    routers = [k for k in before if k.endswith("mlp.gate.weight")]
    assert len(routers) == 4
    assert all(torch.equal(before[k], after[k]) for k in routers)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])

    unfrozen = trainer(tiny_model)
    start = unfrozen.state_dict()
    unfrozen.train_on(batch_of())
    assert not torch.equal(start[routers[0]], unfrozen.state_dict()[routers[0]])


def test_expert_load_counts_top_k_routes_on_completion_positions_only(tiny_model):
    policy = trainer(tiny_model)
    batch = batch_of(2)
    load = ExpertLoad(policy.model)
    with torch.no_grad():
        load.measure(lambda: token_logprobs(policy.model, batch, 1.0), batch.mask)
    # 2 completions x 3 tokens, each routed to its top-2 of 8 experts, in each of 4 layers.
    assert [int(c.sum()) for c in load.counts] == [2 * 3 * 2] * 4
    metrics = load.metrics()
    for layer in range(4):
        assert abs(sum(metrics[f"moe/load/L{layer}/E{e}"] for e in range(8)) - 1.0) < 1e-6
    assert 1.0 <= metrics["moe/load/max_over_mean"] <= 8.0
    assert "moe/load/L0/E0" in policy.train_on(batch)  # reported by every update


def test_dr_grpo_normaliser_is_the_generation_budget_not_the_padded_width(tiny_model):
    algo = AlgoConfig(advantage="dr_grpo", loss_agg="seq_mean_token_sum_norm")
    losses = []
    for budget in (8, 16):
        policy = PolicyTrainer(tiny_model, algo, TrainConfig(learning_rate=1e-9, warmup_steps=0),
                               temperature=1.0, max_new_tokens=budget)
        losses.append(policy.train_on(batch_of(advantages=[1.0, 1.0, 0.5, 0.5]))["pg_loss"])
    # Ratio 1 on the first update: each completion's 3 tokens sum to -3 * A, divided by the budget
    # (not by the batch's padded width, 6), then averaged over the 4 completions.
    assert losses == [pytest.approx(-3 * 0.75 / 8), pytest.approx(-3 * 0.75 / 16)]
