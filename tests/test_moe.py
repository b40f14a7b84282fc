"""MoE-aware RL on real tiny models: routers found by type, the routing rlwhf computes equals
transformers', routing replay (R2, R3), auxiliary-loss-free balancing on both sides and across a
resume, router losses, the rollout engine's routes recorded from vLLM, the DeepSeek-V3-style policy."""

import json

import pytest
import torch

from rlwhf.config import AlgoConfig, ConfigError, MoEConfig, TrainConfig, load_recipe
from rlwhf.models.tiny import TinyMoEConfig, build_tiny_moe
from rlwhf.rollout.base import SamplingSettings
from rlwhf.train.batch import pack, pack_groups
from rlwhf.train.policy import PolicyTrainer
from rlwhf.train.routing import ROUTING_BIAS_FILE, Routing, agreement, aux_free_update, find_routers

PROMPTS = ["Compute 123+456.", "Compute 77*8.", "Compute 905-38."]


@pytest.fixture(scope="module")
def tiny_dsv3(tmp_path_factory):
    return str(build_tiny_moe(tmp_path_factory.mktemp("dsv3"), TinyMoEConfig(arch="deepseek_v3")))


def trainer(path, dtype="float32", **moe):
    return PolicyTrainer(
        path,
        AlgoConfig(),
        TrainConfig(learning_rate=1e-3, warmup_steps=0, minibatch_size=12),
        temperature=1.0,
        max_new_tokens=16,
        dtype=dtype,
        moe=MoEConfig(**moe),
    )


def batch_from(groups):
    n = sum(len(g.completions) for g in groups)
    return pack_groups(groups, [1.0, -1.0] * (n // 2))


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_rlwhf_routing_computes_what_transformers_does(arch, tiny_model, tiny_dsv3):
    from transformers import AutoModelForCausalLM

    path = tiny_model if arch == "qwen3_moe" else tiny_dsv3
    ids = torch.tensor([[5, 9, 14, 22, 31, 40, 41]])
    plain = AutoModelForCausalLM.from_pretrained(path)
    steered = AutoModelForCausalLM.from_pretrained(path)
    routing = Routing(steered)
    assert len(routing) == 4 and routing.kinds == [{"qwen3_moe": "softmax", "deepseek_v3": "sigmoid"}[arch]] * 4
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, steered(ids).logits)


def test_replay_takes_the_given_experts_and_gates_them_with_the_current_router(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    routing = Routing(model)
    ids = torch.tensor([[5, 9, 14, 22]])
    forced = torch.tensor([6, 7]).expand(1, 4, 4, 2)  # every position, every layer: experts 6 and 7
    with routing.pass_(torch.ones(1, 4), replay=forced) as record:
        logits = model(ids).logits
    router = find_routers(model)[0][1]
    selected = router(model.model.embed_tokens(ids))[2]  # outside a pass: its own choice
    assert not (selected.sort(-1).values == torch.tensor([6, 7])).all()
    assert record.own[0].shape == (4, 2)
    logits.sum().backward()  # the router still learns under replay
    assert router.weight.grad is not None and router.weight.grad[[6, 7]].abs().sum() > 0
    # Renormalised over the chosen two, the gates depend on those two logits only (the rest is rounding).
    assert router.weight.grad[[0, 1, 2, 3, 4, 5]].abs().sum() < 1e-4 * router.weight.grad[[6, 7]].abs().sum()


def test_aux_free_update_moves_each_bias_against_its_load():
    counts = torch.tensor([[10.0, 2.0, 4.0, 0.0]])  # mean load 4
    assert torch.equal(aux_free_update(torch.zeros(1, 4), counts, 0.5), torch.tensor([[-0.5, 0.5, 0.0, 0.5]]))
    a = torch.tensor([[[1, 2]], [[3, 4]], [[-1, -1]]])  # [rows, layers, k]
    assert agreement(a, torch.tensor([[[2, 1]], [[3, 5]], [[0, 1]]])).tolist() == [0.5]  # sets, unknown left out


@pytest.fixture(scope="module")
def engine(tiny_model):
    from rlwhf.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model, record_routes=True, prefix_caching=False)
    yield engine
    engine.close()


def test_vllm_routes_are_recorded_and_the_trainer_agrees_with_them_in_float32(engine, tiny_model):
    groups = engine.generate(PROMPTS, SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=3))
    for group in groups:
        for c in group.completions:
            assert c.routes.shape == (len(group.prompt_ids) + len(c.token_ids) - 1, 4, 2)
            assert (c.routes >= 0).all()  # every position fed to the model was computed (no prefix cache)
    metrics = trainer(tiny_model).train_on(batch_from(groups))
    assert metrics["moe/routing_agreement"] > 0.98  # the same float32 weights: ties are the only difference
    assert abs(metrics["moe/rollout_max_load_ratio"] - metrics["moe/max_load_ratio"]) < 0.05
    for layer in range(4):
        assert abs(sum(metrics[f"moe/rollout_load/L{layer}/E{e}"] for e in range(8)) - 1) < 1e-6


