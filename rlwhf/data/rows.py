"""Rows as the loader and ``rlwhf data check`` see them: the checks (the cheap ones every load
applies, ``data.bad_rows``; the costly ones only the check runs), the report they fill, and rows
written back out.

Row numbers are 0-based indices in file order, as ``datasets`` reads the file (for jsonl: the Nth
record). The kinds of problem, in the order a row is checked:

    missing_column      the recipe's prompt or answer column is not in the file (the whole file)
    missing_prompt      the prompt is null (or the row has no such key)
    empty_prompt        the prompt is blank, or a conversation with no messages or only blank ones
    missing_answer      the gold answer is null or blank, and a math reward needs it
    duplicate_prompt    the prompt repeats an earlier row's (that row is kept, this one is not)
    overlong_prompt     the prompt, rendered for the recipe's tokenizer, is over rollout.max_prompt_tokens
    unparseable_answer  the math verifier cannot read the gold answer, so no completion could match it
    failing_reference   the row's reference solution fails its own tests in the sandbox (rewards.sandbox)
    gold_not_accepted   data.task reasoning_gym: the task's own verifier does not give its gold answer full marks

The answer checks (missing, unparseable) apply to rows without tests: a row with tests is a coding
problem, judged by its tests.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rewards import sandbox
from rewards.code_harness import extract_code, score_code
from rewards.math import gold_is_readable, verify_batch

KINDS = {
    "missing_column": "a column the recipe names is not in the file",
    "missing_prompt": "the prompt is null",
    "empty_prompt": "the prompt is blank (or a conversation without content)",
    "missing_answer": "the gold answer is null or blank (a math reward needs it)",
    "duplicate_prompt": "the prompt repeats an earlier row's",
    "overlong_prompt": "rendered, the prompt is longer than rollout.max_prompt_tokens",
    "unparseable_answer": "the math verifier cannot read the gold answer",
    "failing_reference": "the reference solution fails its own tests",
    "gold_not_accepted": "the task's own verifier does not accept the gold answer",
}
# What the loader checks on every load (no tokenizer, verifier or sandbox needed).
CHEAP_KINDS = ("missing_prompt", "empty_prompt", "missing_answer", "duplicate_prompt")
ROW_NUMBERS = "row numbers are 0-based, in file order"


@dataclass
class Problem:
    row: int | None  # None: the whole file (missing_column)
    kind: str
    reason: str
    first: int | None = None  # duplicate_prompt: the row it repeats


@dataclass
class DataReport:
    source: str
    split: str
    rows: int
    columns: list[str]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks not run, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {kind: counts[kind] for kind in KINDS if counts[kind]}

    def bad_rows(self) -> set[int]:
        return {p.row for p in self.problems if p.row is not None}

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "split": self.split,
            "rows": self.rows,
            "columns": self.columns,
            "row_numbers": ROW_NUMBERS,
            "ok": self.ok,
            "bad_rows": len(self.bad_rows()),
            "counts": self.counts(),
            "problems": [asdict(p) for p in self.problems],
            "notes": self.notes,
        }


def is_blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _prompt_problem(prompt) -> tuple[str, str] | None:
    if prompt is None:
        return "missing_prompt", "the prompt is null"
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            return "empty_prompt", "the conversation has no messages"
        if is_conversation(prompt) and all(is_blank(m.get("content")) for m in prompt):
            return "empty_prompt", "every message of the conversation is blank"
        return None
    if is_blank(str(prompt)):
        return "empty_prompt", "the prompt is blank" if prompt == "" else f"the prompt is only whitespace: {prompt!r}"
    return None


def _prompt_key(prompt) -> str:
    if isinstance(prompt, str):
        return prompt.strip()
    return json.dumps(prompt, sort_keys=True, default=str)


def has_tests(row: dict, tests_column: str = "tests") -> bool:
    tests = row.get(tests_column)
    if tests is None:
        return False
    if isinstance(tests, str):
        return tests.strip() not in ("", "[]", "{}")
    return not hasattr(tests, "__len__") or len(tests) > 0


def short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_rows(
    rows: list[dict],
    *,
    prompt_column: str = "prompt",
    answer_column: str | None = "answer",
    needs_answer: bool = False,
    math: bool = False,
    renderer=None,
    max_prompt_tokens: int | None = None,
    code: bool = False,
    tests_column: str = "tests",
    solution_column: str = "solution",
    notes: list[str] | None = None,
) -> list[Problem]:
    """Every problem of ``rows`` (dicts with the file's own column names), ordered by row.

    ``needs_answer``: a blank gold answer is ``missing_answer``; ``math``: one the math verifier
    cannot read is ``unparseable_answer``; ``renderer`` and ``max_prompt_tokens``: prompts rendered
    longer are ``overlong_prompt``; ``code``: reference solutions run against their tests.
    Without these, only the prompt checks run (missing, empty, duplicate). ``notes`` collects
    what was not checked, and why."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    answer_rows: list[int] = []  # rows whose gold answer the verifier should read
    rendered: list[int] = []
    for i, row in enumerate(rows):
        prompt = row.get(prompt_column)
        bad_prompt = _prompt_problem(prompt)
        if bad_prompt:
            problems.append(Problem(i, *bad_prompt))
        coding = has_tests(row, tests_column)
        if answer_column is not None and not coding and (needs_answer or math):
            answer = row.get(answer_column)
            if is_blank(answer if answer is None else str(answer)):
                if needs_answer:
                    what = "null" if answer is None else "blank"
                    problems.append(Problem(i, "missing_answer", f"the gold answer ({answer_column}) is {what}"))
            elif math:
                answer_rows.append(i)
        if bad_prompt:
            continue
        key = _prompt_key(prompt)
        if key in seen:
            problems.append(Problem(i, "duplicate_prompt", f"same prompt as row {seen[key]}", first=seen[key]))
            continue
        seen[key] = i
        rendered.append(i)
    if renderer is not None and max_prompt_tokens is not None:
        for i in rendered:
            try:
                _, ids = renderer.render(rows[i][prompt_column])
            except Exception as exc:  # a template that cannot render this prompt
                problems.append(Problem(i, "overlong_prompt", f"cannot be rendered: {type(exc).__name__}: {exc}"))
                continue
            if len(ids) > max_prompt_tokens:
                problems.append(
                    Problem(
                        i,
                        "overlong_prompt",
                        f"{len(ids)} tokens as rendered, more than rollout.max_prompt_tokens={max_prompt_tokens}",
                    )
                )
    if math and answer_rows:
        for i in _unreadable_golds([str(rows[i][answer_column]) for i in answer_rows], answer_rows):
            problems.append(
                Problem(
                    i,
                    "unparseable_answer",
                    f"the math verifier cannot read the gold answer {short_repr(rows[i][answer_column])}",
                )
            )
    if code:
        problems += _failing_references(rows, tests_column, solution_column, notes if notes is not None else [])
    order = {kind: k for k, kind in enumerate(KINDS)}
    return sorted(problems, key=lambda p: (-1 if p.row is None else p.row, order[p.kind]))


def _unreadable_golds(golds: list[str], indices: list[int]) -> Iterable[int]:
    """The rows whose gold the verifier cannot use: it does not parse as an answer (nor as an
    option letter), or a completion answering exactly ``\\boxed{gold}`` would not verify."""

    selfcheck = verify_batch(golds, ["\\boxed{" + g + "}" for g in golds])
    for i, gold, ok in zip(indices, golds, selfcheck):
        if not (ok and gold_is_readable(gold)):
            yield i


def _reference_score(solution: str, tests) -> tuple[float | None, str]:

    if extract_code(solution) is None:  # a bare program, as in MBPP's `code` column
        solution = f"```python\n{solution}\n```"
    try:
        score = score_code(solution, tests)
    except ValueError as exc:
        return 0.0, f"its tests cannot be used: {exc}"
    return score, "" if score is None else f"passes {score:.0%} of its tests"


def _failing_references(rows: list[dict], tests_column: str, solution_column: str, notes: list[str]) -> list[Problem]:
    if not rows or tests_column not in rows[0]:
        return []
    coding = [i for i, row in enumerate(rows) if has_tests(row, tests_column)]
    if not coding:
        return []
    if solution_column not in rows[0]:
        notes.append(f"failing_reference: not checked, no {solution_column!r} column holds reference solutions")
        return []
    checked = [i for i in coding if not is_blank(rows[i].get(solution_column))]
    if len(checked) < len(coding):
        notes.append(
            f"failing_reference: {len(coding) - len(checked)} rows with tests have no reference solution; not checked"
        )

    level = sandbox.isolation_level()
    if level == "none":
        notes.append(
            f"failing_reference: not checked, the sandbox cannot run programs here "
            f"({sandbox.unavailable_reason()}); see rewards/sandbox.py"
        )
        return []
    with ThreadPoolExecutor(max_workers=sandbox.max_workers()) as pool:
        results = list(
            pool.map(lambda i: _reference_score(str(rows[i][solution_column]), rows[i][tests_column]), checked)
        )
    return [
        Problem(i, "failing_reference", f"the reference solution ({solution_column}) {why}")
        for i, (score, why) in zip(checked, results)
        if score is not None and score < 1.0
    ]


def math_reward_used(recipe) -> bool:
    """Whether the recipe pays by the math verifier, so every row needs a gold answer it can read."""
    return any(spec.name == "math_accuracy" for spec in recipe.rewards.funcs)


def is_conversation(prompt) -> bool:
    """Whether a prompt is TRL's conversational shape: a list of ``{"role", "content"}`` messages."""
    return (
        isinstance(prompt, (list, tuple))
        and len(prompt) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
    )


def write_rows(rows: list[dict], out: Path) -> None:
    """``rows`` as JSON lines, or Parquet when ``out`` ends in ``.parquet``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(out, index=False)
    else:
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
