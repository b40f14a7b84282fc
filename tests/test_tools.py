"""Tools and multi-turn episodes: tool calls read from turns, tools that fail in every way a tool can,
and episodes run on a real vLLM engine whose token ids, masks and log-probs the trainer takes as they are."""

import time

import pytest
import torch

from rlwhf.rollout import SamplingSettings, make_engine
from rlwhf.rollout.episodes import EpisodeOptions, EpisodeRunner, episode_metrics, episode_stats
from rlwhf.tools import Step, ToolEnvironment, as_tool, get_tool, parse_call, tool
from rlwhf.train.batch import pack_groups
from rlwhf.train.logprobs import token_logprobs


def test_a_turn_ending_with_a_fenced_python_block_or_a_tool_call_tag_is_a_call():
    assert parse_call("let me compute\n```python\nprint(6*7)\n```\n") == ("python", {"code": "print(6*7)\n"})
    assert parse_call('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>') == ("add", {"a": 1})
    assert parse_call("the answer is 42") is None
    assert parse_call("```python\nprint(1)\n```\nand then I answer 1") is None  # not at the end: no call
    name, arguments = parse_call("<tool_call>{not json</tool_call>")
    assert name == "<malformed>" and "not JSON" in arguments["error"]


def _raises(x: str) -> str:
    raise RuntimeError(f"bad input {x}")


def _hangs(x: str) -> str:
    time.sleep(30)
    return "never"


def _floods(x: str) -> str:
    return "y" * 100_000


def _echo(x: str, times: int = 1) -> str:
    """Say it again."""
    return x * times


