"""``rlwhf data filter``: keep the prompts the current model sometimes, but not always, solves.

A GRPO group whose completions all score the same has zero advantage and teaches nothing; DAPO's
dynamic sampling drops such groups and samples again, paying for the rollouts it throws away.
Filtering the data set once, before the run, by each prompt's pass rate under the starting model
removes the prompts it always or never solves, so fewer groups are wasted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlwhf.checkpoints import resolve_model
from rlwhf.config import Recipe
from rlwhf.data.prompts import RENDERED_KEYS, PromptRenderer, render_rows
from rlwhf.data.rows import write_rows
from rlwhf.data.source import rows_to_score
from rlwhf.evaluation import local_workers
from rlwhf.rollout import SamplingSettings
from rlwhf.rollout.sampling import sampled_chunks


def pass_rates(engine, runner, rows: list[dict], recipe: Recipe, k: int) -> list[float]:
    """Each row's fraction of ``k`` completions (at the rollout temperature) that the recipe's
    accuracy reward scores 1."""
    rc = recipe.rollout
    settings = SamplingSettings(
        n=k, temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.max_new_tokens, seed=recipe.run.seed
    )
    rates = []
    for _, groups, scored in sampled_chunks(
        engine, runner, rows, settings, desc="pass rates", stop_on_total_failure=recipe.rewards.stop_on_total_failure
    ):
        right = np.array([(s or 0.0) >= 1.0 for s in scored.per_reward[recipe.rewards.accuracy]], dtype=float)
        rates.extend(right.reshape(len(groups), k).mean(axis=1).tolist())
    return rates


def plot_histogram(rates: list[float], k: int, low: float, high: float, out: Path, title: str) -> None:
    """A bar per possible pass rate (0, 1/k, ..., 1), the kept band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.arange(k + 1) / k
    counts = [int(np.isclose(rates, level).sum()) for level in levels]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = ["tab:blue" if low <= level <= high else "tab:gray" for level in levels]
    ax.bar(levels, counts, width=0.8 / k, color=colors)
    ax.axvspan(low - 0.4 / k, high + 0.4 / k, color="tab:blue", alpha=0.08, label="kept")
    ax.set_xlabel(f"pass rate ({k} samples per prompt)")
    ax.set_ylabel("prompts")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def filter_by_pass_rate(
    model: str,
    recipe: Recipe,
    out: Path,
    *,
    k: int = 8,
    low: float = 0.05,
    high: float = 0.95,
    prompts: int | None = None,
    data: str | None = None,
    split: str | None = None,
) -> dict:
    """Sample ``k`` completions per training prompt (the recipe's training split, or ``data``) with
    ``model``, keep the rows whose pass rate lies in ``[low, high]`` and write them to ``out`` (their
    columns as read, plus ``pass_rate``); a histogram beside it (``<out>.png``) and the counts
    (``<out stem>.stats.json``). Returns the counts."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"pass-rate band [{low}, {high}]: expected 0 <= low <= high <= 1")
    path = str(resolve_model(model))
    rows, described = rows_to_score(recipe, "train", data, split)
    rows = rows[:prompts] if prompts else rows
    rendered = render_rows(rows, PromptRenderer.from_pretrained(path, recipe.data), recipe, "filtered")
    with local_workers(path, recipe) as (engine, runner):
        rates = pass_rates(engine, runner, rendered, recipe, k)
    kept = [
        {**{key: v for key, v in row.items() if key not in RENDERED_KEYS}, "pass_rate": rate}
        for row, rate in zip(rendered, rates)
        if low <= rate <= high
    ]
    write_rows(kept, out)
    histogram = {f"{level:.3f}": int(np.isclose(rates, level).sum()) for level in np.arange(k + 1) / k}
    stats = {
        "model": path,
        "data": described,
        "k": k,
        "band": [low, high],
        "prompts": len(rendered),
        "kept": len(kept),
        "never_solved": int(sum(r == 0.0 for r in rates)),
        "always_solved": int(sum(r == 1.0 for r in rates)),
        "mean_pass_rate": float(np.mean(rates)),
        "histogram": histogram,
        "out": str(out),
        "plot": str(out.with_suffix(".png")),
    }
    stats_file = out.with_name(out.stem + ".stats.json")
    plot_histogram(
        rates, k, low, high, out.with_suffix(".png"), f"{Path(path).name}: {len(kept)} of {len(rendered)} prompts kept"
    )
    stats_file.write_text(json.dumps(stats, indent=2))
    return stats


def stats_text(stats: dict, k: int, low: float, high: float, out: Path) -> str:
    """What ``rlwhf data filter`` prints: the pass-rate histogram, what was kept, and how to train on it."""
    bars = ", ".join(f"{float(level):.2f}: {count}" for level, count in stats["histogram"].items())
    return (
        f"pass rates of {stats['prompts']} prompts ({k} samples each), prompts per rate: {bars}\n"
        f"kept {stats['kept']} with a pass rate in [{low}, {high}]; dropped "
        f"{stats['prompts'] - stats['kept']}, of which {stats['always_solved']} always solved and "
        f"{stats['never_solved']} never solved -> {out}\n"
        f"histogram: {stats['plot']}\ntrain on it: data.task=dataset data.dataset={out}"
    )
