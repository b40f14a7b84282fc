"""Procedural multi-digit arithmetic with a short, checkable chain of thought.

Each example has a ``prompt``, the gold ``answer`` and a solver-written ``solution`` (the
reasoning a cold-start SFT imitates)::

    prompt:   "Q: 347+586=?\n"
    solution: "<think>7+6=13\n4+8+1=13\n3+5+1=9\n</think><answer>933</answer>"

The chain of thought adds column by column from the right, carrying explicitly, so a correct
trace is a correct answer and the answer can be checked by ``rewards.math``. With
``direct_fraction`` > 0, that share of the solutions state the answer without the working
(``<think>\n</think><answer>933</answer>``), like a model that answers without reasoning: a cold
start on the mix learns both habits, and RL has to find out which one pays.

``operation="multiply"`` asks for products instead, a task a small model cannot do in its head but can
with a tool: the worked solution calls the ``python`` tool and copies its output, in the shape a
multi-turn episode has (``rlwhf.rollout.episodes``: the model's code, then the tool's output fence)::

    prompt:   "Q: 1234*5678=?\n"
    solution: "<think>```python\nprint(1234*5678)\n```\n```output\n7006652\n```\n</think><answer>7006652</answer>"

and a direct one states the product without the tool.
"""

from __future__ import annotations

import random

from rewards.steps import addition_trace


def make_example(a: int, b: int, direct: bool = False, operation: str = "add") -> dict:
    if operation == "multiply":
        working = "\n" if direct else f"```python\nprint({a}*{b})\n```\n```output\n{a * b}\n```\n"
        return {
            "prompt": f"Q: {a}*{b}=?\n",
            "answer": str(a * b),
            "solution": f"<think>{working}</think><answer>{a * b}</answer>",
        }
    if operation != "add":
        raise ValueError(f"operation {operation!r}: expected 'add' or 'multiply'")
    working = "" if direct else addition_trace(a, b)
    return {
        "prompt": f"Q: {a}+{b}=?\n",
        "answer": str(a + b),
        "solution": f"<think>{working}\n</think><answer>{a + b}</answer>",
    }


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def make_arithmetic(
    n: int,
    seed: int,
    min_digits: int = 2,
    max_digits: int = 3,
    direct_fraction: float = 0.0,
    operation: str = "add",
) -> list[dict]:
    """``n`` distinct addition (or ``operation="multiply"``: multiplication) problems with operands of
    ``min_digits``..``max_digits`` digits.

    A seeded ``direct_fraction`` of them get a solution without the working; the problems
    themselves do not depend on it.
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}")
    if not 0.0 <= direct_fraction <= 1.0:
        raise ValueError(f"direct_fraction must be in [0, 1], got {direct_fraction}")
    rng, direct_rng = random.Random(seed), random.Random(f"direct-{seed}")
    seen: set[tuple[int, int]] = set()
    examples = []
    capacity = sum(9 * 10 ** (d - 1) for d in range(min_digits, max_digits + 1)) ** 2
    if n > capacity:
        raise ValueError(f"asked for {n} distinct problems, but only {capacity} exist at these digit counts")
    while len(examples) < n:
        a, b = _operand(rng, min_digits, max_digits), _operand(rng, min_digits, max_digits)
        if (a, b) not in seen:
            seen.add((a, b))
            examples.append(make_example(a, b, direct=direct_rng.random() < direct_fraction, operation=operation))
    return examples