def test_the_engine_selects_with_the_trainers_bias_after_a_sync_and_a_resume_restores_it(engine, tiny_model, tmp_path):
    policy = trainer(tiny_model, balance="aux_free", bias_update_rate=0.01)
    bias = torch.zeros(4, 8)
    bias[:, 3] = 5.0  # larger than any score difference: expert 3 is among every token's top-2
    policy.routing.set_bias(bias)
    assert torch.equal(policy.bias_for_engines(), bias)
    engine.update_weights([policy.full_state_dict()])  # the path of a weight sync: the weights, then the bias
    engine.set_routing_bias(policy.bias_for_engines())
    groups = engine.generate(PROMPTS, SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=3))
    routes = [c.routes for g in groups for c in g.completions]
    assert all((r == 3).any(-1).all() for r in routes)
    metrics = policy.train_on(batch_from(groups))
    assert metrics["moe/routing_agreement"] > 0.98  # the trainer selects with the same bias
    # Expert 3 took every token: its bias went down by one step, the idle experts' up.
    after = policy.routing.bias
    assert torch.allclose(after[:, 3], torch.full((4,), 5.0 - 0.01))
    assert (after[:, [0, 1, 2, 4, 5, 6, 7]] <= 0.01 + 1e-6).all() and after.max() > 4.0

    policy.save(tmp_path / "ckpt")
    assert torch.equal(torch.load(tmp_path / "ckpt" / ROUTING_BIAS_FILE), after)
    resumed = trainer(str(tmp_path / "ckpt"), balance="aux_free", bias_update_rate=0.01)
    assert torch.equal(resumed.routing.bias, after)  # read beside the weights
    resumed.routing.set_bias(torch.zeros(4, 8))
    resumed.load_trainer_state(tmp_path / "ckpt")
    assert torch.equal(resumed.routing.bias, after)  # and from the trainer state
    engine.set_routing_bias(torch.zeros(4, 8))  # leave it as found


def test_replay_makes_the_first_ratio_exactly_one_and_rollout_replay_lowers_the_mismatch(tiny_model):
    """In bfloat16 vLLM and the trainer route some tokens differently; replaying the rollout's experts
    (R3) brings the trainer's log-probs closer to the sampler's."""
    from rlwhf.rollout.vllm_engine import VLLMEngine

    sft = tiny_model
    engine = VLLMEngine(sft, dtype="bfloat16", record_routes=True, prefix_caching=False)
    groups = engine.generate(PROMPTS * 2, SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=5))
    engine.close()
    batch = batch_from(groups)
    seen = {}
    for mode in ("none", "trainer", "rollout"):
        policy = PolicyTrainer(
            sft,
            AlgoConfig(),
            TrainConfig(learning_rate=1e-3, warmup_steps=0, minibatch_size=24),
            temperature=1.0,
            max_new_tokens=16,
            dtype="bfloat16",
            moe=MoEConfig(routing_replay=mode),
        )
        seen[mode] = policy.train_on(batch)
        assert seen[mode]["ratio_max"] == 1.0 and seen[mode]["ratio_mean"] == 1.0, mode  # one minibatch, old weights
    assert seen["none"]["moe/routing_agreement"] < 1.0  # bfloat16 routes some tokens elsewhere
    assert seen["rollout"]["rollout/logp_diff_abs_mean"] < seen["none"]["rollout/logp_diff_abs_mean"]
    assert seen["trainer"]["rollout/logp_diff_abs_mean"] == seen["none"]["rollout/logp_diff_abs_mean"]


