"""Train/held-out splits for a recipe, and the prompt source with a resumable cursor."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlwhf.config import DATA_FILE_SUFFIXES, DataConfig
from rlwhf.data.arithmetic import make_arithmetic
from rlwhf.data.coding_tasks import make_coding_tasks
from rlwhf.data.gym import make_gym_rows
from rlwhf.data.rows import CHEAP_KINDS, check_rows, math_reward_used


@dataclass
class TaskData:
    train: list[dict]  # each: prompt, answer (+ solution for procedural tasks, + other columns)
    test: list[dict]
    dropped: dict[str, int] = field(default_factory=dict)  # task=dataset: bad rows dropped, by kind


def load_task(cfg: DataConfig, seed: int, *, needs_answer: bool = True) -> TaskData:
    """Build or read the prompts named by ``data.task``; the held-out split never overlaps training.

    A data set's bad rows (``rlwhf.data.rows.CHEAP_KINDS``; a blank gold answer only when
    ``needs_answer``, i.e. a math reward scores it) are dropped and counted in ``dropped``, or
    refused, as ``data.bad_rows`` says."""
    if cfg.task == "arithmetic":
        rows = make_arithmetic(
            cfg.num_train + cfg.num_test, seed, cfg.min_digits, cfg.max_digits, cfg.direct_fraction, cfg.operation
        )
        return TaskData(rows[cfg.num_test :], rows[: cfg.num_test])
    if cfg.task == "coding":
        rows = make_coding_tasks(cfg.num_train + cfg.num_test, seed)
        return TaskData(rows[cfg.num_test :], rows[: cfg.num_test])
    if cfg.task == "reasoning_gym":
        return TaskData(*make_gym_rows(cfg.gym, cfg.num_train, cfg.num_test, seed))
    return _load_dataset(cfg, seed, needs_answer)


def read_table(dataset: str, subset: str | None, split: str):
    """One split of a local data file (json, jsonl, csv, parquet) or an HF data set, as a ``datasets.Dataset``."""
    import datasets

    suffix = dataset.rsplit(".", 1)[-1]
    local = Path(dataset).expanduser()
    if local.is_file() and suffix not in DATA_FILE_SUFFIXES:  # not a Hub name: do not ask the Hub for it
        raise ValueError(
            f"data.dataset {dataset!r} is a file of a kind rlwhf does not read: expected "
            + ", ".join(f".{s}" for s in DATA_FILE_SUFFIXES)
        )
    if suffix in DATA_FILE_SUFFIXES and local.is_file() and not local.read_bytes()[:65536].strip():
        raise ValueError(f"data.dataset {dataset!r} is empty: expected rows with the recipe's columns")
    try:
        if suffix in DATA_FILE_SUFFIXES:
            builder = "json" if suffix in {"json", "jsonl"} else suffix
            return datasets.load_dataset(builder, data_files={split: dataset}, split=split)
        return datasets.load_dataset(dataset, subset, split=split)
    except Exception as exc:  # an empty, malformed or non-UTF-8 file; no such data set or split
        what = f"a {suffix} file" if suffix in DATA_FILE_SUFFIXES else "a Hugging Face data set"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"data.dataset {dataset!r} cannot be read as {what}: {type(exc).__name__}: {first}") from exc


def table_rows(table, dataset: str) -> list[dict]:
    """The rows of a table ``read_table`` gave, as dicts; a file whose text is not UTF-8 is refused by name."""
    try:
        return table.to_list()
    except UnicodeDecodeError as exc:
        raise ValueError(f"data.dataset {dataset!r} is not UTF-8 text ({exc}); save it as UTF-8") from None


def read_split(cfg: DataConfig, split: str, *, needs_answer: bool = True, dropped: Counter | None = None) -> list[dict]:
    """Every row of one split of ``data.dataset``, its prompt and answer columns renamed ``prompt``
    and ``answer`` as the recipe maps them; bad rows (``rlwhf.data.rows.CHEAP_KINDS``) dropped
    and counted in ``dropped`` by kind, or refused, as ``data.bad_rows`` says."""

    table = read_table(cfg.dataset, cfg.subset, split)
    for column in (cfg.prompt_column, cfg.answer_column):
        if column not in table.column_names:
            raise ValueError(f"data.dataset {cfg.dataset!r} has no column {column!r}; columns: {table.column_names}")
    rows = table_rows(table, cfg.dataset)
    bad: dict[int, str] = {}
    for problem in check_rows(
        rows, prompt_column=cfg.prompt_column, answer_column=cfg.answer_column, needs_answer=needs_answer
    ):
        if cfg.bad_rows == "error":
            raise ValueError(
                f"data.dataset {cfg.dataset!r} ({split} split) row {problem.row}: "
                f"{problem.kind}: {problem.reason} (rows numbered from 0 in file order). "
                f"`rlwhf data check {cfg.dataset}` lists every bad row; "
                "data.bad_rows=drop drops them instead"
            )
        bad.setdefault(problem.row, problem.kind)  # a row counts once, as its first problem
    if dropped is not None:
        dropped.update(bad.values())
    rename = {cfg.prompt_column: "prompt", cfg.answer_column: "answer"}
    return [{rename.get(k, k): v for k, v in r.items()} for i, r in enumerate(rows) if i not in bad]


def _load_dataset(cfg: DataConfig, seed: int, needs_answer: bool = True) -> TaskData:

    dropped: Counter = Counter()
    rows = read_split(cfg, cfg.split, needs_answer=needs_answer, dropped=dropped)
    test = read_split(cfg, cfg.test_split, needs_answer=needs_answer, dropped=dropped) if cfg.test_split else None
    counts = {kind: dropped[kind] for kind in CHEAP_KINDS if dropped[kind]}
    if test is not None:
        return TaskData(rows[: cfg.num_train], test[: cfg.num_test], counts)
    random.Random(seed).shuffle(rows)
    return TaskData(rows[cfg.num_test : cfg.num_test + cfg.num_train], rows[: cfg.num_test], counts)


class PromptSource:
    """Yields training rows in a seeded order, epoch after epoch; ``cursor`` resumes it exactly."""

    def __init__(self, rows: list[dict], seed: int, cursor: int = 0):
        if not rows:
            raise ValueError("the training split is empty")
        self.rows, self.seed, self.cursor = rows, seed, cursor

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[dict]:
        batch = []
        while len(batch) < size:
            epoch, pos = divmod(self.cursor, len(self.rows))
            batch.append(self.rows[self._order(epoch)[pos]])
            self.cursor += 1
        return batch


def rows_to_score(recipe, which: str, data: str | None = None, split: str | None = None) -> tuple[list[dict], str]:
    """The rows a command outside training samples from, and their description: the recipe's
    ``which`` split (``train`` or ``test``: held-out), or every row of ``data`` (a local file or a
    Hugging Face data set, read with the recipe's column mapping; ``split`` by default the recipe's
    test_split for ``test``, else its split)."""

    needs_answer = math_reward_used(recipe)
    if data is None:
        task = load_task(recipe.data, recipe.run.seed, needs_answer=needs_answer)
        return (
            (task.train, "the recipe's training split")
            if which == "train"
            else (task.test, "the recipe's held-out split")
        )
    cfg = recipe.data.model_copy(update={"task": "dataset", "dataset": data})
    default = (cfg.test_split or cfg.split) if which == "test" else cfg.split
    return read_split(cfg, split or default, needs_answer=needs_answer), data
