"""Sparse upcycling: a dense Llama made into a Mixtral-architecture MoE computes what the dense model
computed, in transformers and in vLLM; the options make the copies differ; rlwhf's routing steers it."""

import json

import pytest
import torch

from rlwhf.models.upcycle import upcycle

# the small dense models' shape; head_dim 32: vLLM's CPU attention has no kernel for 16
SHAPE = dict(
    hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512
)
TEXT = "The quick brown fox jumps over the lazy dog. Q: 347+586=?\n<think>7+6=13\n</think>"


@pytest.fixture(scope="module")
def dense_llama(tmp_path_factory):
    """A small dense Llama (random weights, tied embeddings) with the tiny character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlwhf.models.tokenizer import build_tokenizer

    tok = build_tokenizer("plain")
    torch.manual_seed(0)
    config = LlamaConfig(
        **SHAPE,
        vocab_size=len(tok),
        num_hidden_layers=2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("dense_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def logprobs(path, text=TEXT):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(path)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), -1)


@pytest.mark.parametrize(
    "experts,top_k,router,layers",
    [(4, 2, "normal", "all"), (8, 1, "normal", "all"), (4, 2, "zeros", "all"), (4, 2, "normal", "every-other")],
)
def test_an_upcycled_model_computes_what_the_dense_one_did(dense_llama, tmp_path, experts, top_k, router, layers):
    made = upcycle(dense_llama, tmp_path / "moe", experts=experts, top_k=top_k, router_init=router, layers=layers)
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    if layers == "all":
        assert config["model_type"] == "mixtral" and config["num_local_experts"] == experts
    else:  # layer 1 of 2 upcycled, layer 0 kept dense: a Qwen2-MoE
        assert config["model_type"] == "qwen2_moe" and config["mlp_only_layers"] == [0] and made.moe_layers == [1]
    assert made.dense_params < made.active_params < made.total_params
    # float32, CPU: measured 4.8e-7 (4 experts, top-2); the sum of k equal experts' weighted outputs rounds
    assert (logprobs(dense_llama) - logprobs(tmp_path / "moe")).abs().max() < 1e-5
    info = json.loads((tmp_path / "moe" / "upcycle.json").read_text())
    assert info["experts"] == experts and info["source_model_type"] == "llama"
    assert "computes what the dense model computed" in (tmp_path / "moe" / "README.md").read_text()


def test_a_dense_qwen2_with_attention_biases_upcycles_exactly_into_a_qwen2_moe(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlwhf.models.tokenizer import build_tokenizer

    tok = build_tokenizer("plain")
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPE, vocab_size=len(tok), num_hidden_layers=3, tie_word_embeddings=False)
    dense = Qwen2ForCausalLM(config)
    with torch.no_grad():  # biases far from zero, so a lost bias would show
        for layer in dense.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    dense.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    for layers in ("all", "top:2"):
        made = upcycle(tmp_path / "dense", tmp_path / layers, experts=4, top_k=2, layers=layers)
        assert made.architecture == "Qwen2-MoE" and made.moe_layers == ([0, 1, 2] if layers == "all" else [1, 2])
        # measured 9.5e-7, as for the Llama
        assert (logprobs(tmp_path / "dense") - logprobs(tmp_path / layers)).abs().max() < 1e-5


def test_which_layers_to_upcycle():
    from rlwhf.models.upcycle import moe_layers

    assert moe_layers("all", 4) == [0, 1, 2, 3]
    assert moe_layers("every-other", 5) == [1, 3]
    assert moe_layers("top:3", 30) == [27, 28, 29]
    assert moe_layers("5, 0,2", 6) == [0, 2, 5]
    assert moe_layers([3, 1], 4) == [1, 3]
    with pytest.raises(ValueError, match="expected 'all', 'every-other'"):
        moe_layers("odd", 4)
    with pytest.raises(ValueError, match=r"names layers \[0, 4\]: the model has 4 layers \(0 to 3\)"):
        moe_layers("0,4", 4)
    with pytest.raises(ValueError, match="give at least one"):
        moe_layers("top:0", 4)


def test_noise_and_drop_upcycling_make_the_copies_differ(dense_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    upcycle(dense_llama, tmp_path / "noisy", experts=4, top_k=2, noise=0.05)
    assert (logprobs(dense_llama) - logprobs(tmp_path / "noisy")).abs().max() > 1e-4
    upcycle(dense_llama, tmp_path / "drop", experts=4, top_k=2, reinit_fraction=0.25)
    experts = AutoModelForCausalLM.from_pretrained(tmp_path / "drop").model.layers[0].mlp.experts
    dense = AutoModelForCausalLM.from_pretrained(dense_llama).model.layers[0].mlp
    original = torch.cat([dense.gate_proj.weight, dense.up_proj.weight])
    redrawn = [set(torch.nonzero((e != original).any(-1)).flatten().tolist()) for e in experts.gate_up_proj]
    assert all(len(rows) == 2 * 64 for rows in redrawn)  # a quarter of 256 neurons, in gate and in up
    assert len({frozenset(r) for r in redrawn}) == 4  # a different quarter in each copy


def test_upcycle_refuses_what_it_cannot_map_exactly(tiny_model, dense_llama, tmp_path):
    with pytest.raises(
        ValueError, match="from dense llama, mistral, qwen2 models, which map exactly; this model is 'qwen3_moe'"
    ):
        upcycle(tiny_model, tmp_path / "x", experts=4, top_k=2)
    with pytest.raises(ValueError, match="--top-k must be between 1 and --experts"):
        upcycle(dense_llama, tmp_path / "x", experts=4, top_k=5)


@pytest.mark.parametrize("layers", ["all", "top:1"])
def test_rlwhfs_routing_steers_an_upcycled_model(dense_llama, tmp_path, layers):
    """Replaying any experts, or biasing the selection, changes nothing while the experts are copies."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlwhf.train.routing import Routing

    upcycle(dense_llama, tmp_path / "moe", experts=4, top_k=2, layers=layers)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(tmp_path / "moe")(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
        routing = Routing(model)
        routing.require_steerable("test")
        assert routing.kinds == ["softmax"] * (2 if layers == "all" else 1)
        replay = torch.stack([torch.full(ids.shape, 3), torch.zeros(ids.shape, dtype=torch.long)], -1)
        with routing.pass_(torch.ones(ids.shape), replay[..., None, :].expand(-1, -1, len(routing), -1)) as record:
            replayed = model(ids).logits
    assert (plain - replayed).abs().max() < 1e-5
    assert record.own[0].shape == (ids.shape[1], 2)


@pytest.mark.slow
@pytest.mark.parametrize("layers,moe_layers", [("all", 2), ("top:1", 1)])  # Mixtral; a Qwen2-MoE with a dense layer
def test_vllm_runs_an_upcycled_model_as_the_dense_one_and_records_its_routes(dense_llama, tmp_path, layers, moe_layers):
    from transformers import AutoModelForCausalLM

    from rlwhf.rollout import SamplingSettings, make_engine

    upcycle(dense_llama, tmp_path / "moe", experts=4, top_k=2, layers=layers)
    engine = make_engine("vllm", str(tmp_path / "moe"), seed=0, max_model_len=256, record_routes=True)
    groups = engine.generate(
        ["The quick brown fox ", "Q: 347+586=?\n"], SamplingSettings(n=4, max_new_tokens=24, seed=1)
    )
    engine.set_routing_bias(torch.zeros(moe_layers, 4))  # auxiliary-loss-free balancing's hook takes this router
    engine.close()
    dense = AutoModelForCausalLM.from_pretrained(dense_llama, dtype=torch.float32).eval()
    worst = 0.0
    for group in groups:
        for c in group.completions:
            with torch.no_grad():
                logp = torch.log_softmax(dense(torch.tensor([group.prompt_ids + c.token_ids])).logits[0, :-1], -1)
            start = len(group.prompt_ids) - 1
            want = torch.tensor([logp[start + i, t].item() for i, t in enumerate(c.token_ids)])
            worst = max(worst, (want - torch.tensor(c.logprobs)).abs().max().item())
            assert c.routes.shape == (len(group.prompt_ids) + len(c.token_ids) - 1, moe_layers, 2)
            assert (c.routes >= 0).all() and (c.routes < 4).all()
    assert worst < 1e-5  # measured 9.5e-7: vLLM's MoE on the copies is the dense model


@pytest.mark.slow
def test_smollm2_upcycled_computes_what_smollm2_did(smollm2, tmp_path):
    smollm2, _ = smollm2
    made = upcycle(smollm2, tmp_path / "moe", experts=4, top_k=2)
    assert made.dense_params == 134_515_008
    text = "The capital of France is Paris. 12 * 7 = 84, so the answer is 84."
    assert (logprobs(smollm2, text) - logprobs(tmp_path / "moe", text)).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("layers", ["all", "top:1"])  # a Mixtral; a Qwen2-MoE whose layer 0 stays dense
def test_two_steps_of_rl_on_an_upcycled_model_through_vllm_with_its_experts_watched_and_balanced(
    dense_llama, tmp_path, layers
):
    """`rlwhf upcycle` then `rlwhf train` on the result: the cold start, vLLM recording routes, the
    trainer replaying them, auxiliary-loss-free balancing on both sides, expert load and agreement;
    then `rlwhf export`, whose folder vLLM serves as transformers computes it."""
    from conftest import ROOT, SHORT, run_cli

    moe = tmp_path / "moe"
    proc = run_cli("upcycle", dense_llama, moe, "--experts", "4", "--top-k", "2", "--layers", layers, cwd=tmp_path)
    if layers == "all":
        assert "parameters: 899,840 in all, 506,624 active per token" in proc.stdout
    else:
        assert (
            "Qwen2-MoE-architecture MoE with 4 experts, top-2, in layers 1 of 2 (the others stay dense)" in proc.stdout
        )
    moe_layers = [0, 1] if layers == "all" else [0]
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-base.yaml",
        *SHORT,
        f"model.path={tmp_path / 'moe'}",
        "train.steps=2",
        "train.eval_every=0",
        "moe.rollout_routing=true",
        "moe.routing_replay=rollout",
        "moe.balance=aux_free",
        "run.name=rl",
        f"run.output_dir={tmp_path}",
        cwd=tmp_path,
        paying=(),
    )
    steps = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "loss" in m]
    assert len(trained) == 2
    for m in trained:
        assert 0 < m["moe/routing_agreement"] <= 1 and m["moe/max_load_ratio"] >= 1
        assert m["moe/rollout_max_load_ratio"] >= 1 and m["moe/bias_abs_mean"] > 0  # aux-free moved the bias
        assert {f"moe/load/L{i}/E{e}" for i in moe_layers for e in range(4)} <= m.keys()
        assert {f"moe/rollout_load/L{i}/E{e}" for i in moe_layers for e in range(4)} <= m.keys()
        assert f"moe/load/L{len(moe_layers)}/E0" not in m
    run_cli("export", tmp_path / "rl", tmp_path / "exported", "--ignore-routing-bias", cwd=tmp_path)
    _served_as_computed(tmp_path / "exported")