def test_router_losses_are_reported_and_reach_the_router(tiny_model):
    batch = pack(
        [[5, 6, 7]] * 4,
        [[8 + i, 9, 10 + i] for i in range(4)],
        [[0.0] * 3] * 4,
        [1.0, -1.0, 1.0, -1.0],
        [False] * 4,
        pad_id=0,
    )
    routers = {}
    for name, moe in (
        ("plain", {}),
        ("z", {"z_loss_coef": 1.0}),
        ("aux", {"balance": "aux_loss", "aux_loss_coef": 1.0}),
    ):
        policy = trainer(tiny_model, **moe)
        metrics = policy.train_on(batch)
        routers[name] = find_routers(policy.model)[0][1].weight.detach().clone()
        if name != "plain":
            assert metrics["moe/z_loss"] > 0 and metrics["moe/aux_loss"] >= 1.0 - 1e-6  # E * sum(share * prob) >= 1
    assert not torch.equal(routers["plain"], routers["z"]) and not torch.equal(routers["plain"], routers["aux"])


def test_freeze_router_refuses_a_model_without_routers_and_the_old_key_says_where_it_went(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rlwhf.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("plain")
    dense = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        )
    )
    dense.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="moe.freeze_router: Qwen3ForCausalLM has no MoE router"):
        trainer(str(tmp_path), freeze_router=True)
    trainer(str(tmp_path))  # a dense model trains without MoE controls
    with pytest.raises(ValueError, match="has no MoE router"):
        trainer(str(tmp_path), balance="aux_free")
    with pytest.raises(ConfigError, match="moe.freeze_router"):
        load_recipe(None, ["train.freeze_router=true"])
    with pytest.raises(ConfigError, match="rollout.engine vllm"):
        load_recipe(None, ["moe.routing_replay=rollout", "rollout.engine=hf"])


def test_deepseek_v3_tiny_runs_in_vllm_like_the_trainer(tiny_dsv3):
    from rlwhf.rollout.vllm_engine import VLLMEngine

    config = json.loads(open(f"{tiny_dsv3}/config.json").read())
    assert config["topk_method"] == "noaux_tc" and config["kv_lora_rank"] + config["qk_rope_head_dim"] == 576
    engine = VLLMEngine(tiny_dsv3, record_routes=True, prefix_caching=False)
    groups = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=1.0, max_new_tokens=12, seed=1))
    policy = trainer(tiny_dsv3, balance="aux_free", bias_update_rate=0.01)
    metrics = policy.train_on(batch_from(groups))
    # Untrained, attention contributes little and vLLM's CPU MLA agrees with transformers' (not so after
    # training: see the loop test below and docs/moe.md).
    assert metrics["rollout/logp_diff_abs_mean"] < 0.01
    assert metrics["moe/routing_agreement"] > 0.95
    bias = policy.routing.bias  # DeepSeek-V3's own e_score_correction_bias moved
    assert bias.abs().sum() > 0 and not policy.routing.bias_is_external
    state = policy.full_state_dict()
    assert torch.equal(state["model.layers.0.mlp.gate.e_score_correction_bias"], bias[0])
    engine.update_weights(state)  # the bias travels as the model's own weight
    again = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=1.0, max_new_tokens=12, seed=1))
    assert policy.train_on(batch_from(again))["moe/routing_agreement"] > 0.95
    engine.close()


