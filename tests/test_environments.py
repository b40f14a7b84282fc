"""Environments: an OpenEnv environment (tests/plugins/guess_env.py, written to openenv-core's interface)
runs unchanged through rlwhf's adapter, alone and in episodes on vLLM."""

import pytest

from rlwhf.rollout import SamplingSettings, make_engine
from rlwhf.rollout.episodes import EpisodeOptions
from rlwhf.tools import Step, load_environment
from rlwhf.tools.openenv import OpenEnvAdapter


def test_an_openenv_environment_plays_through_the_adapter():
    from guess_env import GuessEnv

    env = load_environment("guess_env:GuessEnv")()
    assert isinstance(env, OpenEnvAdapter) and env.action_field == "guess"
    assert env.reset({"prompt": "Q", "answer": "3"}) == "Guess a digit from 0 to 9."
    assert env.step("I say 5\n") == Step("Lower.", done=False, reward=0.0, role="user")
    assert env.step("then 1\n") == Step("Higher.", done=False, reward=0.0, role="user")
    assert env.step("3") == Step("Right!", done=True, reward=1.0, role="user")
    assert env.env.state.step_count == 3
    custom = load_environment("guess_env:GuessEnv", {"default_target": 4})()
    custom.reset({})
    assert custom.step("4").done
    assert isinstance(custom.env, GuessEnv)


def test_an_environment_that_cannot_be_found_is_named():
    with pytest.raises(ValueError, match="environment 'nowhere:Game'.*cannot import 'nowhere'"):
        load_environment("nowhere:Game")


@pytest.mark.slow
def test_openenv_episodes_on_vllm_end_when_the_game_says_done(tiny_model):
    options = EpisodeOptions(environment="guess_env:GuessEnv", max_turns=4, max_total_tokens=120, turn_stop=["\n"])
    runner = make_engine("vllm", tiny_model, seed=0, max_model_len=256, episodes=options)
    rows = [{"prompt": "Q: pick\n", "answer": str(d)} for d in range(4)]
    groups = runner.generate(
        [runner.tokenizer.encode(r["prompt"]) for r in rows],
        SamplingSettings(n=4, temperature=1.0, max_new_tokens=12, seed=0, rows=rows),
    )
    runner.close()
    episodes = [c for g in groups for c in g.completions]
    for c in episodes:
        assert c.turns[0].role == "user" and c.turns[0].text == "Guess a digit from 0 to 9.\n"  # reset's opening
        replies = [t.text.strip() for t in c.turns[1:] if t.role == "user"]
        assert set(replies) <= {"Say a digit.", "Higher.", "Lower."}  # "Right!" ends the episode: not appended
        assert c.turns[-1].role == "assistant"
        assert c.env_reward in (0.0, 1.0)
        if c.env_reward == 1.0:
            assert c.cut is None and c.finish_reason == "stop"
    assert sum(len(c.turns) > 2 for c in episodes) > 0, "no episode went past its first turn"


def test_env_reward_pays_the_environments_reward_and_tool_errors_counts_failed_calls():
    import rewards

    episode = [{"env_reward": 1.0, "tool_errors": 0}, {"env_reward": 0.0, "tool_errors": 2}]
    assert rewards.get("env_reward")(["a", "b"], prompts=["p", "p"], episode=episode) == [1.0, 0.0]
    assert rewards.get("tool_errors")(["a", "b"], prompts=["p", "p"], episode=episode) == [-0.0, -2.0]
    assert rewards.get("env_reward")(["a"], prompts=["p"]) == [None]  # not an episode: scored on_error
