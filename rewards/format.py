"""Format and length rewards."""

from __future__ import annotations

import re

from rewards import reward, text_of
from rewards.math.extraction import _boxes

_THINK_ANSWER = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


@reward("format")
def format_reward(completions: list[str], *, style: str = "think_answer", **_) -> list[float]:
    """1.0 when the completion has the answer format the prompt asks for, else 0.0.

    ``think_answer`` is exactly ``<think>...</think><answer>...</answer>``; ``boxed`` is one
    ``\\boxed{...}``, not empty. A recipe whose prompt asks for ``\\boxed{}`` gets ``boxed`` unless
    it names a style."""
    if style == "think_answer":
        return [1.0 if _THINK_ANSWER.match(text_of(c)) else 0.0 for c in completions]
    if style == "boxed":
        return [1.0 if _one_filled_box(text_of(c)) else 0.0 for c in completions]
    raise ValueError(f"format: style {style!r} is not one of 'think_answer', 'boxed'")


def _one_filled_box(text: str) -> bool:
    boxes = _boxes(text)
    return len(boxes) == 1 and bool(boxes[0][2].strip())


@reward("length_penalty")
def length_penalty(completions: list[str], *, max_chars: int | list[int] = 512, **_) -> list[float]:
    """0 up to half of ``max_chars``, falling linearly to -1 at ``max_chars`` (discourages rambling)."""
    limits = max_chars if isinstance(max_chars, list) else [max_chars] * len(completions)
    out = []
    for c, limit in zip(completions, limits):
        half = limit / 2
        out.append(-min(1.0, max(0.0, (len(text_of(c)) - half) / half)))
    return out
