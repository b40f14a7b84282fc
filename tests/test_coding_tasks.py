"""Procedural coding tasks: deterministic, well-formed, and checked by the real code reward."""

from __future__ import annotations

import pytest

from rewards.code import code_tests
from rlwhf.data.coding_tasks import FAMILIES, make_coding_tasks


def test_same_seed_gives_the_same_tasks_and_another_seed_does_not():
    assert make_coding_tasks(30, seed=1) == make_coding_tasks(30, seed=1)
    assert make_coding_tasks(30, seed=1) != make_coding_tasks(30, seed=2)


def test_tasks_cover_every_family_and_have_the_reward_columns():
    tasks = make_coding_tasks(len(FAMILIES), seed=0)
    assert {t["task"] for t in tasks} == set(FAMILIES)
    for t in tasks:
        assert "```python" in t["prompt"] and t["tests"][0]["input"] in t["prompt"]
        assert len(t["tests"]) == 4 and all(set(case) == {"input", "output"} for case in t["tests"])


def test_unknown_family_is_rejected_with_the_known_ones_listed():
    with pytest.raises(ValueError, match="sum-two"):
        make_coding_tasks(3, seed=0, families=["sorting"])


def test_every_solution_passes_its_tests_and_a_constant_program_does_not(sandbox):
    tasks = make_coding_tasks(2 * len(FAMILIES), seed=3)
    solutions = [t["solution"] for t in tasks]
    constant = ["```python\nprint(0)\n```"] * len(tasks)
    tests = [t["tests"] for t in tasks]
    assert code_tests(solutions, prompts=[t["prompt"] for t in tasks], tests=tests) == [1.0] * len(tasks)
    assert all(s < 1.0 for s in code_tests(constant, prompts=[""] * len(tasks), tests=tests))