@pytest.mark.slow
def test_the_whole_loop_balances_replays_and_resumes_with_the_engine_selecting_as_the_trainer(tmp_path):
    """Through the CLI: aux-free balancing with rollout replay; after a resume the engine starts from
    the checkpoint's bias (read beside its weights), so trainer and engine agree from the first step."""
    from conftest import ROOT, SHORT, run_cli

    run_dir = tmp_path / "runs" / "moe"
    common = ["moe.balance=aux_free", "moe.routing_replay=rollout", "moe.bias_update_rate=0.01"]
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-base.yaml",
        *SHORT,
        *common,
        "train.steps=2",
        "run.name=moe",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    saved = torch.load(run_dir / "checkpoints" / "step_2" / ROUTING_BIAS_FILE)
    assert saved.shape == (4, 8) and saved.abs().sum() > 0
    run_cli("train", "--resume", str(run_dir), "train.steps=3", cwd=tmp_path)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "moe/routing_agreement" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(m["moe/routing_agreement"] > 0.98 for m in steps)  # float32: both sides select alike
    assert all(m["rollout/logp_diff_abs_mean"] < 1e-4 for m in steps)
    assert steps[2]["moe/bias_abs_mean"] > steps[0]["moe/bias_abs_mean"]
    resumed = torch.load(run_dir / "checkpoints" / "step_3" / "trainer_state.pt", weights_only=False)
    assert not torch.equal(resumed["routing_bias"], saved)  # it went on moving from the saved bias


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_the_whole_loop_trains_the_deepseek_v3_tiny_with_aux_free_balancing(engine, tmp_path):
    """With either engine. vLLM's CPU MLA runs the SFT'd tiny but its log-probs drift from
    transformers' (docs/moe.md#a-deepseek-v3-style-policy): the transformers engine is the exact one."""
    from conftest import ROOT, SHORT, run_cli

    run_dir = tmp_path / "runs" / "dsv3"
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-base.yaml",
        *SHORT,
        "model.tiny.arch=deepseek_v3",
        f"rollout.engine={engine}",
        "moe.balance=aux_free",
        "moe.bias_update_rate=0.01",
        "train.steps=2",
        "run.name=dsv3",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
        paying=(),
    )  # 20 SFT steps teach this architecture less than the Qwen3-MoE: the format may not pay yet
    config = json.loads((run_dir / "checkpoints" / "step_2" / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3"
    assert not (run_dir / "checkpoints" / "step_2" / ROUTING_BIAS_FILE).exists()  # the model holds its bias
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "loss" in m]
    assert len(steps) == 2 and steps[1]["moe/bias_abs_mean"] > steps[0]["moe/bias_abs_mean"] > 0
    if engine == "hf":  # the trainer's own model class samples: the same log-probs
        assert all(m["rollout/logp_diff_abs_mean"] < 1e-4 for m in steps)
    else:  # routes recorded from vLLM; measured 0.93 and 0.89 agreement, 0.028 mean |log-prob diff|
        assert all(0.5 < m["moe/routing_agreement"] <= 1.0 and m["rollout/logp_diff_abs_mean"] < 0.2 for m in steps)


def test_a_deliberate_start_skew_is_applied_on_both_sides_and_kept_without_balancing(tmp_path, tiny_model, tiny_dsv3):
    import shutil

    from rlwhf.rollout import make_engine
    from rlwhf.train.routing import write_start_skew

    model = tmp_path / "skewed"
    shutil.copytree(tiny_model, model)
    bias = write_start_skew(model, 0.2)
    assert bias.shape == (4, 8) and torch.equal(bias[:, :2], torch.full((4, 2), 0.2)) and not bias[:, 2:].any()
    policy = trainer(str(model))  # balance none: the bias stays, and still travels with the weights
    assert torch.equal(policy.routing.bias, bias)
    assert torch.equal(policy.bias_for_engines(), bias)
    assert trainer(tiny_model).bias_for_engines() is None  # no bias, nothing to send
    # The engine reads the bias beside the weights and routes as the skewed trainer does.
    engine = make_engine("vllm", str(model), seed=0, max_model_len=128)
    groups = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=3))
    engine.close()
    metrics = policy.train_on(batch_from(groups))
    assert metrics["moe/max_load_ratio"] > 2.5  # the two favoured experts of eight take most of the slots
    with pytest.raises(ValueError, match="not a softmax-routed MoE model"):
        write_start_skew(tiny_dsv3, 0.2)


