"""Sampling and scoring through the workers, held-out accuracy, and the rows written to the traces.

``sample`` and ``score`` are the one place where prompts become scored completions, for training
steps and evaluations alike: the rollout actor samples, the reward actor scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rlwhf.data.prompts import is_conversation
from rlwhf.reward_runner import GroupToScore
from rlwhf.rollout import SamplingSettings


@dataclass
class Scored:
    """Every reward's score of each completion and their weighted total (flat, groups in order)."""

    per_reward: dict[str, list]  # reward name -> one score per completion
    total: list[float]
    errors: dict[str, int]  # reward name -> completions scored on_error (raised, bad value or timed out)
    failures: list  # rlwhf.reward_runner.Failure, one per failed reward call
    seconds: float


def columns_of(row: dict) -> dict:
    """The dataset columns a reward receives besides the completion and the prompt."""
    return {k: v for k, v in row.items() if k not in ("prompt", "solution", "prompt_text", "prompt_ids")}


def reward_completions(prompt, group) -> list:
    """A group's completions as rewards receive them: text, or for a conversational prompt TRL's
    shape, one assistant message each."""
    if is_conversation(prompt):
        return [[{"role": "assistant", "content": c.text}] for c in group.completions]
    return [c.text for c in group.completions]


def sample(rollout, rows: list[dict], sampling: SamplingSettings) -> tuple[list, float]:
    """``sampling.n`` completions of each row's prompt from the rollout engines (``RolloutGroup``);
    and the seconds it took. Rows prepared by ``rlwhf.data.prompts`` are sampled from their rendered
    token ids."""
    t0 = time.perf_counter()
    groups = rollout.generate([r.get("prompt_ids", r["prompt"]) for r in rows], sampling)
    for group, row in zip(groups, rows):
        group.prompt = row.get("prompt_text", group.prompt)
    return groups, time.perf_counter() - t0


class RewardFailed(RuntimeError):
    """A reward failed on every group of a batch: its scores would be ``on_error`` throughout."""


def score(reward, rows: list[dict], groups: list, stop_on_total_failure: bool = True) -> Scored:
    """Every completion scored by every reward of the recipe, in the reward worker's processes (``RewardGroup``).

    A reward that fails on every group raises ``RewardFailed`` with its first error, unless
    ``stop_on_total_failure`` is off (``rewards.stop_on_total_failure``)."""
    t0 = time.perf_counter()
    scores = reward.score([GroupToScore(r["prompt"], reward_completions(r["prompt"], g), columns_of(r))
                           for g, r in zip(groups, rows)])
    errors = {name: scores.errors[name] + scores.timeouts[name] for name in scores.errors}
    if stop_on_total_failure and groups:
        for name in scores.per_reward:
            failed = [f for f in scores.failures if f.reward == name]
            if len(failed) == len(groups):
                raise RewardFailed(f"reward {name!r} failed on all {len(groups)} groups; the first: {failed[0]}. Fix "
                                   "the reward, or set rewards.stop_on_total_failure=false to score on_error and carry on")
    return Scored(scores.per_reward, scores.total, errors, scores.failures, time.perf_counter() - t0)


def trace_rows(step: int, rows: list[dict], groups: list, per_reward: dict, total: list, advantages=None) -> list[dict]:
    """One trace row per completion: the run-directory contract (``traces/*.parquet``)."""
    out, i = [], 0
    for p, (row, g) in enumerate(zip(rows, groups)):
        for k, c in enumerate(g.completions):
            rec = {"step": step, "prompt_index": p, "sample_index": k, "prompt": g.prompt, "completion": c.text,
                   "answer": str(row.get("answer", "")), "reward": total[i],
                   "advantage": float(advantages[i]) if advantages is not None else float("nan"),
                   "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason}
            for name, values in per_reward.items():
                rec[f"reward_{name}"] = values[i]
            out.append(rec)
            i += 1
    return out


def evaluate(recipe, rollout, reward, rows: list[dict], tracker, step: int, tag: str) -> dict:
    """Held-out accuracy over ``eval.num_prompts`` prompts: ``accuracy`` is greedy decoding's;
    ``accuracy/sampled`` the mean over ``eval.samples`` completions per prompt at the rollout
    temperature (what the policy gradient optimises), when asked for."""
    rows = rows[: recipe.eval.num_prompts]
    acc = recipe.rewards.accuracy
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=recipe.eval.max_new_tokens, seed=0)
    groups, _ = sample(rollout, rows, greedy)
    scored = score(reward, rows, groups, recipe.rewards.stop_on_total_failure)
    tracker.write_traces(step, trace_rows(step, rows, groups, scored.per_reward, scored.total), tag=f"eval_{tag}")
    out = {"accuracy": float(np.mean([s or 0.0 for s in scored.per_reward[acc]]))}
    if recipe.eval.samples:
        rc = recipe.rollout
        sampled = SamplingSettings(n=recipe.eval.samples, temperature=rc.temperature, top_p=rc.top_p,
                                   max_new_tokens=recipe.eval.max_new_tokens, seed=1)
        groups, _ = sample(rollout, rows, sampled)
        scored = score(reward, rows, groups, recipe.rewards.stop_on_total_failure)
        out["accuracy/sampled"] = float(np.mean([s or 0.0 for s in scored.per_reward[acc]]))
    return out


def describe_accuracy(result: dict) -> str:
    text = f"{result['accuracy']:.1%} greedy"
    return text + (f", {result['accuracy/sampled']:.1%} sampled" if "accuracy/sampled" in result else "")