def _served_as_computed(folder):
    """vLLM's log-probs of its own samples from ``folder`` equal transformers' (float32)."""
    from transformers import AutoModelForCausalLM

    from rlwhf.rollout import SamplingSettings, make_engine

    engine = make_engine("vllm", str(folder), seed=0, max_model_len=256)
    group = engine.generate(["Q: 347+586=?\n"], SamplingSettings(n=2, max_new_tokens=16, seed=1))[0]
    engine.close()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for c in group.completions:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([group.prompt_ids + c.token_ids])).logits[0, :-1], -1)
        start = len(group.prompt_ids) - 1
        want = torch.tensor([logp[start + i, t].item() for i, t in enumerate(c.token_ids)])
        assert (want - torch.tensor(c.logprobs)).abs().max() < 1e-4


def test_a_recipes_model_upcycle_is_made_once_and_cached(dense_llama, tmp_path, monkeypatch):
    from rlwhf.commands.plan import load_model_config
    from rlwhf.config import ConfigError, load_recipe
    from rlwhf.models.upcycle import policy_path

    monkeypatch.setenv("RLWHF_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(
        None, [f"model.path={dense_llama}", "model.upcycle={experts: 4, top_k: 2}", "sft.enabled=false"]
    )
    said = []
    first = policy_path(recipe.model, say=said.append)
    assert (
        len(said) == 1
        and "Mixtral-architecture MoE, 4 experts in 2 layers, top-2 (899,840 parameters, 506,624 active)" in said[0]
    )
    assert policy_path(recipe.model, say=said.append) == first and len(said) == 1  # cached: not made again
    assert (logprobs(dense_llama) - logprobs(first)).abs().max() < 1e-5
    config = load_model_config(recipe)  # rlwhf plan: the MoE's shape, without making it
    assert config.model_type == "mixtral" and config.num_local_experts == 4
    partial = load_recipe(None, [f"model.path={dense_llama}", "model.upcycle={experts: 4, top_k: 2, layers: top:1}"])
    config = load_model_config(partial)
    assert config.model_type == "qwen2_moe" and config.mlp_only_layers == [0]
    with pytest.raises(ConfigError, match="model.upcycle.layers = 'odd': layers 'odd': expected 'all', 'every-other'"):
        load_recipe(None, [f"model.path={dense_llama}", "model.upcycle={experts: 4, top_k: 2, layers: odd}"])
    with pytest.raises(ConfigError, match="the 'tiny' model is an MoE already"):
        load_recipe(None, ["model.upcycle={experts: 4, top_k: 2}"])
    with pytest.raises(ConfigError, match=r"top_k \(5\) must be at most experts \(4\)"):
        load_recipe(None, [f"model.path={dense_llama}", "model.upcycle={experts: 4, top_k: 5}"])


def test_expert_spread_is_zero_for_copies_and_grows_with_their_differences(dense_llama, tmp_path):
    from rlwhf.models.upcycle import expert_spread

    upcycle(dense_llama, tmp_path / "copies", experts=4, top_k=2)
    assert expert_spread(tmp_path / "copies") == [0.0, 0.0]
    upcycle(dense_llama, tmp_path / "small", experts=4, top_k=2, noise=0.01)
    upcycle(dense_llama, tmp_path / "large", experts=4, top_k=2, noise=0.1, layers="top:1")
    small, large = expert_spread(tmp_path / "small"), expert_spread(tmp_path / "large")
    assert len(small) == 2 and len(large) == 1  # one value per MoE layer
    # independent noise of 0.01 std per weight on each copy: pairs differ by ~sqrt(2) x 0.01 of a norm
    assert all(0.01 < v < 0.02 for v in small) and 0.1 < large[0] < 0.2
