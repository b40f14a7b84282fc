"""reasoning-gym's procedural tasks as a prompt source (``data.task: reasoning_gym``).

Each entry of ``data.gym`` names a reasoning-gym dataset, its mixing weight and its own config
(difficulty: digits, terms, lengths...). Rows come from reasoning-gym's composite dataset of those
tasks (the task itself when there is one). The held-out set is drawn first, ``data.num_test``
distinct questions from another seed than the run's, so it follows the task's own mix of easy and
hard questions; then ``data.num_train`` training rows from the run's seed, skipping every held-out
question, so no question is in both. (Drawing training first would leave a small task's easy
questions all in training and a held-out set of only its hard ones.) Every row carries what the ``reasoning_gym`` reward needs to score it with the
task's own ``score_answer``: the gold ``answer``, the task's name (``gym_dataset``) and the entry's
metadata as JSON (``gym_metadata``). Nothing is fetched: the tasks are generated locally.
"""

from __future__ import annotations

import json

from rlwhf.config import check_gym_names

# The held-out set's seed is the run's seed shifted by this (any fixed offset gives another stream).
HELD_OUT_SEED_OFFSET = 1_000_003


def _composite(specs, size: int, seed: int):
    import reasoning_gym
    from reasoning_gym.composite import DatasetSpec

    if len(specs) == 1:  # the task itself: no composite wrapper, same entries as create_dataset(name)
        return reasoning_gym.create_dataset(specs[0].name, size=size, seed=seed, **specs[0].config)
    return reasoning_gym.create_dataset(
        "composite",
        size=size,
        seed=seed,
        datasets=[DatasetSpec(name=s.name, weight=s.weight, config=dict(s.config)) for s in specs],
    )


def _row(entry: dict, fallback_name: str) -> dict:
    metadata = entry.get("metadata") or {}
    return {
        "prompt": entry["question"],
        "answer": str(entry["answer"]),
        "gym_dataset": metadata.get("source_dataset", fallback_name),
        "gym_metadata": json.dumps(metadata, default=str),
    }


def make_gym_rows(specs, num_train: int, num_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows of the named reasoning-gym tasks, mixed by weight.

    The held-out set is drawn first, from its own seed: ``num_test`` distinct questions, in the
    proportions the task's own generator gives. Training rows are then drawn from the run's seed,
    skipping every held-out question; a small task may repeat a training question (as epochs would),
    but never shows a held-out one."""
    check_gym_names(specs)
    fallback = specs[0].name
    size = num_test
    for _ in range(7):  # small tasks repeat questions: draw more until num_test distinct ones
        test = _distinct(_draw(specs, size, seed + HELD_OUT_SEED_OFFSET, fallback), num_test)
        if len(test) == num_test:
            break
        size *= 2
    else:
        raise ValueError(
            f"data.gym {[s.name for s in specs]}: only {len(test)} distinct questions in {size // 2} "
            f"draws; the task has too few at this difficulty for data.num_test={num_test}"
        )
    held_out = {r["prompt"] for r in test}
    size = num_train
    for _ in range(8):  # a larger draw from the same seed keeps the smaller one's rows as its prefix
        train = [r for r in _draw(specs, size, seed, fallback) if r["prompt"] not in held_out][:num_train]
        if len(train) == num_train:
            return train, test
        size *= 2
    raise ValueError(
        f"data.gym {[s.name for s in specs]}: every training draw is a held-out question; "
        "lower data.num_test or make the task larger"
    )


def _draw(specs, size: int, seed: int, fallback: str) -> list[dict]:
    return [_row(e, fallback) for e in _composite(specs, size, seed)]


def _distinct(rows: list[dict], n: int) -> list[dict]:
    return list({r["prompt"]: r for r in rows}.values())[:n] if n else []
