"""Math answer checking: extract a model's final answer and decide whether it equals the gold answer.

    verify(gold, prediction) -> bool        one completion (the whole output) against a gold answer
    verify_batch(golds, predictions)        many at once; each distinct gold is parsed once
    extract_answer(text) -> str | None      the final answer as written
    math_accuracy                           the registered reward (1.0 / 0.0)

How it works. The answer strings are parsed by a small LaTeX/plain-text parser written here (no
``eval``, bounded depth and length) into a tree of numbers, symbols, operators and structures
(lists, tuples, sets, intervals, relations, matrices, text). Items whose trees are plain rational
numbers (or lists, tuples, intervals of them) are decided in-process with exact fractions: no
sympy, no IPC, well under a millisecond. Everything else goes to a small pool of helper processes
that build sympy expressions and compare them (exact difference, random numeric probes, then
``simplify``). Each item gets ``timeout_s``; a helper that overruns is killed (SIGKILL) and
replaced, and the item scores False. No signals are used in the calling process, so this works
from any thread, any Ray actor and inside daemonic worker processes (helpers are started with
``subprocess``, not ``multiprocessing``). Helpers die with their parent (PR_SET_PDEATHSIG, EOF on
their pipe, and an ``atexit`` hook).

Starting a helper (a Python interpreter importing sympy, about a second) is not charged to an
item's limit; call ``warm_up()`` to start one ahead of the first call.

Modules: ``extraction`` (the answer in a model's output), ``parsing`` (answer string to tree),
``compare`` (structure shared by both paths), ``exact`` (rationals, in-process), ``symbolic``
(sympy, in helpers), ``decide`` (one item in the calling process), ``pool`` (helper processes).
"""

from __future__ import annotations

from rewards import reward, text_of
from rewards.math import pool as _pool_module
from rewards.math.decide import _fast, _Gold, _prepare_gold
from rewards.math.extraction import extract_answer
from rewards.math.options import (
    DEFAULT_TIMEOUT_S,
    DEFAULTS,
    HELPER_MEMORY_BYTES,
    MAX_ANSWER_CHARS,
    MAX_DEPTH,
    STARTUP_TIMEOUT_S,
    Options,
)
from rewards.math.parsing import ParseError, parse
from rewards.math.pool import _run_jobs, shutdown, stats, warm_up

__all__ = [
    "verify",
    "verify_batch",
    "answers_equal",
    "gold_is_readable",
    "extract_answer",
    "parse",
    "ParseError",
    "Options",
    "DEFAULTS",
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_CHARS",
    "MAX_DEPTH",
    "STARTUP_TIMEOUT_S",
    "HELPER_MEMORY_BYTES",
    "math_accuracy",
    "warm_up",
    "shutdown",
    "stats",
]


def __getattr__(name: str):
    if name == "_pool":  # the live pool (rebound by the pool module), for tests and debugging
        return _pool_module._pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def verify_batch(
    golds: list[str], predictions: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, options: Options = DEFAULTS
) -> list[bool]:
    """``verify`` for many pairs at once: each distinct gold is prepared once, items decided by
    exact arithmetic never leave the process, and the rest run in the helper pool in parallel,
    each under ``timeout_s``. Never raises on odd inputs (non-strings score False)."""
    if len(golds) != len(predictions):
        raise ValueError(f"verify_batch: {len(golds)} golds for {len(predictions)} predictions")
    out = [False] * len(predictions)
    prepared: dict[str, _Gold | None] = {}
    jobs: dict[str, tuple[object, list, list]] = {}  # gold key -> (tree, items, output indices)
    for i, (gold, prediction) in enumerate(zip(golds, predictions)):
        try:
            if not isinstance(prediction, str) or gold is None:
                continue
            g = str(gold)
            if g not in prepared:
                prepared[g] = _prepare_gold(g)
            decided, verdict, work = _fast(prepared[g], prediction, options)
            if decided:
                out[i] = verdict
            else:
                jobs.setdefault(g, (prepared[g].tree, [], []))
                jobs[g][1].append(work)
                jobs[g][2].append(i)
        except (RecursionError, MemoryError, ParseError, ValueError, TypeError, ArithmeticError):
            out[i] = False
    if jobs:
        ordered = list(jobs.values())
        verdicts = _run_jobs([(tree, items) for tree, items, _ in ordered], options, timeout_s)
        for (_, _, indices), vs in zip(ordered, verdicts):
            for i, v in zip(indices, vs):
                out[i] = v
    return out


def verify(gold: str, prediction: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, options: Options = DEFAULTS) -> bool:
    """True when the final answer in ``prediction`` (a model's whole output) equals ``gold``.
    Never raises; returns within ``timeout_s`` (plus helper start-up on first use)."""
    try:
        return verify_batch([gold], [prediction], timeout_s=timeout_s, options=options)[0]
    except Exception:
        return False


def answers_equal(gold: str, answer: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Compare two bare answers (no extraction)."""
    return verify(gold, f"\\boxed{{{answer}}}", timeout_s=timeout_s)


def gold_is_readable(gold: str) -> bool:
    """Whether ``gold`` is an answer the verifier can compare against: it parses (as written, or
    as the final answer of a worked solution) or is an option letter. ``"???"`` or ``"\\frac{"``
    is not, though ``verify`` would match the first to itself letter for letter."""
    if not isinstance(gold, str) or not gold.strip():
        return False
    try:
        prepared = _prepare_gold(gold)
    except (RecursionError, MemoryError, ParseError, ValueError, TypeError, ArithmeticError):
        return False
    return prepared.tree is not None or prepared.choice is not None


@reward("math_accuracy")
def math_accuracy(completions: list[str], *, answer: list[str], **_) -> list[float]:
    """1.0 when the completion's final answer equals the gold ``answer`` column, else 0.0."""
    return [1.0 if ok else 0.0 for ok in verify_batch(list(answer), [text_of(c) for c in completions])]
