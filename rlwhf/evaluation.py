"""Sampling and scoring through the workers, held-out accuracy, and the rows written to the traces.

``sample`` and ``score`` are the one place where prompts become scored completions, for training
steps and evaluations alike: the rollout actor samples, the reward actor scores.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
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


def sampled_chunks(rollout, reward, rows: list[dict], sampling: SamplingSettings, *, desc: str, chunk: int = 64,
                   stop_on_total_failure: bool = True):
    """``sample`` and ``score`` over many rows, ``chunk`` prompts at a time under a progress bar:
    yields ``(rows, groups, scored)`` per chunk. Every prompt keeps the seed the whole batch would
    give it, so the completions are those of one ``sample`` call over all the rows."""
    from tqdm.auto import tqdm

    from rlwhf.rollout.base import prompt_seeds

    seeds = sampling.prompt_seeds or prompt_seeds(sampling.seed, len(rows))
    with tqdm(total=len(rows), desc=desc, unit="prompt", dynamic_ncols=True) as bar:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            groups, _ = sample(rollout, part, dataclasses.replace(sampling, prompt_seeds=seeds[start:start + chunk]))
            yield part, groups, score(reward, part, groups, stop_on_total_failure)
            bar.update(len(part))


def sample_and_score(rollout, reward, rows: list[dict], sampling: SamplingSettings, stop_on_total_failure: bool = True,
                     progress: str | None = None) -> tuple[list, Scored]:
    """``sample`` then ``score`` all ``rows``; with ``progress`` (the bar's label), in chunks under a
    progress bar (``sampled_chunks``), with the same completions and scores."""
    if progress is None:
        groups, _ = sample(rollout, rows, sampling)
        return groups, score(reward, rows, groups, stop_on_total_failure)
    groups, parts = [], []
    for _, chunk_groups, scored in sampled_chunks(rollout, reward, rows, sampling, desc=progress,
                                                  stop_on_total_failure=stop_on_total_failure):
        parts.append((len(groups), scored))
        groups += chunk_groups
    return groups, Scored(
        per_reward={name: [v for _, sc in parts for v in sc.per_reward[name]] for name in parts[0][1].per_reward},
        total=[v for _, sc in parts for v in sc.total],
        errors={name: sum(sc.errors[name] for _, sc in parts) for name in parts[0][1].errors},
        failures=[dataclasses.replace(f, group=f.group + offset) for offset, sc in parts for f in sc.failures],
        seconds=sum(sc.seconds for _, sc in parts))


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


def final_answer(text: str, kind: str) -> str | None:
    """The answer a completion commits to: for ``math`` its final answer as written (boxed, answer
    tags or a closing phrase; a bare last number does not count), for ``code`` its program, for
    ``gym`` (reasoning-gym tasks) what the ``reasoning_gym`` reward's ``auto`` extractor reads."""
    if kind == "gym":
        from rewards.gym import extract_answer as gym_answer

        return gym_answer(text)
    if kind == "code":
        from rewards.code import extract_code

        code = extract_code(text)
        return code.strip() if code and code.strip() else None
    from rewards.math import extract_answer

    return extract_answer(text, last_number_fallback=False)


def answer_kind(accuracy_reward: str) -> str:
    """How answers are read and compared for a recipe's accuracy reward: ``gym``, ``code`` or ``math``."""
    if accuracy_reward == "reasoning_gym":
        return "gym"
    return "code" if "code" in accuracy_reward else "math"


def majority_index(answers: list[str | None], kind: str) -> int | None:
    """The index of the first completion in the largest set of equivalent answers (ties: the set
    seen first); None when no completion has an answer. Math answers are grouped by the math
    verifier (``2/4`` and ``0.5`` are one answer), programs and reasoning-gym answers by their text."""
    present = [i for i, a in enumerate(answers) if a is not None]
    if not present:
        return None
    pairs = [(i, j) for n, i in enumerate(present) for j in present[n + 1:]]
    if kind == "math":
        from rewards.math import verify_batch

        equal = verify_batch([answers[i] for i, _ in pairs], [f"\\boxed{{{answers[j]}}}" for _, j in pairs])
    else:
        equal = [answers[i] == answers[j] for i, j in pairs]
    root = {i: i for i in present}

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for (i, j), same in zip(pairs, equal):
        if same:
            a, b = sorted((find(i), find(j)))
            root[b] = a
    sizes: dict[int, int] = {}
    for i in present:
        sizes[find(i)] = sizes.get(find(i), 0) + 1
    return max(sizes, key=lambda r: (sizes[r], -r))  # a set's root is its first member


def completion_metrics(groups: list, scored: Scored, accuracy: str, k: int | None = None) -> dict:
    """What one evaluation's completions say, ``n`` per prompt: ``accuracy`` (the accuracy reward's
    mean), ``pass@1`` (the fraction fully right: accuracy score 1), and with ``k``, ``pass@k``
    (the unbiased estimator from all n) and ``maj@k`` (the majority answer of the first k, right or
    not); mean length in tokens, the fraction truncated, the fraction without a final answer
    (``format_error_frac``), and each reward's mean."""
    from rlwhf.algo import pass_at_k

    completions = [c for g in groups for c in g.completions]
    kind = answer_kind(accuracy)
    answers = [final_answer(c.text, kind) for c in completions]
    scores = [s or 0.0 for s in scored.per_reward[accuracy]]
    right = [s >= 1.0 for s in scores]
    out = {"accuracy": float(np.mean(scores)), "pass@1": float(np.mean(right)),
           "length/mean": float(np.mean([len(c.token_ids) for c in completions])),
           "truncated_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
           "format_error_frac": float(np.mean([a is None for a in answers]))}
    for name, values in scored.per_reward.items():
        present = [v for v in values if v is not None]
        out[f"reward/{name}/mean"] = float(np.mean(present)) if present else float("nan")
    if k:
        passed, majority, start = [], [], 0
        for g in groups:
            n = len(g.completions)
            if k > n:
                raise ValueError(f"pass@{k} needs at least {k} completions per prompt; a group has {n}")
            passed.append(pass_at_k(n, sum(right[start:start + n]), k))
            best = majority_index(answers[start:start + k], kind)
            majority.append(best is not None and right[start + best])
            start += n
        out[f"pass@{k}"] = float(np.mean(passed))
        out[f"maj@{k}"] = float(np.mean(majority))
    return out


@dataclass
class EvalPlan:
    """How an evaluation samples: greedy (one completion per prompt) and ``samples`` more per prompt
    at ``temperature``/``top_p``, of which pass@k and maj@k take ``k``."""

    num_prompts: int
    max_new_tokens: int
    samples: int
    k: int
    temperature: float
    top_p: float

    @classmethod
    def of(cls, recipe) -> EvalPlan:
        e, rc = recipe.eval, recipe.rollout
        return cls(e.num_prompts, e.max_new_tokens, e.samples, e.k, rc.temperature, rc.top_p)


def run_evaluation(plan: EvalPlan, rollout, reward, rows: list[dict], accuracy: str,
                   stop_on_total_failure: bool = True, on_traces=None, progress: bool = False) -> dict:
    """Score ``rows[:plan.num_prompts]``: greedy decoding's metrics under ``greedy/…`` (its
    ``accuracy`` also as ``accuracy``), the samples' under ``sampled/…`` (with pass@k and maj@k);
    ``on_traces(kind, rows, groups, scored)`` sees each set of completions. ``progress`` shows bars
    and changes nothing else: the same settings score the same everywhere (a run's evaluations,
    ``rlwhf eval``)."""
    rows = rows[: plan.num_prompts]
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=plan.max_new_tokens, seed=0)
    groups, scored = sample_and_score(rollout, reward, rows, greedy, stop_on_total_failure,
                                      "greedy" if progress else None)
    if on_traces:
        on_traces("greedy", rows, groups, scored)
    out = {f"greedy/{key}": value for key, value in completion_metrics(groups, scored, accuracy).items()}
    out["accuracy"] = out["greedy/accuracy"]
    if plan.samples:
        sampled = SamplingSettings(n=plan.samples, temperature=plan.temperature, top_p=plan.top_p,
                                   max_new_tokens=plan.max_new_tokens, seed=1)
        groups, scored = sample_and_score(rollout, reward, rows, sampled, stop_on_total_failure,
                                          f"{plan.samples} samples" if progress else None)
        if on_traces:
            on_traces("sampled", rows, groups, scored)
        metrics = completion_metrics(groups, scored, accuracy, plan.k)
        out.update({f"sampled/{key}": value for key, value in metrics.items()})
        out["accuracy/sampled"] = metrics["accuracy"]
        out[f"pass@{plan.k}"], out[f"maj@{plan.k}"] = metrics[f"pass@{plan.k}"], metrics[f"maj@{plan.k}"]
    return out


