"""The policy trainer on a real tiny MoE: frozen routers, expert-load counting, Dr. GRPO normaliser,
micro-batches that change nothing but memory, chunked log-probs, the learning-rate schedule."""

import pytest
import torch

from rlwhf.config import AlgoConfig, MoEConfig, TrainConfig
from rlwhf.train.batch import micro_batches, pack
from rlwhf.train.logprobs import token_logprobs
from rlwhf.train.policy import PolicyTrainer, lr_multiplier


def batch_of(n_completions=4, advantages=None):
    prompts = [[5, 6, 7]] * n_completions
    completions = [[8 + i, 9, 10 + i] for i in range(n_completions)]
    advantages = advantages or [1.0, -1.0] * (n_completions // 2)
    return pack(prompts, completions, [[0.0] * 3] * n_completions, advantages, [False] * n_completions, pad_id=0)


def trainer(path, moe=None, **train):
    return PolicyTrainer(
        path,
        AlgoConfig(),
        TrainConfig(learning_rate=1e-2, warmup_steps=0, **train),
        temperature=1.0,
        max_new_tokens=8,
        moe=moe,
    )


def test_freeze_router_keeps_every_router_and_trains_the_rest(tiny_model):
    policy = trainer(tiny_model, MoEConfig(freeze_router=True))
    before = {k: v.clone() for k, v in policy.full_state_dict().items()}  # the live weights on a CPU
    policy.train_on(batch_of())
    after = policy.full_state_dict()
    routers = [k for k in before if k.endswith("mlp.gate.weight")]
    assert len(routers) == 4
    assert all(torch.equal(before[k], after[k]) for k in routers)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])

    unfrozen = trainer(tiny_model)
    start = {k: v.clone() for k, v in unfrozen.full_state_dict().items()}
    unfrozen.train_on(batch_of())
    assert not torch.equal(start[routers[0]], unfrozen.full_state_dict()[routers[0]])


def test_expert_load_counts_top_k_routes_on_completion_positions_only(tiny_model):
    policy = trainer(tiny_model)
    batch = batch_of(2)
    routes = {}
    policy.score(policy.model, batch, routes)
    own = routes["own"]  # [2 completions, L-1 positions, 4 layers, top-2]
    assert own.shape == (2, batch.mask.shape[1], 4, 2)
    # 2 completions x 3 tokens, each routed to its top-2 of 8 experts, in each of 4 layers.
    assert int((own[batch.mask.bool()] >= 0).sum()) == 2 * 3 * 4 * 2
    metrics = policy.train_on(batch)  # reported by every update
    for layer in range(4):
        assert abs(sum(metrics[f"moe/load/L{layer}/E{e}"] for e in range(8)) - 1.0) < 1e-6
    assert 1.0 <= metrics["moe/max_load_ratio"] <= 8.0 and 0.0 <= metrics["moe/min_load_ratio"] <= 1.0
    assert 0.0 < metrics["moe/router_entropy"] <= float(torch.log(torch.tensor(8.0)))


def test_dr_grpo_normaliser_is_the_generation_budget_not_the_padded_width(tiny_model):
    algo = AlgoConfig(advantage="dr_grpo", loss_agg="seq_mean_token_sum_norm")
    losses = []
    for budget in (8, 16):
        policy = PolicyTrainer(
            tiny_model, algo, TrainConfig(learning_rate=1e-9, warmup_steps=0), temperature=1.0, max_new_tokens=budget
        )
        losses.append(policy.train_on(batch_of(advantages=[1.0, 1.0, 0.5, 0.5]))["pg_loss"])
    # Ratio 1 on the first update: each completion's 3 tokens sum to -3 * A, divided by the budget
    # (not by the batch's padded width, 6), then averaged over the 4 completions.
    assert losses == [pytest.approx(-3 * 0.75 / 8), pytest.approx(-3 * 0.75 / 16)]