@pytest.mark.slow
def test_the_balance_recipe_skews_a_balanced_sft_and_both_sides_select_with_it(tmp_path):
    """recipes/tiny-moe-balance.yaml as a user runs it (shortened), with balance none: the SFT leaves its
    own bias, the start adds the skew to it, trainer and engine select with that, and it stays."""
    from conftest import ROOT, SHORT, run_cli

    run_dir = tmp_path / "runs" / "skew"
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-moe-balance.yaml",
        *SHORT,
        "train.steps=2",
        "moe.balance=none",
        "run.name=skew",
        f"run.output_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    sft_bias = torch.load(run_dir / "model" / "sft" / ROUTING_BIAS_FILE)
    start = torch.load(run_dir / "model" / "start" / ROUTING_BIAS_FILE)
    assert sft_bias.abs().sum() > 0  # sft.bias_update_rate balanced the SFT
    skew = torch.zeros(4, 8)
    skew[:, :2] = 0.2
    assert torch.allclose(start, sft_bias + skew)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "moe/routing_agreement" in m]
    assert all(m["moe/routing_agreement"] > 0.98 for m in steps)  # the engine selects with the trainer's bias
    assert all(m["moe/max_load_ratio"] > 2.0 for m in steps)  # the skew shows on both sides
    assert all(abs(m["moe/rollout_max_load_ratio"] - m["moe/max_load_ratio"]) < 0.05 for m in steps)
    assert torch.equal(torch.load(run_dir / "checkpoints" / "step_2" / ROUTING_BIAS_FILE), start)  # kept


def test_the_sft_aux_loss_weight_reaches_the_sft_cache_key_only_when_set(tmp_path):
    from rlwhf.starting_policy import sft_cache_dir

    base = load_recipe(None, [f"run.output_dir={tmp_path}"])
    assert sft_cache_dir(
        load_recipe(None, [f"run.output_dir={tmp_path}", "sft.router_aux_loss_coef=0.05"])
    ) != sft_cache_dir(base)


def test_a_balanced_sft_leaves_beside_its_weights_a_bias_that_evens_out_the_completion_load(tmp_path, tiny_model):
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlwhf.starting_policy import sft_cache_dir
    from rlwhf.train.routing import count_experts, load_ratios
    from rlwhf.train.sft import cold_start_sft

    rng = random.Random(0)
    examples = [
        {"prompt": f"{a}+{b}=", "solution": f"{a + b}"}
        for a, b in ((rng.randint(10, 99), rng.randint(10, 99)) for _ in range(64))
    ]
    rate, steps = 0.01, 40
    plain = cold_start_sft(
        tiny_model, examples, tmp_path / "plain", steps=steps, batch_size=16, learning_rate=3e-3, seed=0
    )
    balanced = cold_start_sft(
        tiny_model,
        examples,
        tmp_path / "balanced",
        steps=steps,
        batch_size=16,
        learning_rate=3e-3,
        seed=0,
        bias_update_rate=rate,
    )
    assert not (plain / ROUTING_BIAS_FILE).exists()
    bias = torch.load(balanced / ROUTING_BIAS_FILE)
    moves = bias / rate  # every expert moved a whole number of sign steps, at most one a step
    assert torch.allclose(moves, moves.round(), atol=1e-3) and moves.abs().max() <= steps and bias.abs().sum() > 0

    tokenizer = AutoTokenizer.from_pretrained(balanced)
    model = AutoModelForCausalLM.from_pretrained(balanced, dtype="float32").eval()
    routing = Routing(model)
    rows = [(tokenizer(e["prompt"])["input_ids"], tokenizer(e["solution"])["input_ids"]) for e in examples]
    width = max(len(p) + len(s) for p, s in rows)
    ids = torch.tensor([p + s + [0] * (width - len(p) - len(s)) for p, s in rows])
    mask = torch.tensor([[len(p) <= t < len(p) + len(s) for t in range(width)] for p, s in rows])

    def busiest_over_mean(with_bias: bool) -> float:
        routing.set_bias(bias if with_bias else torch.zeros_like(bias))
        with torch.no_grad(), routing.pass_(mask=mask) as record:
            model(ids)
        own = torch.stack([o[mask.reshape(-1)] for o in record.own], dim=1)
        return float(load_ratios(count_experts(own, routing.num_experts))[0].mean())

    with_bias, without = busiest_over_mean(True), busiest_over_mean(False)
    assert with_bias < without - 0.2
    base = load_recipe(None, [f"run.output_dir={tmp_path}"])  # the setting enters the cache key only when set
    assert sft_cache_dir(
        load_recipe(None, [f"run.output_dir={tmp_path}", "sft.bias_update_rate=0.002"])
    ) != sft_cache_dir(base)
