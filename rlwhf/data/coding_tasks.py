"""Procedural stdin/stdout coding problems small enough for a tiny model to attempt.

Each example has a ``prompt`` (the problem, one worked example, and the answer format), ``tests``
(a list of ``{"input", "output"}`` cases for ``rewards.code``'s ``code_tests``), ``solution``
(a correct completion, a fenced Python block, for a cold-start SFT) and ``task`` (the family)::

    prompt:   "Read two integers a and b from one line of input and print a + b.\n
               Example input:\n3 4\nExample output:\n7\n
               Answer with a Python program in a ```python block.\n"
    tests:    [{"input": "3 4\n", "output": "7\n"}, ...]
    solution: "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
"""

from __future__ import annotations

import random
from collections.abc import Callable

ANSWER_FORMAT = "Answer with a Python program in a ```python block.\n"


def _ints(rng: random.Random, k: int, lo: int = -50, hi: int = 99) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))


# Each family: (statement, solution program, make one case's input, compute its output).
Family = tuple[str, str, Callable[[random.Random], str], Callable[[str], str]]

FAMILIES: dict[str, Family] = {
    "sum-two": (
        "Read two integers a and b from one line of input and print a + b.",
        "a, b = map(int, input().split())\nprint(a + b)",
        lambda rng: " ".join(map(str, _ints(rng, 2))),
        lambda s: str(sum(map(int, s.split()))),
    ),
    "difference": (
        "Read two integers a and b from one line of input and print a - b.",
        "a, b = map(int, input().split())\nprint(a - b)",
        lambda rng: " ".join(map(str, _ints(rng, 2))),
        lambda s: str(int(s.split()[0]) - int(s.split()[1])),
    ),
    "product": (
        "Read two integers a and b from one line of input and print a * b.",
        "a, b = map(int, input().split())\nprint(a * b)",
        lambda rng: " ".join(map(str, _ints(rng, 2, -20, 20))),
        lambda s: str(int(s.split()[0]) * int(s.split()[1])),
    ),
    "max-of-list": (
        "Read a line of integers separated by spaces and print the largest one.",
        "print(max(map(int, input().split())))",
        lambda rng: " ".join(map(str, _ints(rng, rng.randint(2, 7)))),
        lambda s: str(max(map(int, s.split()))),
    ),
    "min-of-list": (
        "Read a line of integers separated by spaces and print the smallest one.",
        "print(min(map(int, input().split())))",
        lambda rng: " ".join(map(str, _ints(rng, rng.randint(2, 7)))),
        lambda s: str(min(map(int, s.split()))),
    ),
    "sum-of-list": (
        "Read a line of integers separated by spaces and print their sum.",
        "print(sum(map(int, input().split())))",
        lambda rng: " ".join(map(str, _ints(rng, rng.randint(2, 7)))),
        lambda s: str(sum(map(int, s.split()))),
    ),
    "reverse-word": (
        "Read a word and print it reversed.",
        "print(input().strip()[::-1])",
        _word,
        lambda s: s.strip()[::-1],
    ),
    "upper-word": (
        "Read a word and print it in upper case.",
        "print(input().strip().upper())",
        _word,
        lambda s: s.strip().upper(),
    ),
    "count-vowels": (
        "Read a word and print how many of its letters are vowels (a, e, i, o, u).",
        "print(sum(c in 'aeiou' for c in input().strip()))",
        _word,
        lambda s: str(sum(c in "aeiou" for c in s.strip())),
    ),
    "even-odd": (
        "Read an integer n and print EVEN if it is even, otherwise ODD.",
        "n = int(input())\nprint('EVEN' if n % 2 == 0 else 'ODD')",
        lambda rng: str(rng.randint(-100, 100)),
        lambda s: "EVEN" if int(s) % 2 == 0 else "ODD",
    ),
    "factorial": (
        "Read an integer n (0 <= n <= 10) and print n! (the factorial of n).",
        "import math\nprint(math.factorial(int(input())))",
        lambda rng: str(rng.randint(0, 10)),
        lambda s: str(__import__("math").factorial(int(s))),
    ),
    "count-up": (
        "Read an integer n (1 <= n <= 9) and print the numbers 1 to n, one per line.",
        "n = int(input())\nfor i in range(1, n + 1):\n    print(i)",
        lambda rng: str(rng.randint(1, 9)),
        lambda s: "\n".join(str(i) for i in range(1, int(s) + 1)),
    ),
}


def make_coding_task(family: str, rng: random.Random, n_tests: int = 4) -> dict:
    statement, program, make_input, answer = FAMILIES[family]
    inputs: list[str] = []
    for _ in range(100 * n_tests):  # distinct inputs where the family has enough of them
        if len(inputs) == n_tests:
            break
        candidate = make_input(rng)
        if candidate not in inputs:
            inputs.append(candidate)
    while len(inputs) < n_tests:
        inputs.append(make_input(rng))
    tests = [{"input": i + "\n", "output": answer(i) + "\n"} for i in inputs]
    example = tests[0]
    prompt = f"{statement}\nExample input:\n{example['input']}Example output:\n{example['output']}{ANSWER_FORMAT}"
    return {"prompt": prompt, "tests": tests, "solution": f"```python\n{program}\n```", "task": family}


def make_coding_tasks(n: int, seed: int, families: list[str] | None = None, n_tests: int = 4) -> list[dict]:
    """``n`` problems cycling through ``families`` (all by default) in a seeded random order."""
    names = list(families or FAMILIES)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown coding task families {unknown}; known: {', '.join(FAMILIES)}")
    if n < 0 or n_tests < 1:
        raise ValueError(f"need n >= 0 and n_tests >= 1, got n={n}, n_tests={n_tests}")
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < n:
        block = names[:]
        rng.shuffle(block)
        order += block
    return [make_coding_task(family, rng, n_tests) for family in order[:n]]
