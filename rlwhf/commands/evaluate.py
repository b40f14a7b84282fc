"""``rlwhf eval``: a model scored on a recipe's held-out split or on any data set, as a run's own
evaluations score (the same settings give the same numbers), with a report and the completions."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from rlwhf.checkpoints import resolve_model
from rlwhf.commands import output
from rlwhf.data.prompts import PromptRenderer, render_rows
from rlwhf.data.source import rows_to_score
from rlwhf.evaluation import EvalPlan, local_workers, run_evaluation
from rlwhf.rollout.sampling import trace_rows


def with_eval_settings(recipe, k: int | None, samples: int | None, prompts: int | None):
    """The recipe with ``eval`` changed as ``--k``, ``--samples`` and ``--prompts`` ask (samples raised
    to k when fewer)."""
    e = recipe.eval
    n = max(samples if samples is not None else e.samples, k or 0)
    chosen = {"samples": n, "k": k or (min(e.k, n) if n else e.k), "num_prompts": prompts or e.num_prompts}
    try:
        recipe.eval = type(e).model_validate({**e.model_dump(), **chosen})
    except ValueError as exc:
        raise ValueError(f"--k/--samples/--prompts: {exc}") from None
    return recipe


def evaluate(
    model: Path, recipe, recipe_path, *, data: str | None = None, split: str | None = None, out: Path | None = None
) -> Path:
    """Score ``model``, print the table, write the report (JSON) and the completions (Parquet) beside
    it; returns the report's path (default ``<run.output_dir>/eval/<model>.json``)."""
    import pandas as pd

    report = evaluate_model(str(model), recipe, data=data, split=split)
    settings, metrics = report["settings"], report["metrics"]
    label = "_".join(Path(settings["model"]).resolve().parts[-3:])
    out = out or Path(recipe.run.output_dir) / "eval" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=2))
    completions = out.with_name(out.stem + "-completions.parquet")
    pd.DataFrame(report["completions"]).to_parquet(completions, index=False)
    table = Table(
        title=f"{settings['model']} on {settings['prompts']} prompts ({settings['data']}; recipe {recipe_path})"
    )
    table.add_column("metric")
    table.add_column("greedy", justify="right")
    table.add_column(f"sampled ({settings['samples']}/prompt, T={settings['temperature']})", justify="right")
    for row in metrics_table(metrics):
        table.add_row(*row)
    console = output.console()
    console.print(table)
    console.print(f"report: {out}\ncompletions: {completions}")
    return out


def evaluate_model(model: str, recipe, *, data: str | None = None, split: str | None = None) -> dict:
    """``rlwhf eval``: score a model (a run directory, a checkpoint or a model folder) on the recipe's
    held-out split or on ``data``, with a vLLM engine (``rollout.engine``) and the recipe's rewards,
    both in this process. Returns the report (``metrics``, ``settings``, the completions as trace
    rows under ``completions``)."""
    path = str(resolve_model(model))
    rows, described = rows_to_score(recipe, "test", data, split)
    rows = render_rows(rows, PromptRenderer.from_pretrained(path, recipe.data), recipe, "evaluation")
    plan = EvalPlan.of(recipe)
    completions: list[dict] = []

    def keep(kind, rows, groups, scored):
        for row in trace_rows(0, rows, groups, scored.per_reward, scored.total):
            completions.append({"decoding": kind, **row})

    with local_workers(path, recipe) as (engine, runner):
        metrics = run_evaluation(
            plan,
            engine,
            runner,
            rows,
            recipe.rewards.accuracy,
            recipe.rewards.stop_on_total_failure,
            on_traces=keep,
            progress=True,
        )
    settings = {
        "model": path,
        "data": described,
        "prompts": min(plan.num_prompts, len(rows)),
        "samples": plan.samples,
        "k": plan.k,
        "temperature": plan.temperature,
        "top_p": plan.top_p,
        "max_new_tokens": plan.max_new_tokens,
        "engine": recipe.rollout.engine,
        "accuracy_reward": recipe.rewards.accuracy,
    }
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