def uneven_batch(seed=0, n=12):
    """Completions of different lengths after prompts of different lengths, with mixed advantages."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 90, (3 + i % 4,), generator=g).tolist() for i in range(n)]
    completions = [torch.randint(5, 90, (2 + (7 * i) % 11,), generator=g).tolist() for i in range(n)]
    advantages = torch.randn(n, generator=g).tolist()
    logps = [[-1.0] * len(c) for c in completions]
    return pack(prompts, completions, logps, advantages, [False] * n, pad_id=0)


@pytest.mark.parametrize(
    "loss_agg, ratio_level",
    [
        ("token_mean", "token"),
        ("seq_mean_token_mean", "token"),
        ("seq_mean_token_sum_norm", "token"),
        ("seq_mean_token_mean", "sequence"),
        ("token_mean", "sequence"),
    ],
)
def test_micro_batches_give_the_gradients_and_parameters_of_one_pass_over_the_minibatch(
    tiny_model, loss_agg, ratio_level
):
    # A KL term and an entropy bonus, so every loss term is accumulated. Gradients are compared
    # directly: Adam's first step is about lr * sign(g) and would hide a wrong gradient scale.
    algo = AlgoConfig(loss_agg=loss_agg, ratio_level=ratio_level, kl_coef=0.1, entropy_coef=0.01)
    grads, params = [], []
    for budget in (0, 20):  # 20 padded tokens: micro-batches of one to three sequences
        torch.manual_seed(0)
        policy = PolicyTrainer(
            tiny_model,
            algo,
            TrainConfig(learning_rate=1e-6, warmup_steps=0, minibatch_size=6, micro_batch_tokens=budget),
            temperature=0.8,
            max_new_tokens=16,
        )
        steps = []
        policy.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, steps=steps: steps.append(
                [p.grad.clone() for group in opt.param_groups for p in group["params"] if p.grad is not None]
            )
        )
        metrics = policy.train_on(uneven_batch())
        grads.append(steps)
        params.append(policy.model.state_dict())
    assert len(micro_batches(uneven_batch().lengths[:6], 20)) > 2
    for whole, split in zip(*grads):  # both optimizer steps (two minibatches of 6)
        for a, b in zip(whole, split):
            assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()), rtol=0)
    for name, value in params[0].items():
        assert torch.allclose(value, params[1][name], atol=1e-5, rtol=0), name
    assert metrics["kl"] > 0 and metrics["entropy"] > 0


def test_micro_batches_pack_similar_lengths_within_the_budget():
    groups = micro_batches([5, 30, 6, 29, 7, 100], 60)
    assert groups == [[5], [1, 3], [4, 2, 0]]  # longest first; 2 x 30 and 3 x 7 fit in 60; 100 alone
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert micro_batches([5, 6], 0) == [[0, 1]] and micro_batches([], 10) == []


def test_chunked_logprobs_equal_the_plain_pass_in_value_and_gradient(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = uneven_batch(n=5)
    results = []
    for chunk in (0, 7):  # 7 positions' logits at a time: many chunks, each recomputed in backward
        model.zero_grad()
        logp, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, 0.7, True, chunk)
        ((logp * batch.mask).sum() + entropy.sum()).backward()
        results.append(
            (
                logp.detach(),
                entropy.detach(),
                model.lm_head.weight.grad.clone(),
                model.model.layers[0].self_attn.q_proj.weight.grad.clone(),
            )
        )
    for plain, chunked in zip(*results):
        assert torch.allclose(plain, chunked, atol=1e-5), (plain - chunked).abs().max()


def test_the_entropy_metric_is_the_same_without_a_gradient_and_in_blocks(tiny_model, monkeypatch):
    """Without an entropy bonus the entropy is a metric: taken outside the autograd graph, a few rows
    at a time, it equals the graph's, and the log-probs' gradient is unchanged."""
    from transformers import AutoModelForCausalLM

    import rlwhf.train.logprobs as logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = uneven_batch(n=5)
    monkeypatch.setattr(logprobs, "ENTROPY_BLOCK_BYTES", 3 * 4 * model.config.vocab_size)  # 3 rows a block
    results = []
    for chunk, entropy_grad in ((0, True), (0, False), (7, False)):
        model.zero_grad()
        logp, entropy = token_logprobs(
            model, batch.input_ids, batch.attention_mask, 0.7, True, chunk, entropy_grad=entropy_grad
        )
        assert entropy.requires_grad == entropy_grad
        (logp * batch.mask).sum().backward()
        results.append((logp.detach(), entropy.detach(), model.lm_head.weight.grad.clone()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_learning_rate_warms_up_then_follows_its_schedule():
    assert [lr_multiplier(s, 2, 10, "constant", 0.0) for s in (0, 1, 5, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_multiplier(6, 2, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(6, 2, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(50, 2, 10, "linear", 0.0) == 0.0  # dynamic sampling may take fewer steps, never more


def test_bfloat16_compute_keeps_float32_master_weights_that_small_updates_move(tiny_model):
    policy = PolicyTrainer(
        tiny_model,
        AlgoConfig(),
        TrainConfig(learning_rate=1e-6, warmup_steps=0),
        temperature=1.0,
        max_new_tokens=8,
        dtype="bfloat16",
    )
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    policy.train_on(batch_of())
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    assert policy.optimizer.state[next(iter(policy.model.parameters()))]["exp_avg"].dtype == torch.float32
    moved = [k for k, v in policy.model.state_dict().items() if not torch.equal(v, before[k])]
    # An update of ~1e-6 is below bf16's resolution near 1 (2^-8): in bf16 weights it would round away.
    assert "model.norm.weight" in moved
    assert policy.compute_dtype == torch.bfloat16  # what weight sync casts the engines' copy to


@pytest.mark.parametrize("budget", [0, 20])
def test_a_single_pass_step_trains_and_reports_what_a_separate_old_logprob_pass_does(tiny_model, budget):
    """One update on the whole batch: the old log-probs, routes and importance weights taken from the
    update's own forward give the same gradients, parameters and metrics as a pass of their own."""
    algo = AlgoConfig(tis_cap=2.0, kl_coef=0.1)
    results = []
    for single in (False, True):
        torch.manual_seed(0)
        policy = PolicyTrainer(
            tiny_model,
            algo,
            TrainConfig(
                learning_rate=1e-6, warmup_steps=0, minibatch_size=12, micro_batch_tokens=budget, single_pass=single
            ),
            temperature=0.8,
            max_new_tokens=16,
        )
        assert policy.single_pass(12) is single and not policy.single_pass(13)
        grads = []
        policy.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, grads=grads: grads.extend(
                p.grad.clone() for group in opt.param_groups for p in group["params"] if p.grad is not None
            )
        )
        results.append((policy.train_on(uneven_batch()), grads, policy.model.state_dict()))
    (two, grads_two, params_two), (one, grads_one, params_one) = results
    assert "time/train/old_logprobs" in two and "time/train/old_logprobs" not in one
    for a, b in zip(grads_two, grads_one, strict=True):
        assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()), rtol=0)
    for name, value in params_two.items():
        assert torch.allclose(value, params_one[name], atol=1e-6, rtol=0), name
    for key in (
        "rollout/logp_diff_abs_mean",
        "rollout/is_ratio_max",
        "moe/max_load_ratio",
        "moe/router_entropy",
        "loss",
        "kl",
        "ratio_mean",
    ):
        assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-6), key
    assert one["rollout/logp_diff_abs_mean"] > 0.1  # the batch's rollout log-probs are not the policy's
    assert one["ratio_mean"] == 1.0