def test_a_tool_that_raises_hangs_or_floods_answers_with_an_error_and_the_episode_goes_on():
    env = ToolEnvironment([as_tool(f) for f in (_raises, _hangs, _floods, _echo)], timeout_s=0.5, max_chars=200)

    def call(name, **arguments):
        import json

        return env.step(f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>")

    raised = call("_raises", x="7")
    assert raised.status == "error" and "RuntimeError: bad input 7" in raised.observation and not raised.done
    t0 = time.perf_counter()
    hung = call("_hangs", x="1")
    assert hung.status == "timeout" and "did not answer within 1.5 s" in hung.observation
    assert time.perf_counter() - t0 < 5
    flooded = call("_floods", x="1")
    assert (
        flooded.status == "flood"
        and len(flooded.observation) < 300
        and "99800 more characters cut" in flooded.observation
    )
    assert call("_echo", x="ab", times=2).observation == "abab"
    unknown = call("nope")
    assert unknown.status == "unknown_tool" and "_echo" in unknown.observation
    assert env.step("no call here").done
    # a closing fence that closes no python block (an output block the model wrote) is no call, and no end
    assert env.step("```output\n12\n```\n") == Step(None, done=False)


def test_a_tool_is_described_by_its_signature_or_by_its_decorator():
    echo = as_tool(_echo)
    assert echo.description == "Say it again."
    assert echo.parameters == {
        "type": "object",
        "properties": {"x": {"type": "string"}, "times": {"type": "integer"}},
        "required": ["x"],
    }

    @tool("shout", description="Upper case.", timeout_s=0.2)
    def shout(text: str) -> str:
        if text == "slowly":
            time.sleep(5)
        return text.upper()

    assert get_tool("shout").fn("hi") == "HI" and get_tool("shout").schema()["function"]["name"] == "shout"
    env = ToolEnvironment([get_tool("shout")], timeout_s=30)  # the tool's own limit wins over the recipe's
    slow = env.step('<tool_call>{"name": "shout", "arguments": {"text": "slowly"}}</tool_call>')
    assert slow.status == "timeout" and slow.seconds < 3
    with pytest.raises(ValueError, match="unknown tool 'calculator'; built in: .*python"):
        get_tool("calculator")


def test_the_python_tool_runs_in_the_sandbox_and_reports_errors_timeouts_and_refusals(sandbox, monkeypatch):
    python = get_tool("python")
    env = ToolEnvironment([python], timeout_s=1.0)
    ok = env.step("```python\nprint(1234 * 5678)\n```\n")
    assert (ok.observation, ok.status, ok.tool) == ("7006652\n", "ok", "python")
    failed = env.step("```python\nprint(1/0)\n```\n")
    assert failed.status == "error" and "ZeroDivisionError" in failed.observation
    slow = env.step("```python\nwhile True: pass\n```\n")
    assert slow.status == "timeout" and "1 s limit" in slow.observation
    flood = ToolEnvironment([python], timeout_s=2.0, max_chars=100).step("```python\nprint('x' * 10**6)\n```\n")
    assert flood.status in ("flood", "error") and len(flood.observation) < 200


def test_the_python_tool_reports_a_sandbox_refusal_to_the_model(tmp_path):
    """RLWHF_SANDBOX=none: the sandbox refuses every program; the model reads why, the call counts as refused."""
    import subprocess
    import sys

    code = (
        "from rlwhf.tools import ToolEnvironment, get_tool\n"
        "s = ToolEnvironment([get_tool('python')]).step('```python\\nprint(1)\\n```\\n')\n"
        "print(s.status, '|', s.observation)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"RLWHF_SANDBOX": "none", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    status, _, observation = out.stdout.partition(" | ")
    assert status == "refused" and "refused" in observation, out.stdout + out.stderr


class Counting:
    """A test environment: a turn ends at the character '7' (or the end of the message); it answers
    each turn with a fixed observation, and ends the episode on its fourth turn."""

    stop = ["7"]

    def __init__(self):
        self.turns = 0

    def reset(self, row):
        return None

    def step(self, turn):
        self.turns += 1
        return Step(f"[obs {self.turns}]", done=self.turns >= 4, reward=1.0, tool="count", seconds=0.001)


@pytest.fixture(scope="module")
def episodes(tiny_model, tmp_path_factory):
    """Multi-turn episodes of the (untrained) tiny model on vLLM, with the counting environment."""
    folder = tmp_path_factory.mktemp("env")
    (folder / "counting.py").write_text(
        "from rlwhf.tools import Step\n\n" + "\n".join(__import__("inspect").getsource(Counting).splitlines()) + "\n"
    )
    options = EpisodeOptions(environment=f"{folder / 'counting.py'}:Counting", max_turns=3, max_total_tokens=80)
    runner = make_engine("vllm", tiny_model, seed=0, max_model_len=256, episodes=options)
    assert isinstance(runner, EpisodeRunner)
    prompts = ["Q: 12+34=?\n", "Q: 905+77=?\n"]
    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=24, seed=3)
    groups = runner.generate([runner.tokenizer.encode(p) for p in prompts], sampling)
    again = runner.generate([runner.tokenizer.encode(p) for p in prompts], sampling)
    runner.close()
    return groups, again, runner.tokenizer


@pytest.mark.slow
def test_episodes_append_observations_as_ids_and_mask_them(episodes):
    groups, again, tok = episodes
    completions = [c for g in groups for c in g.completions]
    assert [c.token_ids for g in again for c in g.completions] == [c.token_ids for c in completions]  # seeded
    multi = [c for c in completions if sum(t.role == "assistant" for t in c.turns) > 1]
    assert multi, "no episode took a second turn: the test environment's stop never fired"
    for c in completions:
        assert len(c.mask) == len(c.token_ids) == len(c.logprobs) <= 80
        assert c.token_ids == [i for t in c.turns for i in t.token_ids]
        at = 0
        for t in c.turns:
            span = slice(at, at + len(t.token_ids))
            if t.role == "assistant":
                assert set(c.mask[span]) <= {1}
            else:  # an observation: appended as the tokenizer's ids of the framed text, masked, log-prob 0
                assert t.token_ids == tok.encode(
                    f"```output\n{t.text.split(chr(10))[1]}\n```\n", add_special_tokens=False
                )
                assert set(c.mask[span]) == {0} and set(c.logprobs[span]) == {0.0}
            at += len(t.token_ids)
        assert c.turns[-1].role == "assistant"  # an episode never ends on an observation
        stats = episode_stats(c)
        assert stats["turns"] <= 3 and stats["tool_calls"] == sum(t.role == "tool" for t in c.turns)
        assert c.env_reward == stats["turns"] - (c.finish_reason == "length" and c.cut != "max_turns")
    cuts = {c.cut for c in completions}
    assert cuts <= {None, "max_new_tokens", "max_turns", "max_total_tokens"}
    metrics = episode_metrics(completions)
    assert 1 < metrics["episodes/turns"] <= 3 and metrics["episodes/observation_tokens"] > 0


@pytest.mark.slow
def test_the_trainer_scores_an_episodes_tokens_as_vllm_did_and_no_observation_token_gets_a_gradient(
    episodes, tiny_model
):
    from transformers import AutoModelForCausalLM

    from rlwhf.algo import policy_loss

    groups, _, _ = episodes
    completions = [c for g in groups for c in g.completions]
    batch = pack_groups(groups, [1.0, -1.0] * (len(completions) // 2))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.config.output_router_logits = False
    logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, temperature=1.0)
    trained = batch.mask.bool()
    observed = batch.attention_mask[:, 1:].bool() & ~trained
    for i, prompt_ids in enumerate(g.prompt_ids for g in groups for _ in g.completions):
        observed[i, : len(prompt_ids) - 1] = False  # the prompt's own positions
    assert observed.any() and trained.any()
    # vLLM's log-probs of the model's tokens are the trainer's, turn after turn (the single-turn tolerance)
    assert torch.allclose(logp[trained], batch.rollout_logp[trained], atol=2e-3)
    logp.retain_grad()
    loss, _ = policy_loss(logp, logp.detach(), batch.advantages, batch.mask)
    loss.backward()
    assert logp.grad[observed].abs().max() == 0
    assert logp.grad[trained].abs().max() > 0


def test_the_tool_and_the_environment_of_docs_tools_md_work_as_written(tmp_path):
    import json
    import re
    from pathlib import Path

    from rlwhf.tools import load_environment

    page = (Path(__file__).parent.parent / "docs" / "tools.md").read_text()
    for block in re.findall(r"```python\n(# (\S+\.py)\n.*?)```", page, re.DOTALL):
        (tmp_path / block[1]).write_text(block[0])
    lookup = get_tool(f"{tmp_path / 'my_tools.py'}:lookup")
    assert lookup.name == "lookup" and lookup.parameters["required"] == ["country"]
    env = ToolEnvironment([lookup])
    call = '<tool_call>{"name": "lookup", "arguments": {"country": "Japan"}}</tool_call>'
    assert env.step(call).observation == "Tokyo"
    failed = env.step(call.replace("Japan", "Atlantis"))
    assert failed.status == "error" and "no capital known for 'Atlantis'" in failed.observation
    countdown = load_environment(f"{tmp_path / 'my_env.py'}:Countdown")()
    assert countdown.reset({"answer": "2"}) == "Count down from 2."
    assert countdown.step("1") == Step("Good.", done=False, reward=1.0, role="user")
    assert countdown.step("then 0").done
    assert json.dumps(lookup.schema())  # a chat template's tools= entry is plain JSON


def test_a_recipe_naming_a_missing_tool_or_tools_on_the_hf_engine_is_refused_before_anything_starts(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from rlwhf.config import ConfigError, load_recipe

    recipe = Path(__file__).parent.parent / "recipes" / "tiny-tools.yaml"
    with pytest.raises(ConfigError, match="tools and environments run on rollout.engine 'vllm'"):
        load_recipe(recipe, ["rollout.engine=hf"])
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "validate", str(recipe), "rollout.tools=[python, calculator]"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rollout.tools[1] = 'calculator': unknown tool 'calculator'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_observation_is_framed_as_the_chat_templates_tool_turn_or_an_output_fence():
    from rlwhf.models.tokenizer import build_tokenizer
    from rlwhf.rollout.episodes import observation_ids

    chat = build_tokenizer("chatml")
    ids = observation_ids(chat, "42\n", "tool", conversational=True, after_eos=False)
    assert chat.decode(ids) == "<|im_end|>\n<|im_start|>tool\n42\n<|im_end|>\n<|im_start|>assistant\n"
    chat.eos_token = "<|im_end|>"  # a model whose end of message is its end of turn (SmolLM2, Qwen)
    ids = observation_ids(chat, "Lower.", "user", conversational=True, after_eos=True)
    assert chat.decode(ids) == "\n<|im_start|>user\nLower.<|im_end|>\n<|im_start|>assistant\n"
    plain = build_tokenizer("plain")
    assert plain.decode(observation_ids(plain, "42\n", "tool", conversational=False, after_eos=False)) == (
        "```output\n42\n```\n"
    )
    assert plain.decode(observation_ids(plain, "Lower.", "user", conversational=False, after_eos=False)) == "Lower.\n"
    # a chat template that frames turns with nothing (the tiny model's "plain" one): as for a text prompt
    assert plain.decode(observation_ids(plain, "42\n", "tool", conversational=True, after_eos=False)) == (
        "```output\n42\n```\n"
    )
