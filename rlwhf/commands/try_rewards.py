"""``rlwhf rewards try`` and the reward check of ``rlwhf validate``: each reward of a recipe called in
this process on real rows of its data, exactly as a run calls it (the prompt, the completions in the
prompt's shape, the data's other columns, the recipe's kwargs), its return value checked as the reward
runner checks it. A reward that raises or returns the wrong shape is caught here, in seconds, instead
of failing every group of a run's first step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from rich.table import Table

import rewards
from rlwhf.commands import output
from rlwhf.config import DATA_FILE_SUFFIXES, Recipe, RewardSpec
from rlwhf.data.source import load_task
from rlwhf.reward_runner import checked_scores
from rlwhf.rollout.sampling import as_reward_completions, columns_of


@dataclass
class Trial:
    """One reward called on one row's completions: the scores, or why it failed."""

    reward: str
    row: int
    completions: list[str]
    scores: list | None
    error: str | None


def sample_rows(recipe: Recipe, count: int, data: str | None = None) -> list[dict] | None:
    """The first ``count`` training rows of the recipe's data (or of ``data``, a local file with the
    recipe's columns); None where the data is a Hub name, which is not read here."""
    cfg = recipe.data
    if data is not None:
        cfg = cfg.model_copy(update={"task": "dataset", "dataset": data, "test_split": None, "num_test": 0})
    if cfg.task == "dataset":
        if not cfg.dataset or cfg.dataset.rsplit(".", 1)[-1] not in DATA_FILE_SUFFIXES:
            return None
    else:  # a procedural task: a few rows are enough
        cfg = cfg.model_copy(update={"num_train": count, "num_test": 1})
    return load_task(cfg, recipe.run.seed, needs_answer=False).train[:count]


def sample_completions(recipe: Recipe, row: dict) -> list[str]:
    """Completions to try a reward on: the gold answer in the format the recipe's prompt asks for,
    the same answer in the other format, and an empty completion."""
    answer = str(row.get("answer", "")).strip() or "42"
    boxed = f"The answer is \\boxed{{{answer}}}."
    tagged = f"<think>Working it out.</think><answer>{answer}</answer>"
    return [boxed, tagged, ""] if recipe.data.asks_for_boxed else [tagged, boxed, ""]


def try_reward(spec, row: dict, texts: list[str], index: int) -> Trial:
    """``spec``'s reward on ``texts`` as completions of ``row``'s prompt, called as a run calls it."""
    completions = as_reward_completions(row["prompt"], texts)
    columns = {**{k: [v] * len(texts) for k, v in columns_of(row).items()}, **copy.deepcopy(spec.kwargs)}
    try:
        fn = rewards.get(spec.name)
        scores = checked_scores(fn(completions, prompts=[row["prompt"]] * len(texts), **columns), len(texts))
        return Trial(spec.name, index, texts, scores, None)
    except Exception as exc:
        return Trial(spec.name, index, texts, None, rewards.error_line(exc))


def reward_problems(recipe: Recipe, recipe_path="RECIPE") -> tuple[list[str], str]:
    """``validate``'s check: every reward called once on the first training row. The problems, one
    line each naming the reward, and a note on what was tried."""
    rows = sample_rows(recipe, 1)
    if not rows:
        return [], "rewards not tried: data.dataset is not a local file"
    problems = []
    for i, spec in enumerate(recipe.rewards.funcs):
        trial = try_reward(spec, rows[0], sample_completions(recipe, rows[0]), 0)
        if trial.error is not None:
            problems.append(
                f"rewards.funcs[{i}] = {spec.name!r}: called on the first training row it fails: {trial.error}; "
                f"`rlwhf rewards try {spec.name} --recipe {recipe_path}` calls it on more rows"
            )
    count = len(recipe.rewards.funcs)
    return problems, f"{count} reward{'s' if count != 1 else ''} tried on a training row"


def print_trials(recipe: Recipe, names: list[str], rows: list[dict], texts: list[str] | None) -> list[str]:
    """``rlwhf rewards try``: a table of each reward's score of each completion of each row; the
    failed calls, one line each."""

    specs = {s.name: s for s in recipe.rewards.funcs}
    chosen = [specs.get(name) or _spec(name) for name in names] or list(recipe.rewards.funcs)
    table = Table("row", "prompt", "completion", *[s.name for s in chosen], show_lines=False)
    failed = []
    for index, row in enumerate(rows):
        completions = texts or sample_completions(recipe, row)
        trials = [try_reward(spec, row, completions, index) for spec in chosen]
        failed += [f"reward {t.reward!r} on row {index}: {t.error}" for t in trials if t.error is not None]
        for k, text in enumerate(completions):
            cells = ["failed" if t.error is not None else output.fmt(t.scores[k]) for t in trials]
            prompt = _short(rewards.text_of(row["prompt"])) if k == 0 else ""
            table.add_row(str(index) if k == 0 else "", prompt, _short(text) or "(empty)", *cells)
    output.console().print(table)
    return failed


def _spec(name: str):

    return RewardSpec(name=name)


def _short(text: str, width: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