def evaluate(recipe, rollout, reward, rows: list[dict], tracker, step: int, tag: str) -> dict:
    """The loop's held-out evaluation (``run_evaluation`` over ``eval.num_prompts`` prompts):
    ``accuracy`` is greedy decoding's; ``accuracy/sampled`` the mean over ``eval.samples``
    completions per prompt at the rollout temperature (what the policy gradient optimises), with
    ``pass@k`` and ``maj@k`` at ``eval.k``; the rest under ``greedy/`` and ``sampled/``. The greedy
    completions go to the traces (``eval_<tag>``)."""

    def keep_greedy(kind, rows, groups, scored):
        if kind == "greedy":
            tracker.write_traces(step, trace_rows(step, rows, groups, scored.per_reward, scored.total),
                                 tag=f"eval_{tag}")

    return run_evaluation(EvalPlan.of(recipe), rollout, reward, rows, recipe.rewards.accuracy,
                          recipe.rewards.stop_on_total_failure, on_traces=keep_greedy)


def describe_accuracy(result: dict) -> str:
    text = f"{result['accuracy']:.1%} greedy"
    if "accuracy/sampled" in result:
        text += f", {result['accuracy/sampled']:.1%} sampled"
    return text + "".join(f", {key} {value:.1%}" for key, value in result.items()
                          if key.startswith(("pass@", "maj@")))


