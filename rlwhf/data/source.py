"""Train/held-out splits for a recipe, and the prompt source with a resumable cursor."""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlwhf.config import DATA_FILE_SUFFIXES, DataConfig


@dataclass
class TaskData:
    train: list[dict]  # each: prompt, answer (+ solution for procedural tasks, + other columns)
    test: list[dict]


def load_task(cfg: DataConfig, seed: int) -> TaskData:
    """Build or read the prompts named by ``data.task``; the held-out split never overlaps training."""
    if cfg.task == "arithmetic":
        from rlwhf.data.arithmetic import make_arithmetic

        rows = make_arithmetic(cfg.num_train + cfg.num_test, seed, cfg.min_digits, cfg.max_digits, cfg.direct_fraction)
        return TaskData(rows[cfg.num_test:], rows[: cfg.num_test])
    if cfg.task == "coding":
        from rlwhf.data.coding_tasks import make_coding_tasks

        rows = make_coding_tasks(cfg.num_train + cfg.num_test, seed)
        return TaskData(rows[cfg.num_test:], rows[: cfg.num_test])
    return _load_dataset(cfg, seed)


def _load_dataset(cfg: DataConfig, seed: int) -> TaskData:
    import datasets

    def read(split: str):
        suffix = cfg.dataset.rsplit(".", 1)[-1]
        if suffix in DATA_FILE_SUFFIXES:
            builder = "json" if suffix in {"json", "jsonl"} else suffix
            return datasets.load_dataset(builder, data_files={split: cfg.dataset}, split=split)
        return datasets.load_dataset(cfg.dataset, cfg.subset, split=split)

    train = read(cfg.split)
    for column in (cfg.prompt_column, cfg.answer_column):
        if column not in train.column_names:
            raise ValueError(f"data.dataset {cfg.dataset!r} has no column {column!r}; columns: {train.column_names}")
    rename = {cfg.prompt_column: "prompt", cfg.answer_column: "answer"}
    rows = [{rename.get(k, k): v for k, v in r.items()} for r in train]
    if cfg.test_split:
        test = [{rename.get(k, k): v for k, v in r.items()} for r in read(cfg.test_split)]
        return TaskData(rows[: cfg.num_train], test[: cfg.num_test])
    random.Random(seed).shuffle(rows)
    return TaskData(rows[cfg.num_test: cfg.num_test + cfg.num_train], rows[: cfg.num_test])


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
