"""The procedural addition task: distinct problems, checkable traces, and the share of traces without working."""

import pytest

from rewards.format import format_reward
from rewards.math import math_accuracy
from rlwhf.config import ConfigError, DataConfig, load_recipe
from rlwhf.data.arithmetic import make_arithmetic, make_example
from rlwhf.data.source import load_task

DIRECT_PREFIX = "<think>\n</think>"


def test_problems_are_distinct_seeded_and_within_the_digit_range():
    rows = make_arithmetic(500, seed=3, min_digits=2, max_digits=3)
    assert rows == make_arithmetic(500, seed=3, min_digits=2, max_digits=3)
    assert rows != make_arithmetic(500, seed=4, min_digits=2, max_digits=3)
    assert len({r["prompt"] for r in rows}) == 500
    for r in rows:
        a, b = r["prompt"].removeprefix("Q: ").removesuffix("=?\n").split("+")
        assert 2 <= len(a) <= 3 and 2 <= len(b) <= 3 and int(r["answer"]) == int(a) + int(b)


def test_a_worked_and_a_direct_solution_are_both_right_and_well_formed():
    worked, direct = make_example(347, 586), make_example(347, 586, direct=True)
    assert worked["solution"] == "<think>7+6=13\n4+8+1=13\n3+5+1=9\n</think><answer>933</answer>"
    assert direct["solution"] == DIRECT_PREFIX + "<answer>933</answer>"
    assert worked["prompt"] == direct["prompt"] and worked["answer"] == direct["answer"] == "933"
    solutions = [worked["solution"], direct["solution"]]
    assert format_reward(solutions) == [1.0, 1.0]
    assert math_accuracy(solutions, answer=["933", "933"]) == [1.0, 1.0]


def test_direct_fraction_changes_the_solutions_only():
    plain = make_arithmetic(2000, seed=0)
    mixed = make_arithmetic(2000, seed=0, direct_fraction=0.5)
    assert [r["prompt"] for r in mixed] == [r["prompt"] for r in plain]
    assert [r["answer"] for r in mixed] == [r["answer"] for r in plain]
    direct = [r for r in mixed if r["solution"].startswith(DIRECT_PREFIX)]
    assert 0.45 < len(direct) / len(mixed) < 0.55
    assert not any(r["solution"].startswith(DIRECT_PREFIX) for r in plain)
    assert all(r["solution"].startswith(DIRECT_PREFIX) for r in make_arithmetic(50, seed=0, direct_fraction=1.0))
    # The choice is seeded: the same rows get the direct solution every time.
    assert mixed == make_arithmetic(2000, seed=0, direct_fraction=0.5)


def test_direct_fraction_reaches_the_task_from_the_recipe_and_is_validated():
    task = load_task(DataConfig(num_train=400, num_test=10, direct_fraction=0.25), seed=0)
    share = sum(r["solution"].startswith(DIRECT_PREFIX) for r in task.train) / len(task.train)
    assert 0.15 < share < 0.35
    with pytest.raises(ValueError, match="direct_fraction must be in"):
        make_arithmetic(10, seed=0, direct_fraction=1.5)
    with pytest.raises(ConfigError, match="data.direct_fraction"):
        load_recipe(None, ["data.direct_fraction=1.5"])
