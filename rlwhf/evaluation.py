"""Held-out accuracy: the completions of ``rlwhf.rollout.sampling`` read as answers (greedy, pass@k,
maj@k, lengths, format errors), the same way in a run's evaluations and in ``rlwhf eval``."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from rewards.code_harness import extract_code
from rewards.gym import extract_answer as gym_answer
from rewards.math import extract_answer, verify_batch
from rlwhf.algo import pass_at_k
from rlwhf.reward_runner import RewardRunner
from rlwhf.rollout import SamplingSettings, engine_options, make_engine
from rlwhf.rollout.episodes import answer_text, episode_metrics
from rlwhf.rollout.sampling import Scored, sample_and_score, trace_rows


def final_answer(text: str, kind: str) -> str | None:
    """The answer a completion commits to: for ``math`` its final answer as written (boxed, answer
    tags or a closing phrase; a bare last number does not count), for ``code`` its program, for
    ``gym`` (reasoning-gym tasks) what the ``reasoning_gym`` reward's ``auto`` extractor reads."""
    if kind == "gym":
        return gym_answer(text)
    if kind == "code":
        code = extract_code(text)
        return code.strip() if code and code.strip() else None

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
    pairs = [(i, j) for n, i in enumerate(present) for j in present[n + 1 :]]
    if kind == "math":
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
    completions = [c for g in groups for c in g.completions]
    kind = answer_kind(accuracy)
    answers = [final_answer(answer_text(c), kind) for c in completions]
    scores = [s or 0.0 for s in scored.per_reward[accuracy]]
    right = [s >= 1.0 for s in scores]
    out = {
        "accuracy": float(np.mean(scores)),
        "pass@1": float(np.mean(right)),
        "length/mean": float(np.mean([len(c.token_ids) for c in completions])),
        "truncated_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
        "format_error_frac": float(np.mean([a is None for a in answers])),
        **episode_metrics(completions, prefix=""),
    }
    for name, values in scored.per_reward.items():
        present = [v for v in values if v is not None]
        out[f"reward/{name}/mean"] = float(np.mean(present)) if present else float("nan")
    if k:
        passed, majority, start = [], [], 0
        for g in groups:
            n = len(g.completions)
            if k > n:
                raise ValueError(f"pass@{k} needs at least {k} completions per prompt; a group has {n}")
            passed.append(pass_at_k(n, sum(right[start : start + n]), k))
            best = majority_index(answers[start : start + k], kind)
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


def run_evaluation(
    plan: EvalPlan,
    rollout,
    reward,
    rows: list[dict],
    accuracy: str,
    stop_on_total_failure: bool = True,
    on_traces=None,
    progress: bool = False,
) -> dict:
    """Score ``rows[:plan.num_prompts]``: greedy decoding's metrics under ``greedy/…`` (its
    ``accuracy`` also as ``accuracy``), the samples' under ``sampled/…`` (with pass@k and maj@k);
    ``on_traces(kind, rows, groups, scored)`` sees each set of completions. ``progress`` shows bars
    and changes nothing else: the same settings score the same everywhere (a run's evaluations,
    ``rlwhf eval``)."""
    rows = rows[: plan.num_prompts]
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=plan.max_new_tokens, seed=0)
    groups, scored = sample_and_score(
        rollout, reward, rows, greedy, stop_on_total_failure, "greedy" if progress else None
    )
    if on_traces:
        on_traces("greedy", rows, groups, scored)
    out = {f"greedy/{key}": value for key, value in completion_metrics(groups, scored, accuracy).items()}
    out["accuracy"] = out["greedy/accuracy"]
    if plan.samples:
        sampled = SamplingSettings(
            n=plan.samples, temperature=plan.temperature, top_p=plan.top_p, max_new_tokens=plan.max_new_tokens, seed=1
        )
        groups, scored = sample_and_score(
            rollout, reward, rows, sampled, stop_on_total_failure, f"{plan.samples} samples" if progress else None
        )
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
            tracker.write_traces(
                step, trace_rows(step, rows, groups, scored.per_reward, scored.total), tag=f"eval_{tag}"
            )

    return run_evaluation(
        EvalPlan.of(recipe),
        rollout,
        reward,
        rows,
        recipe.rewards.accuracy,
        recipe.rewards.stop_on_total_failure,
        on_traces=keep_greedy,
    )


def describe_accuracy(result: dict) -> str:
    text = f"{result['accuracy']:.1%} greedy"
    if "accuracy/sampled" in result:
        text += f", {result['accuracy/sampled']:.1%} sampled"
    return text + "".join(f", {key} {value:.1%}" for key, value in result.items() if key.startswith(("pass@", "maj@")))


@contextmanager
def local_workers(model_path: str, recipe):
    """A rollout engine (``rollout.engine``) for ``model_path`` and a reward runner for the recipe's
    rewards, both in this process (no Ray), for commands that sample and score outside a run;
    closed on leaving."""

    # In this process vLLM's start-up warnings (eager mode, no tcmalloc, ...) would bury the results.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    rw = recipe.rewards
    engine = make_engine(recipe.rollout.engine, model_path, **engine_options(recipe, in_run=False))
    try:
        with RewardRunner(
            rw.funcs, timeout_s=rw.timeout_s, num_workers=rw.num_workers, warm_up_timeout_s=rw.warm_up_timeout_s
        ) as runner:
            yield engine, runner
    finally:
        getattr(engine, "close", lambda: None)()
