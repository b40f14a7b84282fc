"""Rewards of multi-turn episodes, read from the ``episode`` column that rlwhf gives every reward of a
run with tools or an environment (``rlwhf.rollout.episodes.episode_stats``)."""

from __future__ import annotations

from rewards import reward


@reward("env_reward")
def env_reward(completions: list, *, episode: list[dict] | None = None, **_) -> list[float | None]:
    """The environment's own rewards over the episode (an OpenEnv observation's ``reward``, a
    ``Step.reward``), summed; None (scored ``on_error``) for a completion that is not an episode."""
    if episode is None:
        return [None] * len(completions)
    return [float(e["env_reward"]) for e in episode]


@reward("tool_errors")
def tool_errors(completions: list, *, episode: list[dict] | None = None, **_) -> list[float]:
    """-1.0 per tool call that failed (raised, timed out, was refused, named no tool): weight it to
    discourage broken calls; 0.0 without tools."""
    if episode is None:
        return [0.0] * len(completions)
    return [-float(e["tool_errors"]) for e in episode]
