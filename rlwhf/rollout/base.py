"""The rollout protocol: sample ``n`` completions per prompt with their tokens' log-probs.

Engines take weights as the trainer holds them (transformers' in-memory parameter names) and
apply them in place, without a restart. Which engine runs is chosen in the recipe
(``rollout.engine``), never by a silent fallback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass
class SamplingSettings:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    # Each prompt's own seed, when the caller splits a batch across engines and keeps every prompt's
    # seed what the whole batch would give it (``prompt_seeds``); else derived from ``seed``.
    prompt_seeds: list[int | None] | None = None
    # Multi-turn episodes (``rlwhf.rollout.episodes``): strings that end a turn (kept in its text), each
    # prompt's own token budget (else ``max_new_tokens``), and each prompt's dataset row, which an
    # environment's ``reset`` receives.
    stop: list[str] | None = None
    max_new_tokens_each: list[int] | None = None
    rows: list[dict] | None = None


def prompt_seeds(seed: int | None, count: int) -> list[int | None]:
    """One seed per prompt of a batch, derived from the batch's ``seed``.

    A seed shared by every request makes vLLM draw the same random numbers for each of them: two
    copies of a prompt in one batch would get identical completions, and different prompts' samples
    would be correlated position by position.
    """
    if seed is None:
        return [None] * count
    return [
        int.from_bytes(hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=4).digest(), "little") for i in range(count)
    ]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the engine's sampling distribution
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (truncated)
    # [prompt + completion - 1, layers, k] int16: the experts each input position was routed to in each
    # MoE layer while sampling (-1 where unknown); None when the engine does not record them.
    routes: np.ndarray | None = None
    # A multi-turn episode (``rlwhf.rollout.episodes``): 1 on the model's tokens, 0 on the tool or
    # environment tokens between its turns (log-prob 0.0 there); None when every token is the model's.
    mask: list[int] | None = None
    turns: list | None = None  # the episode's ``Turn``s, in order
    cut: str | None = None  # the limit that ended it: max_new_tokens, max_turns or max_total_tokens
    env_reward: float = 0.0  # the environment's rewards over the episode


@dataclass
class Group:
    prompt: str
    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


# A prompt as text (the engine tokenizes it) or as token ids (used as they are).
Prompt = str | list[int]


# New weights as the trainer holds them (its parameter names and in-memory layout): a whole state
# dict, or an iterable of partial ones (buckets) that the engine reads one at a time.
WeightBuckets = dict[str, torch.Tensor] | Iterable[dict[str, torch.Tensor]]


def as_buckets(weights: WeightBuckets) -> Iterable[dict[str, torch.Tensor]]:
    return [weights] if isinstance(weights, dict) else weights


class RolloutEngine(Protocol):
    def generate(self, prompts: list[Prompt], sampling: SamplingSettings) -> list[Group]: ...

    def update_weights(self, weights: WeightBuckets) -> None: ...

    def set_routing_bias(self, bias: torch.Tensor) -> None: ...
