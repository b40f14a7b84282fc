"""The arithmetic process reward: each chain-of-thought step checked against the column procedure."""

import pytest

import rewards
from rlwhf.data.arithmetic import make_example

PROMPT = "Q: 347+586=?\n"


def score(*completions, prompt=PROMPT):
    return rewards.get("arithmetic_steps")(list(completions), prompts=[prompt] * len(completions))


def test_the_solver_trace_scores_one():
    example = make_example(347, 586)
    assert score(example["solution"], prompt=example["prompt"]) == [1.0]


def test_a_miscopied_digit_loses_its_step_even_when_the_answer_is_right():
    unfaithful = "<think>7+6=13\n4+9+1=13\n3+5+1=9\n</think><answer>933</answer>"
    assert score(unfaithful) == [pytest.approx(2 / 3)]


def test_missing_extra_and_absent_steps_count_as_wrong():
    missing = "<think>7+6=13\n</think><answer>933</answer>"
    extra = "<think>7+6=13\n4+8+1=13\n3+5+1=9\n0+0+1=1\n</think><answer>1933</answer>"
    assert score(missing, extra, "<answer>933</answer>") == [pytest.approx(1 / 3), pytest.approx(3 / 4), 0.0]


def test_prompts_that_are_not_additions_are_not_scored():
    assert score("<think>x</think>", prompt="Write a function that reverses a list.") == [None]
