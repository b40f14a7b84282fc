"""Sparse upcycling: a dense Llama made into a Mixtral-architecture MoE computes what the dense model
computed, in transformers and in vLLM; the options make the copies differ; rlwhf's routing steers it."""

import json

import pytest
import torch

from rlwhf.models.upcycle import upcycle

TEXT = "The quick brown fox jumps over the lazy dog. Q: 347+586=?\n<think>7+6=13\n</think>"


@pytest.fixture(scope="module")
def dense_llama(tmp_path_factory):
    """A small dense Llama (random weights, tied embeddings) with the tiny character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlwhf.models.tokenizer import build_tokenizer

    tok = build_tokenizer("plain")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,  # head_dim 32: vLLM's CPU attention has no kernel for 16
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
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


@pytest.mark.parametrize("experts,top_k,router", [(4, 2, "normal"), (8, 1, "normal"), (4, 2, "zeros")])
def test_an_upcycled_model_computes_what_the_dense_one_did(dense_llama, tmp_path, experts, top_k, router):
    made = upcycle(dense_llama, tmp_path / "moe", experts=experts, top_k=top_k, router_init=router)
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == experts
    assert made.dense_params < made.active_params < made.total_params
    # float32, CPU: measured 4.8e-7 (4 experts, top-2); the sum of k equal experts' weighted outputs rounds
    assert (logprobs(dense_llama) - logprobs(tmp_path / "moe")).abs().max() < 1e-5
    info = json.loads((tmp_path / "moe" / "upcycle.json").read_text())
    assert info["experts"] == experts and info["source_model_type"] == "llama"
    assert "computes what the dense model computed" in (tmp_path / "moe" / "README.md").read_text()


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
        ValueError, match="from dense llama or mistral models, which map exactly; this model is 'qwen3_moe'"
    ):
        upcycle(tiny_model, tmp_path / "x", experts=4, top_k=2)
    with pytest.raises(ValueError, match="--top-k must be between 1 and --experts"):
        upcycle(dense_llama, tmp_path / "x", experts=4, top_k=5)


def test_rlwhfs_routing_steers_an_upcycled_model(dense_llama, tmp_path):
    """Replaying any experts, or biasing the selection, changes nothing while the experts are copies."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlwhf.train.routing import Routing

    upcycle(dense_llama, tmp_path / "moe", experts=4, top_k=2)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(tmp_path / "moe")(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
        routing = Routing(model)
        routing.require_steerable("test")
        assert routing.kinds == ["softmax", "softmax"]
        replay = torch.stack([torch.full(ids.shape, 3), torch.zeros(ids.shape, dtype=torch.long)], -1)
        with routing.pass_(torch.ones(ids.shape), replay[..., None, :].expand(-1, -1, 2, -1)) as record:
            replayed = model(ids).logits
    assert (plain - replayed).abs().max() < 1e-5
    assert record.own[0].shape == (ids.shape[1], 2)


@pytest.mark.slow
def test_vllm_runs_an_upcycled_model_as_the_dense_one_and_records_its_routes(dense_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlwhf.rollout import SamplingSettings, make_engine

    upcycle(dense_llama, tmp_path / "moe", experts=4, top_k=2)
    engine = make_engine("vllm", str(tmp_path / "moe"), seed=0, max_model_len=256, record_routes=True)
    groups = engine.generate(
        ["The quick brown fox ", "Q: 347+586=?\n"], SamplingSettings(n=4, max_new_tokens=24, seed=1)
    )
    engine.set_routing_bias(torch.zeros(2, 4))  # auxiliary-loss-free balancing's hook takes this router
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
            assert c.routes.shape == (len(group.prompt_ids) + len(c.token_ids) - 1, 2, 2)
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
def test_two_steps_of_rl_on_an_upcycled_model_through_vllm_with_its_experts_watched_and_balanced(dense_llama, tmp_path):
    """`rlwhf upcycle` then `rlwhf train` on the result: the cold start, vLLM recording routes, the
    trainer replaying them, auxiliary-loss-free balancing on both sides, expert load and agreement."""
    from conftest import ROOT, SHORT, run_cli

    proc = run_cli("upcycle", dense_llama, tmp_path / "moe", "--experts", "4", "--top-k", "2", cwd=tmp_path)
    assert "parameters: 899,840 in all, 506,624 active per token" in proc.stdout
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
        assert {f"moe/load/L{i}/E{e}" for i in range(2) for e in range(4)} <= m.keys()
        assert {f"moe/rollout_load/L{i}/E{e}" for i in range(2) for e in range(4)} <= m.keys()


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
    assert len(said) == 1 and "4 experts per layer, top-2 (899,840 parameters, 506,624 active)" in said[0]
    assert policy_path(recipe.model, say=said.append) == first and len(said) == 1  # cached: not made again
    assert (logprobs(dense_llama) - logprobs(first)).abs().max() < 1e-5
    config = load_model_config(recipe)  # rlwhf plan: the MoE's shape, without making it
    assert config.model_type == "mixtral" and config.num_local_experts == 4
    with pytest.raises(ConfigError, match="the 'tiny' model is an MoE already"):
        load_recipe(None, ["model.upcycle={experts: 4, top_k: 2}"])
    with pytest.raises(ConfigError, match=r"top_k \(5\) must be at most experts \(4\)"):
        load_recipe(None, [f"model.path={dense_llama}", "model.upcycle={experts: 4, top_k: 5}"])
