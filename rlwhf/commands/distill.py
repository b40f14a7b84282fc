"""``rlwhf distill``: rejection-sampling distillation, as DeepSeek distilled R1 into small dense models.

The teacher samples ``distill.samples`` chain-of-thought completions per training prompt with vLLM;
the recipe's accuracy reward keeps the verified ones (at most ``distill.keep_per_prompt`` per prompt,
the shortest or a random few); a student, smaller and of another architecture, is fine-tuned on
them with TRL's SFTTrainer (``rlwhf.train.sft.cold_start_sft``). Teacher and student are scored on
the same held-out prompts; with ``distill.baseline`` the same student is also fine-tuned on the
solver's traces of the same prompts, the cold start it would otherwise get.

A distillation writes ``<output_dir>/<name>/``: ``config.yaml``, ``distill_data.jsonl`` (the kept
completions), ``student/`` (and ``baseline/``) in Hugging Face format, and ``summary.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from rlwhf.checkpoints import prepare_run_dir, resolve_model
from rlwhf.commands.output import fmt
from rlwhf.config import Recipe
from rlwhf.data.prompts import RENDERED_KEYS, PromptRenderer, render_rows
from rlwhf.data.rows import math_reward_used, write_rows
from rlwhf.data.source import load_task
from rlwhf.evaluation import EvalPlan, local_workers, run_evaluation
from rlwhf.models.tiny import build_tiny_moe
from rlwhf.rollout import SamplingSettings
from rlwhf.rollout.sampling import sampled_chunks
from rlwhf.train.sft import cold_start_sft


def sample_verified(engine, runner, rows: list[dict], recipe: Recipe) -> tuple[list[dict], dict]:
    """The teacher's verified completions: ``distill.samples`` per prompt, scored by the recipe's
    rewards, the ones the accuracy reward scores 1 kept (at most ``distill.keep_per_prompt`` per
    prompt). Returns the kept examples (``prompt``, ``solution`` and the row's other columns) and
    counts: ``sampled``, ``verified``, ``prompts_with_one``, ``kept``."""
    d, rc = recipe.distill, recipe.rollout
    pick = random.Random(recipe.run.seed)
    kept, counts = [], {"sampled": 0, "verified": 0, "prompts_with_one": 0, "kept": 0}
    settings = SamplingSettings(
        n=d.samples, temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.max_new_tokens, seed=recipe.run.seed
    )
    for part, groups, scored in sampled_chunks(
        engine,
        runner,
        rows,
        settings,
        desc="teacher samples",
        stop_on_total_failure=recipe.rewards.stop_on_total_failure,
    ):
        accuracy = scored.per_reward[recipe.rewards.accuracy]
        for i, (row, group) in enumerate(zip(part, groups)):
            right = [
                c
                for j, c in enumerate(group.completions)
                if c.finish_reason == "stop" and (accuracy[i * d.samples + j] or 0.0) >= 1.0
            ]
            counts["sampled"] += len(group.completions)
            counts["verified"] += len(right)
            counts["prompts_with_one"] += bool(right)
            if d.select == "shortest":
                right = sorted(right, key=lambda c: len(c.token_ids))
            else:
                pick.shuffle(right)
            for c in right[: d.keep_per_prompt]:
                kept.append(
                    {
                        **{k: v for k, v in row.items() if k not in RENDERED_KEYS},
                        "solution": c.text,
                        "teacher_tokens": len(c.token_ids),
                    }
                )
    counts["kept"] = len(kept)
    return kept, counts


def student_seed(recipe: Recipe) -> int:
    return recipe.run.seed if recipe.distill.seed is None else recipe.distill.seed


def build_student(recipe: Recipe, out: Path) -> str:
    """The student's starting folder: ``distill.student_path``, or one built from ``distill.student``."""
    if recipe.distill.student_path:
        return str(resolve_model(recipe.distill.student_path))

    if not (out / "config.json").is_file():
        build_tiny_moe(out, recipe.distill.student, seed=student_seed(recipe))
    return str(out)


def evaluate_folder(model: str, recipe: Recipe, rows: list[dict]) -> dict:
    """Held-out metrics of one model folder (``rlwhf.evaluation.run_evaluation``, in this process)."""
    rendered = render_rows(rows, PromptRenderer.from_pretrained(model, recipe.data), recipe, "held-out")
    with local_workers(model, recipe) as (engine, runner):
        return run_evaluation(
            EvalPlan.of(recipe),
            engine,
            runner,
            rendered,
            recipe.rewards.accuracy,
            recipe.rewards.stop_on_total_failure,
            progress=True,
        )


def parameters(model: str) -> int:
    """Parameters of a model folder, counted from its config without loading the weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())


def distill(recipe: Recipe, say: Callable[[str], None] = print) -> dict:
    """Run a distillation (module docstring); returns its summary, also written to ``summary.json``."""
    started = time.perf_counter()
    d = recipe.distill
    if recipe.rollout.multi_turn:
        raise ValueError(
            "rlwhf distill fine-tunes a student on one-turn completions; this recipe runs multi-turn "
            "episodes (rollout.tools or rollout.environment), whose tool answers a student would learn to "
            "write itself. Distill without them (rollout.tools=[])"
        )
    try:
        teacher = str(resolve_model(d.teacher))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"distill.teacher: {exc}. The tiny recipes' teacher is the demo's run: `make demo` writes runs/tiny"
        ) from None
    run_dir = prepare_run_dir(recipe, resume=False)
    task = load_task(recipe.data, recipe.run.seed, needs_answer=math_reward_used(recipe))
    prompts, held_out = task.train[: d.num_prompts], task.test[: recipe.eval.num_prompts]
    timings = {}

    say(f"teacher {teacher}: {d.samples} samples for each of {len(prompts)} training prompts")
    t0 = time.perf_counter()
    renderer = PromptRenderer.from_pretrained(teacher, recipe.data)
    with local_workers(teacher, recipe) as (engine, runner):
        kept, counts = sample_verified(engine, runner, render_rows(prompts, renderer, recipe, "training"), recipe)
        timings["teacher_sampling_s"] = round(time.perf_counter() - t0, 1)
        say(
            f"kept {counts['kept']} verified completions ({counts['verified']} of {counts['sampled']} sampled "
            f"were right; {counts['prompts_with_one']} of {len(prompts)} prompts had one)"
        )
        say("scoring the teacher on the held-out prompts")
        teacher_metrics = run_evaluation(
            EvalPlan.of(recipe),
            engine,
            runner,
            render_rows(held_out, renderer, recipe, "held-out"),
            recipe.rewards.accuracy,
            recipe.rewards.stop_on_total_failure,
            progress=True,
        )
    if not kept:
        raise ValueError(
            f"the teacher {teacher} got none of {len(prompts)} prompts right in {d.samples} samples: "
            "nothing to distil (a stronger teacher, more distill.samples, or another data set)"
        )
    data_file = run_dir / "distill_data.jsonl"
    write_rows(kept, data_file)

    student_init = build_student(recipe, run_dir / "student_init")
    trained = {"student": kept}
    if d.baseline:
        solved = {json.dumps(row["prompt"]): row.get("solution") for row in prompts}
        baseline = [{**row, "solution": solved[json.dumps(row["prompt"])]} for row in kept]
        if not all(row["solution"] for row in baseline):
            raise ValueError(
                "distill.baseline: the training rows have no solver traces ('solution' column); "
                "set distill.baseline=false"
            )
        trained["baseline"] = baseline
    metrics = {"teacher": teacher_metrics}
    for name, examples in trained.items():
        what = "the teacher's verified completions" if name == "student" else "the solver's traces of the same prompts"
        say(f"{name}: SFT, {d.steps} steps on {len(examples)} of {what}")
        t0 = time.perf_counter()
        with tqdm(total=d.steps, desc=f"{name} SFT", unit="step", dynamic_ncols=True) as bar:

            def on_step(step: int, loss: float | None, bar=bar) -> None:
                bar.update(step - bar.n)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            cold_start_sft(
                student_init,
                examples,
                run_dir / name,
                steps=d.steps,
                batch_size=d.batch_size,
                learning_rate=d.learning_rate,
                seed=student_seed(recipe),
                on_step=on_step,
                max_length=recipe.rollout.max_prompt_tokens + recipe.rollout.max_new_tokens,
            )
        timings[f"{name}_sft_s"] = round(time.perf_counter() - t0, 1)
        say(f"scoring the {name} on the held-out prompts")
        metrics[name] = evaluate_folder(str(run_dir / name), recipe, held_out)

    summary = {
        "run_dir": str(run_dir),
        "teacher": teacher,
        "teacher_parameters": parameters(teacher),
        "student_parameters": parameters(student_init),
        "prompts": len(prompts),
        **counts,
        "held_out_prompts": len(held_out),
        "metrics": metrics,
        **timings,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict, k: int) -> None:
    """Teacher and student side by side on the held-out prompts, then what was kept and where."""

    table = Table(title=f"held-out, {summary['held_out_prompts']} prompts")
    for col in ("model", "parameters", "accuracy (greedy)", "pass@1", f"pass@{k}", f"maj@{k}", "mean tokens"):
        table.add_column(col, justify="left" if col == "model" else "right")
    sizes = {"teacher": summary["teacher_parameters"]}
    for name, m in summary["metrics"].items():
        table.add_row(
            name,
            f"{sizes.get(name, summary['student_parameters']):,}",
            fmt(m["accuracy"]),
            fmt(m.get("sampled/pass@1")),
            fmt(m.get(f"pass@{k}")),
            fmt(m.get(f"maj@{k}")),
            fmt(m["greedy/length/mean"], ".1f"),
        )
    Console(highlight=False).print(table)
    print(
        f"kept {summary['kept']} verified teacher completions from {summary['prompts']} prompts; "
        f"run directory: {summary['run_dir']} ({summary['wall_seconds']:.0f} s)"
    )
