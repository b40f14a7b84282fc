"""Format and length rewards."""

from __future__ import annotations

import re

from rewards import reward, text_of

_THINK_ANSWER = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


@reward("format")
def format_reward(completions: list[str], **_) -> list[float]:
    """1.0 when the completion is exactly ``<think>...</think><answer>...</answer>``, else 0.0."""
    return [1.0 if _THINK_ANSWER.match(text_of(c)) else 0.0 for c in completions]


@reward("length_penalty")
def length_penalty(completions: list[str], *, max_chars: int | list[int] = 512, **_) -> list[float]:
    """0 up to half of ``max_chars``, falling linearly to -1 at ``max_chars`` (discourages rambling)."""
    limits = max_chars if isinstance(max_chars, list) else [max_chars] * len(completions)
    out = []
    for c, limit in zip(completions, limits):
        half = limit / 2
        out.append(-min(1.0, max(0.0, (len(text_of(c)) - half) / half)))
    return out
