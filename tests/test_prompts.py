"""Prompts for real models: chat templates, system prompts, prompt templates, the prompt-length limit,
and conversational data handed to rewards in TRL's shape, end to end with a Qwen-style template."""

import json
from pathlib import Path

import pytest
from conftest import run_cli

from rlwhf.config import DataConfig
from rlwhf.data.prompts import PromptRenderer, prepare_prompts
from rlwhf.models.tiny import TinyMoEConfig, build_tiny_moe, build_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def test_a_chatml_tokenizer_renders_system_and_user_turns_and_opens_the_assistants():
    renderer = PromptRenderer(
        build_tokenizer("chatml"), DataConfig(system_prompt="Add.", prompt_template="{prompt} Box it: \\boxed{}.")
    )
    text, ids = renderer.render("Q: 1+2=?")
    assert text == (
        "<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\nQ: 1+2=? Box it: \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert ids == renderer.tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == renderer.tokenizer.convert_tokens_to_ids("<|im_start|>")  # one token, not 12 characters
    # A conversation is rendered as it is, its own system message kept.
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    assert renderer.render(own)[0].startswith("<|im_start|>system\nMine.<|im_end|>")


def test_without_a_chat_template_the_prompt_is_plain_text_and_the_tiny_tasks_render_as_themselves():
    tokenizer = build_tokenizer()
    plain = PromptRenderer(tokenizer, DataConfig())  # the tiny tokenizer's template joins the contents
    assert plain.render("Q: 12+34=?\n") == ("Q: 12+34=?\n", tokenizer("Q: 12+34=?\n").input_ids)
    none = PromptRenderer(tokenizer, DataConfig(chat_template="none", system_prompt="Add."))
    assert none.render("Q: 1+2=?")[0] == "Add.\n\nQ: 1+2=?"


def test_prompts_over_the_limit_are_dropped_and_counted_or_refused_naming_the_row():
    renderer = PromptRenderer(build_tokenizer(), DataConfig())
    rows = [{"prompt": "Q: 1+2=?"}, {"prompt": "x" * 50}, {"prompt": "Q: 3+4=?"}]
    prepared = prepare_prompts(rows, renderer, 20, "drop")
    assert prepared.dropped == 1 and [r["prompt"] for r in prepared.rows] == ["Q: 1+2=?", "Q: 3+4=?"]
    assert prepared.rows[0]["prompt_ids"] == renderer.tokenizer("Q: 1+2=?").input_ids
    with pytest.raises(
        ValueError, match="train row 1: its prompt is 50 tokens as rendered, more than rollout.max_prompt_tokens=20"
    ):
        prepare_prompts(rows, renderer, 20, "error", "train")


def test_a_prompt_template_must_say_where_the_prompt_goes():
    with pytest.raises(ValueError, match="has no {prompt}"):
        DataConfig(prompt_template="Solve it.")


@pytest.mark.slow
def test_a_conversational_data_file_trains_a_chat_model_and_trls_own_reward_works_unchanged(tmp_path):
    from rlwhf.data.arithmetic import make_arithmetic

    model = build_tiny_moe(tmp_path / "chat-model", TinyMoEConfig(chat_format="chatml"))
    rows = [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"], "solution": r["solution"]}
        for r in make_arithmetic(120, 0, 2, 2, 0.5)
    ]
    rows.append({"prompt": [{"role": "user", "content": "Q: " + "9" * 200 + "+1=?"}], "answer": "0", "solution": ""})
    # Bad rows do not stop a run: the loader drops them (data.bad_rows=drop) and the summary counts them.
    rows += [dict(rows[3]), {"prompt": [], "answer": "1", "solution": ""}, {**rows[5], "answer": None}]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli(
        "train",
        ROOT / "recipes" / "tiny-base.yaml",
        f"model.path={model}",
        "data.task=dataset",
        f"data.dataset={data}",
        "data.num_test=8",
        "eval.num_prompts=8",
        "data.system_prompt=You add.",
        "rollout.max_prompt_tokens=96",
        "sft.steps=30",
        "sft.num_examples=100",
        "rewards.funcs=[{name: math_accuracy}, {name: 'trl.rewards:think_format_reward'}]",
        "train.steps=2",
        "train.prompts_per_step=4",
        "rollout.group_size=4",
        "train.minibatch_size=8",
        "rollout.max_new_tokens=32",
        "eval.max_new_tokens=32",
        f"run.output_dir={tmp_path}",
        "run.name=chat",
        cwd=tmp_path,
        paying=("trl.rewards:think_format_reward",),
    )
    assert (
        "dropped 1 training prompts longer than rollout.max_prompt_tokens=96" in proc.stdout + proc.stderr
        or "dropped 1 held-out prompts longer than rollout.max_prompt_tokens=96" in proc.stdout + proc.stderr
    )
    summary = json.loads((tmp_path / "chat" / "summary.json").read_text())
    assert summary["dropped_rows"] == {"empty_prompt": 1, "missing_answer": 1, "duplicate_prompt": 1}
    assert "dropped 3 bad rows of data.dataset" in proc.stdout + proc.stderr
    from rlwhf.traces import load

    traces = load(tmp_path / "chat")
    assert traces["prompt"].str.startswith("<|im_start|>system\nYou add.<|im_end|>\n<|im_start|>user\nQ: ").all()
    assert traces["prompt"].str.endswith("<|im_start|>assistant\n").all()
    metrics = [json.loads(line) for line in (tmp_path / "chat" / "metrics.jsonl").read_text().splitlines()]
    # The trainer scored the very token ids vLLM sampled after: their log-probs agree.
    assert max(m["rollout/logp_diff_abs_mean"] for m in metrics if "loss" in m) < 1e-3
