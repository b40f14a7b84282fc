import time

import pytest

import rewards
from rlwhf.config import RewardSpec
from rlwhf.reward_runner import GroupToScore, RewardRunner


def test_registry_finds_builtins_module_paths_and_rejects_unknown_names():
    assert "format" in rewards.available()
    assert rewards.get("misbehaving_rewards:length")(["abc"], prompts=["p"]) == [3.0]
    with pytest.raises(KeyError, match="unknown reward 'nope'.*known rewards:"):
        rewards.get("nope")
    with pytest.raises(KeyError, match="cannot import 'no_such_module_xyz': No module named 'no_such_module_xyz'"):
        rewards.get("no_such_module_xyz:fn")


def test_a_reward_named_by_its_file_collides_with_no_module_of_the_same_name(tmp_path):
    """A user's rewards.py, loaded from its file, is not rlwhf's rewards package, nor imported as one."""
    (tmp_path / "rewards.py").write_text(
        "def short(completions, **_):\n    return [float(len(c) < 4) for c in completions]\n"
    )
    fn = rewards.get(f"{tmp_path / 'rewards.py'}:short")
    assert fn(["abc", "abcdef"], prompts=["p", "p"]) == [1.0, 0.0]
    assert fn.__module__.startswith("rlwhf_plugin_rewards_") and rewards.get("format") is not None
    (tmp_path / "broken.py").write_text("x = 1\nraise RuntimeError('no config found')\n")
    with pytest.raises(
        KeyError, match=r"cannot import .*broken.py': RuntimeError: no config found \(.*broken.py, line 2\)"
    ):
        rewards.get(f"{tmp_path / 'broken.py'}:short")


def test_decorator_refuses_a_second_function_under_the_same_name():
    @rewards.reward("test_unique_name")
    def first(completions, **_):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="already registered"):

        @rewards.reward("test_unique_name")
        def second(completions, **_):
            return [1.0] * len(completions)


def test_scores_are_weighted_per_reward_and_columns_reach_the_function():
    specs = [
        RewardSpec(name="misbehaving_rewards:echo_answer", weight=2.0),
        RewardSpec(name="misbehaving_rewards:length", weight=0.5),
    ]
    with RewardRunner(specs, timeout_s=30, num_workers=2) as runner:
        scores = runner.score(
            [GroupToScore("p", ["42", "7"], {"answer": "42"}), GroupToScore("q", ["x"], {"answer": "y"})]
        )
    assert scores.per_reward["misbehaving_rewards:echo_answer"] == [1.0, 0.0, 0.0]
    assert scores.total == [2.0 * 1 + 0.5 * 2, 0.5 * 1, 0.5 * 1]
    assert scores.errors == {"misbehaving_rewards:echo_answer": 0, "misbehaving_rewards:length": 0}


@pytest.mark.parametrize("fn", ["raises", "exits", "wrong_length", "nan", "inf", "text"])
def test_a_failing_reward_scores_on_error_is_counted_and_the_next_call_works(fn):
    specs = [RewardSpec(name=f"misbehaving_rewards:{fn}", on_error=-1.0)]
    with RewardRunner(specs, timeout_s=30, num_workers=1) as runner:
        scores = runner.score([GroupToScore("p", ["a", "b"])])
        assert scores.per_reward[specs[0].name] == [-1.0, -1.0]
        assert scores.errors[specs[0].name] == 2
        assert len(scores.failures) == 1 and "group 0: error" in str(scores.failures[0])
        again = runner.score([GroupToScore("p", ["c", "d", "e"])])
        assert again.errors[specs[0].name] == 3  # the worker process still answers after the failure


def test_a_hanging_reward_costs_its_time_limit_and_does_not_block_other_rewards():
    specs = [RewardSpec(name="misbehaving_rewards:hangs", on_error=0.25), RewardSpec(name="misbehaving_rewards:length")]
    with RewardRunner(specs, timeout_s=1.5, num_workers=2) as runner:
        start = time.perf_counter()
        scores = runner.score([GroupToScore("p", ["abcd"])])
        elapsed = time.perf_counter() - start
    assert scores.per_reward["misbehaving_rewards:hangs"] == [0.25]
    assert scores.timeouts["misbehaving_rewards:hangs"] == 1
    assert scores.per_reward["misbehaving_rewards:length"] == [4.0]
    assert elapsed < 300  # the limit plus process start-ups on a loaded machine, never the hour it asked for


def test_unknown_reward_fails_at_start_up_not_mid_run():
    with pytest.raises(KeyError, match="unknown reward"):
        RewardRunner([RewardSpec(name="definitely_not_registered")])


def test_a_reward_modules_warm_up_runs_once_per_worker_before_the_first_timed_call():
    specs = [RewardSpec(name="warm_rewards:warmed")]
    with RewardRunner(specs, timeout_s=1.0, num_workers=1) as runner:
        scores = runner.score([GroupToScore("p", ["a", "b"], {})])
    # The 1.5 s warm-up ran once, before the call and outside its 1 s limit.
    assert scores.per_reward["warm_rewards:warmed"] == [1.0, 1.0]
    assert scores.errors["warm_rewards:warmed"] == 0 and scores.timeouts["warm_rewards:warmed"] == 0


def test_bad_values_are_named_in_the_failure_and_numpy_numbers_are_accepted():
    specs = [RewardSpec(name="misbehaving_rewards:nan"), RewardSpec(name="misbehaving_rewards:numpy_floats")]
    with RewardRunner(specs, timeout_s=30, num_workers=1) as runner:
        scores = runner.score([GroupToScore("p", ["a", "b"])])
    assert "returned nan for completion 0; expected a finite number or None" in str(scores.failures[0])
    assert scores.per_reward["misbehaving_rewards:numpy_floats"] == [0.5, 0.5]


def test_a_hanging_warm_up_disables_its_reward_after_one_time_limit_and_spares_the_others():
    specs = [
        RewardSpec(name="hanging_warm_up:never_warm", on_error=-1.0),
        RewardSpec(name="misbehaving_rewards:length"),
    ]
    with RewardRunner(specs, timeout_s=5, num_workers=1, warm_up_timeout_s=1.0) as runner:
        first = runner.score([GroupToScore("p", ["abc"]), GroupToScore("q", ["de"])])
        starts = runner._workers[0].starts
        second = runner.score([GroupToScore("p", ["abcd"])])
        assert runner._workers[0].starts == starts, "a disabled reward must not restart the worker on each call"
    assert first.per_reward["hanging_warm_up:never_warm"] == [-1.0, -1.0]
    assert first.per_reward["misbehaving_rewards:length"] == [3.0, 2.0]
    assert second.per_reward == {"hanging_warm_up:never_warm": [-1.0], "misbehaving_rewards:length": [4.0]}
    message = str(second.failures[0])
    assert "disabled for this run: warm_up() of module 'hanging_warm_up' did not finish within 1 s" in message
