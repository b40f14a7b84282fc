"""Process rewards: check each step of a chain of thought, not only the final answer.

An outcome reward pays a completion whose answer is right even when its reasoning is not: on the
arithmetic task about one correct answer in eight was reached through a mis-copied digit. RL then
reinforces unfaithful reasoning. ``arithmetic_steps`` scores the reasoning itself, line by line,
against the column-wise procedure the task's solver writes, which also gives partial credit to
a completion that got most columns right: a denser signal than right/wrong.
"""

from __future__ import annotations

import re

from rewards import reward, text_of

_ADDITION = re.compile(r"(\d+)\s*\+\s*(\d+)\s*=\s*\?")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def addition_trace(a: int, b: int) -> str:
    """Column-wise addition, least significant digit first, with explicit carries."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, lines = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = x + y + carry
        lines.append(f"{terms}={total}")
        carry = total // 10
    return "\n".join(lines)


@reward("arithmetic_steps")
def arithmetic_steps(completions: list[str], *, prompts: list[str], **_) -> list[float | None]:
    """Share of the column-by-column addition steps written correctly, in order (0..1).

    The expected steps are those of ``addition_trace`` (the procedure the task's solver writes) for the prompt's
    operands (``"Q: 347+586=?"``); a missing ``<think>`` block scores 0, and extra or missing lines
    count as wrong. ``None`` (not applicable) for prompts that are not an addition problem.
    """
    scores: list[float | None] = []
    for completion, prompt in zip(completions, prompts):
        problem = _ADDITION.search(text_of(prompt))
        if problem is None:
            scores.append(None)
            continue
        expected = addition_trace(int(problem.group(1)), int(problem.group(2))).split("\n")
        think = _THINK.search(text_of(completion))
        written = [line.strip() for line in think.group(1).strip().split("\n")] if think else []
        right = sum(w == e for w, e in zip(written, expected))
        scores.append(right / max(len(expected), len(written)))
    return scores
