"""Prompts become scored completions here, for training steps and evaluations alike: ``sample``
asks the rollout engines (or their Ray group), ``score`` the reward runner (or its group), and
``trace_rows`` is the row schema of ``traces/*.parquet``, the run directory's contract.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from rlwhf.data.prompts import RENDERED_KEYS
from rlwhf.data.rows import is_conversation
from rlwhf.errors import RewardFailed
from rlwhf.reward_runner import GroupToScore
from rlwhf.rollout.base import SamplingSettings, prompt_seeds
from rlwhf.rollout.episodes import episode_stats


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
    return {k: v for k, v in row.items() if k not in ("prompt", "solution", *RENDERED_KEYS)}


def reward_completions(prompt, group) -> list:
    """A group's completions as rewards receive them (``as_reward_completions``); a multi-turn episode
    as its whole transcript in TRL's conversational shape, one message per turn (the model's as
    ``assistant``, a tool's as ``tool``, an environment's as ``user``), whatever the prompt's shape."""
    if any(c.turns is not None for c in group.completions):
        return [[{"role": t.role, "content": t.text} for t in c.turns] for c in group.completions]
    return as_reward_completions(prompt, [c.text for c in group.completions])


def per_completion_columns(group) -> dict:
    """What rewards receive per completion besides the dataset's columns: for multi-turn episodes,
    ``episode`` (``rlwhf.rollout.episodes.episode_stats``: turns, tool calls and errors, observation
    tokens, the limit that cut it, the environment's reward)."""
    if all(c.turns is None for c in group.completions):
        return {}
    return {"episode": [episode_stats(c) for c in group.completions]}


def as_reward_completions(prompt, texts: list[str]) -> list:
    """Completions as rewards receive them: text, or for a conversational prompt TRL's shape, one
    assistant message each."""
    if is_conversation(prompt):
        return [[{"role": "assistant", "content": text}] for text in texts]
    return list(texts)


def sample(rollout, rows: list[dict], sampling: SamplingSettings) -> tuple[list, float]:
    """``sampling.n`` completions of each row's prompt from the rollout engines (``RolloutEngines``);
    and the seconds it took. Rows prepared by ``rlwhf.data.prompts`` are sampled from their rendered
    token ids."""
    t0 = time.perf_counter()
    groups = rollout.generate(
        [r.get("prompt_ids", r["prompt"]) for r in rows], dataclasses.replace(sampling, rows=rows)
    )
    for group, row in zip(groups, rows):
        group.prompt = row.get("prompt_text", group.prompt)
    return groups, time.perf_counter() - t0


def sampled_chunks(
    rollout,
    reward,
    rows: list[dict],
    sampling: SamplingSettings,
    *,
    desc: str,
    chunk: int = 64,
    stop_on_total_failure: bool = True,
):
    """``sample`` and ``score`` over many rows, ``chunk`` prompts at a time under a progress bar:
    yields ``(rows, groups, scored)`` per chunk. Every prompt keeps the seed the whole batch would
    give it, so the completions are those of one ``sample`` call over all the rows."""
    seeds = sampling.prompt_seeds or prompt_seeds(sampling.seed, len(rows))
    with tqdm(total=len(rows), desc=desc, unit="prompt", dynamic_ncols=True) as bar:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            groups, _ = sample(rollout, part, dataclasses.replace(sampling, prompt_seeds=seeds[start : start + chunk]))
            yield part, groups, score(reward, part, groups, stop_on_total_failure)
            bar.update(len(part))


def sample_and_score(
    rollout,
    reward,
    rows: list[dict],
    sampling: SamplingSettings,
    stop_on_total_failure: bool = True,
    progress: str | None = None,
) -> tuple[list, Scored]:
    """``sample`` then ``score`` all ``rows``; with ``progress`` (the bar's label), in chunks under a
    progress bar (``sampled_chunks``), with the same completions and scores."""
    if progress is None:
        groups, _ = sample(rollout, rows, sampling)
        return groups, score(reward, rows, groups, stop_on_total_failure)
    groups, parts = [], []
    for _, chunk_groups, scored in sampled_chunks(
        rollout, reward, rows, sampling, desc=progress, stop_on_total_failure=stop_on_total_failure
    ):
        parts.append((len(groups), scored))
        groups += chunk_groups
    return groups, Scored(
        per_reward={name: [v for _, sc in parts for v in sc.per_reward[name]] for name in parts[0][1].per_reward},
        total=[v for _, sc in parts for v in sc.total],
        errors={name: sum(sc.errors[name] for _, sc in parts) for name in parts[0][1].errors},
        failures=[dataclasses.replace(f, group=f.group + offset) for offset, sc in parts for f in sc.failures],
        seconds=sum(sc.seconds for _, sc in parts),
    )


def score(reward, rows: list[dict], groups: list, stop_on_total_failure: bool = True) -> Scored:
    """Every completion scored by every reward of the recipe, in the reward worker's processes (``RewardScorer``).

    A reward that fails on every group raises ``RewardFailed`` with its first error, unless
    ``stop_on_total_failure`` is off (``rewards.stop_on_total_failure``)."""
    t0 = time.perf_counter()
    scores = reward.score(
        [
            GroupToScore(r["prompt"], reward_completions(r["prompt"], g), columns_of(r), per_completion_columns(g))
            for g, r in zip(groups, rows)
        ]
    )
    errors = {name: scores.errors[name] + scores.timeouts[name] for name in scores.errors}
    if stop_on_total_failure and groups:
        for name in scores.per_reward:
            failed = [f for f in scores.failures if f.reward == name]
            if len(failed) == len(groups):
                raise RewardFailed(
                    f"reward {name!r} failed on all {len(groups)} groups; the first: {failed[0]}. Fix "
                    "the reward, or set rewards.stop_on_total_failure=false to score on_error and carry on"
                )
    return Scored(scores.per_reward, scores.total, errors, scores.failures, time.perf_counter() - t0)


def trace_rows(step: int, rows: list[dict], groups: list, per_reward: dict, total: list, advantages=None) -> list[dict]:
    """One trace row per completion: the run-directory contract (``traces/*.parquet``). A multi-turn
    episode's row also holds ``turns`` (each with its role, text, token ids, tool, status and
    seconds; the model's turns are the ones trained on), ``num_turns``, ``tool_calls`` and ``cut``."""
    out, i = [], 0
    for p, (row, g) in enumerate(zip(rows, groups)):
        for k, c in enumerate(g.completions):
            rec = {
                "step": step,
                "prompt_index": p,
                "sample_index": k,
                "prompt": g.prompt,
                "completion": c.text,
                "answer": str(row.get("answer", "")),
                "reward": total[i],
                "advantage": float(advantages[i]) if advantages is not None else float("nan"),
                "num_tokens": len(c.token_ids),
                "finish_reason": c.finish_reason,
            }
            if c.turns is not None:  # a multi-turn episode: each turn with its tokens and tool result
                rec["turns"] = [t.as_dict() for t in c.turns]
                rec["num_turns"] = sum(t.role == "assistant" for t in c.turns)
                rec["tool_calls"] = sum(t.tool is not None for t in c.turns)
                rec["cut"] = c.cut or ""
            for name, values in per_reward.items():
                rec[f"reward_{name}"] = values[i]
            out.append(rec)
            i += 1
    return out
