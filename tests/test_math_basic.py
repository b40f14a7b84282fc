import pytest

from rewards.math import extract_answer, math_accuracy, verify


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{a}{b+{c}}} done", "\\frac{a}{b+{c}}"),
    ("<think>1+1=2</think><answer>2</answer>", "2"),
    ("Thus the answer is 42.", "42"),
    ("**Answer:** 7", "7"),
    ("Final answer: $x^2$", "x^2"),
    ("we get 3 apples and then 12", "12"),
    ("\\boxed{3} or maybe \\boxed{5}", None),
    ("no numbers here", None),
])
def test_extract_answer_finds_the_final_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("gold, prediction, equal", [
    ("0.5", "\\boxed{\\frac12}", True),
    ("1/2", "\\boxed{\\dfrac{1}{2}}", True),
    ("1/3", "\\boxed{0.33}", False),
    ("1,000", "\\boxed{1000}", True),
    ("2", "\\boxed{x=2}", True),
    ("-7", "<answer>-7</answer>", True),
    ("7", "<answer>-7</answer>", False),
    ("x^2+2x+1", "the answer is (x+1)^2", True),
    ("\\text{5}", "\\boxed{5}", True),
])
def test_verify_compares_numbers_and_expressions(gold, prediction, equal):
    assert verify(gold, prediction) is equal


def test_math_accuracy_reward_scores_each_completion_against_its_gold():
    scores = math_accuracy(["<answer>12</answer>", "<answer>13</answer>", "nothing"], prompts=["p"] * 3,
                           answer=["12", "12", "12"])
    assert scores == [1.0, 0.0, 0.0]
