"""Rollout engines on a real tiny MoE: vLLM's log-probs match the trainer's, before and after a weight sync."""

import pytest
import torch

from rlwhf.rollout import SamplingSettings, make_engine

PROMPTS = ["Q: 12+34=?\n", "Q: 905+77=?\n"]


def hf_logprobs(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    start = len(prompt_ids) - 1
    return [logp[start + i, t].item() for i, t in enumerate(completion_ids)]


@pytest.fixture(scope="module")
def trainer_model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    model.config.output_router_logits = False
    return model


@pytest.mark.slow
def test_vllm_weight_sync_makes_rollout_logprobs_follow_the_trainer(tiny_model, trainer_model):
    engine = make_engine("vllm", tiny_model, seed=0, max_model_len=256)
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)

    before = engine.generate(PROMPTS, greedy)
    c = before[0].completions[0]
    assert c.logprobs == pytest.approx(hf_logprobs(trainer_model, before[0].prompt_ids, c.token_ids), abs=2e-3)

    # A real optimizer step on the trainer's copy, so every parameter moves (experts included).
    optimizer = torch.optim.SGD(trainer_model.parameters(), lr=0.5)
    for name, p in trainer_model.named_parameters():
        p.grad = torch.randn_like(p) * (1.0 if "experts" in name or "lm_head" in name else 0.1)
    optimizer.step()
    engine.update_weights(trainer_model.state_dict())

    after = engine.generate(PROMPTS, greedy)
    for group in after:
        c = group.completions[0]
        assert c.logprobs == pytest.approx(hf_logprobs(trainer_model, group.prompt_ids, c.token_ids), abs=2e-3)
    assert [g.completions[0].token_ids for g in after] != [g.completions[0].token_ids for g in before]

    # Sampling: n completions per prompt, each with one log-prob per token and a finish reason.
    groups = engine.generate(PROMPTS, SamplingSettings(n=4, temperature=1.0, max_new_tokens=8, seed=1))
    assert [len(g.completions) for g in groups] == [4, 4]
    for c in groups[1].completions:
        assert len(c.logprobs) == len(c.token_ids) and c.finish_reason in {"stop", "length"}
        assert c.logprobs == pytest.approx(hf_logprobs(trainer_model, groups[1].prompt_ids, c.token_ids), abs=2e-3)

    # Each prompt has its own random stream: two copies of a prompt in one batch are sampled
    # independently, and the same call with the same seed repeats itself.
    twice = SamplingSettings(n=4, temperature=1.0, max_new_tokens=12, seed=2)
    first, second = engine.generate([PROMPTS[0], PROMPTS[0]], twice)
    assert [c.token_ids for c in first.completions] != [c.token_ids for c in second.completions]
    again, _ = engine.generate([PROMPTS[0], PROMPTS[0]], twice)
    assert [c.token_ids for c in again.completions] == [c.token_ids for c in first.completions]

    # More prompt tokens than one scheduler step takes (4096 on CPU), sampled with seeds, as any real
    # data set's prompts are: with chunked prefill, vLLM would rewind the seeded generator of a
    # half-prefilled request, which a CPU generator cannot do ("CPU Generator does not use offset").
    long_prompts = [f"Q: {i}{'9' * 150}+{i}=?\n" for i in range(40)]
    groups = engine.generate(long_prompts, SamplingSettings(n=8, temperature=1.0, max_new_tokens=4, seed=3))
    assert [len(g.completions) for g in groups] == [8] * 40 and sum(len(g.prompt_ids) for g in groups) * 8 > 4096
    engine.close()
    assert not hasattr(engine, "llm")


@pytest.mark.slow
def test_a_compiled_vllm_engine_samples_like_the_trainer_before_and_after_a_weight_sync(tiny_model):
    """rollout.compile: vLLM's compiled CPU model, whose weights change in place under the compiled code."""
    from transformers import AutoModelForCausalLM

    trainer_model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()  # the weights the engine starts from
    trainer_model.config.output_router_logits = False
    engine = make_engine("vllm", tiny_model, seed=0, max_model_len=256, compile=True)
    assert not engine.llm.llm_engine.vllm_config.model_config.enforce_eager
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    for synced in (False, True):
        if synced:
            optimizer = torch.optim.SGD(trainer_model.parameters(), lr=0.5)
            for p in trainer_model.parameters():
                p.grad = torch.randn_like(p) * 0.1
            optimizer.step()
            engine.update_weights(trainer_model.state_dict())
        for group in engine.generate(PROMPTS, greedy):
            c = group.completions[0]
            assert c.logprobs == pytest.approx(hf_logprobs(trainer_model, group.prompt_ids, c.token_ids), abs=2e-3)
    engine.close()


def test_hf_engine_samples_groups_with_logprobs_and_takes_new_weights(tiny_model, trainer_model):
    engine = make_engine("hf", tiny_model, seed=0)
    engine.update_weights(trainer_model.state_dict())
    groups = engine.generate(PROMPTS, SamplingSettings(n=3, temperature=1.0, max_new_tokens=6, seed=0))
    assert [len(g.completions) for g in groups] == [3, 3]
    c = groups[0].completions[0]
    assert c.logprobs == pytest.approx(hf_logprobs(trainer_model, groups[0].prompt_ids, c.token_ids), abs=1e-4)
    assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)


@pytest.mark.slow
def test_a_bfloat16_vllm_engine_after_a_weight_sync_samples_as_one_started_from_those_weights(tiny_model, tmp_path):
    """vLLM's CPU backend packs the experts for its kernel at load time (on AMX machines, for bfloat16, a
    kernel of its own); a weight sync must leave the engine as if it had loaded the new weights."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.output_router_logits = False
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "experts" in name else 0.05))
    moved = tmp_path / "moved"
    shutil.copytree(tiny_model, moved)
    model.save_pretrained(moved)
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)

    synced = make_engine("vllm", tiny_model, seed=0, max_model_len=256, dtype="bfloat16")
    before = synced.generate(PROMPTS, greedy)
    synced.update_weights({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    after = synced.generate(PROMPTS, greedy)
    synced.close()
    fresh = make_engine("vllm", str(moved), seed=0, max_model_len=256, dtype="bfloat16")
    expected = fresh.generate(PROMPTS, greedy)
    fresh.close()
    assert [g.completions[0].token_ids for g in after] != [g.completions[0].token_ids for g in before]
    for got, want in zip(after, expected):
        assert got.completions[0].token_ids == want.completions[0].token_ids
        assert got.completions[0].logprobs == pytest.approx(want.completions[0].logprobs, abs=1e-4)