@contextmanager
def local_workers(model_path: str, recipe):
    """A rollout engine (``rollout.engine``) for ``model_path`` and a reward runner for the recipe's
    rewards, both in this process (no Ray), for commands that sample and score outside a run;
    closed on leaving."""
    import os

    from rlwhf.reward_runner import RewardRunner
    from rlwhf.rollout import make_engine

    # In this process vLLM's start-up warnings (eager mode, no tcmalloc, ...) would bury the results.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    rc, rw = recipe.rollout, recipe.rewards
    engine = make_engine(rc.engine, model_path, dtype=recipe.model.dtype, seed=recipe.run.seed,
                         kv_cache_gib=rc.kv_cache_gib,
                         max_model_len=rc.max_prompt_tokens + max(rc.max_new_tokens, recipe.eval.max_new_tokens),
                         gpu_memory_utilization=rc.gpu_memory_utilization,
                         tensor_parallel_size=rc.tensor_parallel_size, compile=rc.compile)
    try:
        with RewardRunner(rw.funcs, timeout_s=rw.timeout_s, num_workers=rw.num_workers,
                          warm_up_timeout_s=rw.warm_up_timeout_s) as runner:
            yield engine, runner
    finally:
        getattr(engine, "close", lambda: None)()


def evaluate_model(model: str, recipe, *, data: str | None = None, split: str | None = None) -> dict:
    """``rlwhf eval``: score a model (a run directory, a checkpoint or a model folder) on the recipe's
    held-out split or on ``data``, with a vLLM engine (``rollout.engine``) and the recipe's rewards,
    both in this process. Returns the report (``metrics``, ``settings``, the completions as trace
    rows under ``completions``)."""
    from rlwhf.checkpoints import resolve_model
    from rlwhf.data.prompts import PromptRenderer, render_rows
    from rlwhf.data.source import rows_to_score

    path = str(resolve_model(model))
    rows, described = rows_to_score(recipe, "test", data, split)
    rows = render_rows(rows, PromptRenderer.from_pretrained(path, recipe.data), recipe, "evaluation")
    plan = EvalPlan.of(recipe)
    completions: list[dict] = []

    def keep(kind, rows, groups, scored):
        for row in trace_rows(0, rows, groups, scored.per_reward, scored.total):
            completions.append({"decoding": kind, **row})

    with local_workers(path, recipe) as (engine, runner):
        metrics = run_evaluation(plan, engine, runner, rows, recipe.rewards.accuracy,
                                 recipe.rewards.stop_on_total_failure, on_traces=keep, progress=True)
    settings = {"model": path, "data": described, "prompts": min(plan.num_prompts, len(rows)),
                "samples": plan.samples, "k": plan.k, "temperature": plan.temperature, "top_p": plan.top_p,
                "max_new_tokens": plan.max_new_tokens, "engine": recipe.rollout.engine, "accuracy_reward": recipe.rewards.accuracy}
    return {"settings": settings, "metrics": metrics, "completions": completions}


def metrics_table(metrics: dict) -> list[tuple[str, str, str]]:
    """``(metric, greedy, sampled)`` rows of an evaluation's metrics, for printing."""
    names = []
    for key in metrics:
        kind, _, name = key.partition("/")
        if kind in ("greedy", "sampled") and name not in names:
            names.append(name)

    def cell(key: str) -> str:
        value = metrics.get(key)
        return "—" if value is None or value != value else f"{value:.1f}" if "length" in key else f"{value:.3f}"

    first = [n for n in names if n == "accuracy" or n.startswith(("pass@", "maj@"))]
    names = sorted(first, key=lambda n: (n != "accuracy", n[:3] == "maj")) + [n for n in names if n not in first]
    return [(name, cell(f"greedy/{name}"), cell(f"sampled/{name}")) for name in names]
