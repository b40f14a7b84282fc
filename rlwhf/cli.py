"""``rlwhf``: train, validate, plan, rewards, data (show, check, filter), inspect, eval, export, distill."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="GRPO post-training of MoE reasoning models, paid by automated verifiers.")

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def _fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` to stderr and exit: 2 for bad input (the default), 1 for a failed run."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _load(recipe: Optional[Path], overrides: list[str]):
    from rlwhf.config import ConfigError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def train(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the tiny CPU demo recipe)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.steps=5 run.name=foo."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run directory to continue from its last checkpoint."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or local)."),
) -> None:
    """Run a recipe: build/SFT the policy, then GRPO with automated rewards."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides.insert(0, str(recipe))  # `rlwhf train train.steps=3` with the default recipe
        recipe = None
    if resume is not None:
        config = resume / "config.yaml"
        if not config.is_file():
            _fail(f"--resume {resume}: no config.yaml there; expected a run directory made by `rlwhf train`")
        recipe = config
        overrides += [f"run.output_dir={resume.parent}", f"run.name={resume.name}"]
    elif recipe is None:
        recipe = DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None
    if address:
        overrides.append(f"ray.address={address}")
    cfg = _load(recipe, overrides)
    import ray

    from rlwhf.checkpoints import Preempted
    from rlwhf.evaluation import RewardFailed
    from rlwhf.loop import train as run_training
    from rlwhf.workers import describe_failure

    try:
        summary = run_training(cfg, resume=resume is not None)
    except Preempted as exc:
        typer.echo(f"[rlwhf] {exc}")
        raise typer.Exit(0) from None
    except RewardFailed as exc:
        _fail(str(exc), code=1)
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    except ray.exceptions.RayError as exc:
        import traceback

        log_dir = cfg.run.dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "driver.log").open("a") as f:
            traceback.print_exception(exc, file=f)
        _fail(describe_failure(exc, log_dir), code=1)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides."),
) -> None:
    """Check a recipe without running it (real-model recipes are validated here, run on GPU clusters)."""
    cfg = _load(recipe, list(overrides or []))
    from rlwhf.config import ConfigError, check_references

    try:
        check_references(cfg)
    except ConfigError as exc:
        _fail("\n".join(f"{recipe}: {line}" for line in str(exc).splitlines()))
    typer.echo(f"{recipe}: ok ({cfg.model.path}, {cfg.rollout.engine} rollouts, {cfg.train.steps} steps)")


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides."),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", help="Memory of one GPU, in GiB."),
) -> None:
    """Before anything starts: the policy's size, each device's memory (trainer, rollout engine), whether it fits."""
    cfg = _load(recipe, list(overrides or []))
    from rlwhf.plan import plan_text

    try:
        typer.echo(plan_text(cfg, gpu_memory))
    except ValueError as exc:
        _fail(f"{recipe}: {exc}")


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., help="A run directory (its last checkpoint), a checkpoint, or a model folder."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose rewards, sampling, prompt format "
                                          "and held-out split are used (default: the run's own config.yaml when "
                                          "MODEL is a run or one of its checkpoints, else the tiny demo recipe)."),
    data: Optional[str] = typer.Option(None, "--data", help="Score every row of this data set instead (a local "
                                       "jsonl/json/csv/parquet file or a Hugging Face name; the recipe's columns)."),
    split: Optional[str] = typer.Option(None, "--split", help="--data's split (default: the recipe's test_split, "
                                        "else its split)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="pass@k and maj@k at this k (default: eval.k)."),
    samples: Optional[int] = typer.Option(None, "--samples", min=0, help="Sampled completions per prompt "
                                          "(default: eval.samples, raised to k when smaller)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", min=1, help="Most prompts scored (default: eval.num_prompts)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the JSON report goes (default: "
                                       "<run.output_dir>/eval/<model>.json); the completions go beside it as Parquet."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted recipe overrides, e.g. eval.max_new_tokens=128."),
) -> None:
    """Score a model: greedy accuracy, pass@1, pass@k, maj@k, lengths, truncation and format errors, each reward."""
    if recipe is None:  # a run's own recipe: the same settings score exactly as the run's evaluations did
        recipe = next((d / "config.yaml" for d in (model, model.parent.parent) if (d / "config.yaml").is_file()),
                      DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None)
    cfg = _load(recipe, list(overrides or []))
    e = cfg.eval
    n = max(samples if samples is not None else e.samples, k or 0)
    chosen = {"samples": n, "k": k or (min(e.k, n) if n else e.k), "num_prompts": prompts or e.num_prompts}
    try:
        cfg.eval = type(e).model_validate({**e.model_dump(), **chosen})
    except ValueError as exc:
        _fail(f"--k/--samples/--prompts: {exc}")
    from rich.console import Console
    from rich.table import Table

    from rlwhf.evaluation import RewardFailed, evaluate_model, metrics_table

    try:
        report = evaluate_model(str(model), cfg, data=data, split=split)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except RewardFailed as exc:
        _fail(str(exc), code=1)
    settings, metrics = report["settings"], report["metrics"]
    label = "_".join(Path(settings["model"]).resolve().parts[-3:])
    out = out or Path(cfg.run.output_dir) / "eval" / f"{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=2))
    import pandas as pd

    completions = out.with_name(out.stem + "-completions.parquet")
    pd.DataFrame(report["completions"]).to_parquet(completions, index=False)
    console = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)
    table = Table(title=f"{settings['model']} on {settings['prompts']} prompts ({settings['data']}; recipe {recipe})")
    table.add_column("metric")
    table.add_column("greedy", justify="right")
    table.add_column(f"sampled ({settings['samples']}/prompt, T={settings['temperature']})", justify="right")
    for row in metrics_table(metrics):
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {out}\ncompletions: {completions}")


@app.command()
def distill(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a distill section, e.g. recipes/distill-tiny.yaml."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. distill.teacher=runs/other."),
) -> None:
    """Rejection-sampling distillation: the teacher's verified answers fine-tune a smaller student; both scored."""
    cfg = _load(recipe, list(overrides or []))
    from rich.console import Console
    from rich.table import Table

    from rlwhf.config import ConfigError, check_references
    from rlwhf.distill import distill as run_distill
    from rlwhf.evaluation import RewardFailed
    from rlwhf.tracking import say

    try:
        check_references(cfg)
        summary = run_distill(cfg, say=say)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    except RewardFailed as exc:
        _fail(str(exc), code=1)
    k = cfg.eval.k
    table = Table(title=f"held-out, {summary['held_out_prompts']} prompts")
    for col in ("model", "parameters", "accuracy (greedy)", "pass@1", f"pass@{k}", f"maj@{k}", "mean tokens"):
        table.add_column(col, justify="left" if col == "model" else "right")
    sizes = {"teacher": summary["teacher_parameters"]}
    for name, m in summary["metrics"].items():
        table.add_row(name, f"{sizes.get(name, summary['student_parameters']):,}", _fmt(m["accuracy"]),
                      _fmt(m.get("sampled/pass@1")), _fmt(m.get(f"pass@{k}")), _fmt(m.get(f"maj@{k}")),
                      _fmt(m["greedy/length/mean"], ".1f"))
    Console(highlight=False).print(table)
    typer.echo(f"kept {summary['kept']} verified teacher completions from {summary['prompts']} prompts; "
               f"run directory: {summary['run_dir']} ({summary['wall_seconds']:.0f} s)")


@app.command("rewards")
def list_rewards() -> None:
    """List the rewards a recipe can name."""
    import rewards

    for name in rewards.available():
        fn = rewards.get(name)
        doc = (fn.__doc__ or "").strip().splitlines()
        typer.echo(f"{name:20s} {doc[0] if doc else ''}")


data_app = typer.Typer(no_args_is_help=True, help="A recipe's prompts: show, check before a run, filter by difficulty.")
app.add_typer(data_app, name="data")


@data_app.command("show")
def data_show(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the tiny CPU demo recipe)."),
    n: int = typer.Option(3, help="Rows to show."),
) -> None:
    """Show the first prompts (and solutions) a recipe trains on."""
    cfg = _load(recipe or (DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None), [])
    from rlwhf.data.source import load_task

    task = load_task(cfg.data, cfg.run.seed)
    typer.echo(f"{len(task.train)} training rows, {len(task.test)} held-out rows")
    for row in task.train[:n]:
        typer.echo(json.dumps(row))


@data_app.command("check")
def data_check(
    source: Optional[str] = typer.Argument(None, help="A local jsonl/json/parquet/csv file or an HF dataset name "
                                           "(default: the --recipe's data.dataset)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted recipe overrides, e.g. "
                                                    "data.prompt_column=question."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose columns, tokenizer, "
                                          "rollout.max_prompt_tokens and rewards apply (default: the tiny demo recipe)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to check (default: the recipe's data.split)."),
    subset: Optional[str] = typer.Option(None, "--subset", help="The HF dataset's configuration name."),
    clean: Optional[Path] = typer.Option(None, "--clean", help="Write the rows without problems (of duplicates, "
                                         "the first) here: .jsonl or .parquet, the file's own columns."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report (every bad row) here."),
    no_code: bool = typer.Option(False, "--no-code", help="Do not run reference solutions against their tests."),
    show: int = typer.Option(5, "--show", min=0, help="Rows listed per kind of problem."),
    solution_column: str = typer.Option("solution", "--solution-column", help="Column of reference solutions."),
) -> None:
    """Check a prompt data set before a long run: missing columns, empty, duplicate or over-long prompts,
    gold answers the math verifier cannot read, reference solutions failing their tests. Exit 1 if any."""
    cfg = _load(recipe or (DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None), list(overrides or []))
    from rlwhf.config import DATA_FILE_SUFFIXES

    if source is None and cfg.data.task == "reasoning_gym":
        _check_generated(cfg, split or "train", clean, json_path, show)
    if source is None:
        if cfg.data.task != "dataset":
            _fail(f"no SOURCE given and the recipe's data.task is {cfg.data.task!r}, not 'dataset'; give a data "
                  "file or HF dataset name, or a --recipe whose data.task is dataset")
        source, subset = cfg.data.dataset, subset or cfg.data.subset
    if source.rsplit(".", 1)[-1] in DATA_FILE_SUFFIXES and not Path(source).is_file():
        _fail(f"{source}: no such file (relative paths start from {Path.cwd()}); expected a local "
              f"{'/'.join(DATA_FILE_SUFFIXES)} file or a Hugging Face dataset name")
    if clean is not None and clean.suffix not in (".jsonl", ".json", ".parquet"):
        _fail(f"--clean {clean}: expected a .jsonl or .parquet file name")
    import datasets

    from rlwhf.data.check import check_dataset, write_clean

    datasets.disable_progress_bars()
    try:
        report, table = check_dataset(source, cfg, split=split, subset=subset, code=not no_code,
                                      solution_column=solution_column)
    except Exception as exc:  # datasets: no such data set or split, a file it cannot read
        _fail(f"{source}: cannot be read: {type(exc).__name__}: {exc}")
    console = _print_data_report(report, json_path, show)
    if clean is not None:
        if any(p.kind == "missing_column" for p in report.problems):
            _fail(f"--clean {clean}: not written, a column the recipe names is missing from every row")
        kept = write_clean(table, report, clean)
        console.print(f"cleaned copy: {clean} ({kept} of {report.rows} rows)")
    raise typer.Exit(0 if report.ok else 1)


def _check_generated(cfg, split: str, clean: Optional[Path], json_path: Optional[Path], show: int) -> NoReturn:
    """``data check`` on the rows a recipe's procedural task generates; exits 0 if they are clean, else 1."""
    from rlwhf.data.check import check_generated_task

    if clean is not None:
        _fail("--clean: the recipe's task is generated (data.task reasoning_gym), there is no file to copy")
    try:
        report = check_generated_task(cfg, split)
    except ValueError as exc:
        _fail(str(exc))
    _print_data_report(report, json_path, show)
    raise typer.Exit(0 if report.ok else 1)


def _print_data_report(report, json_path: Optional[Path], show: int):
    """A data check's report on the console (and as JSON at ``json_path``); returns the console."""
    from rich.console import Console

    from rlwhf.data.check import print_report

    console = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)
    print_report(report, console, show)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2))
        console.print(f"report: {json_path}")
    return console


@data_app.command("filter")
def data_filter(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the tiny demo recipe): its training "
                                            "split, rewards, prompt format and sampling."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted recipe overrides."),
    model: Optional[Path] = typer.Option(None, "--model", help="The model that samples: a run directory, checkpoint "
                                         "or model folder (default: the recipe's run directory, e.g. runs/tiny)."),
    out: Path = typer.Option(Path("filtered.jsonl"), "--out", help="The kept rows (.jsonl or .parquet); the "
                             "histogram goes to <out>.png, the counts to <out stem>.stats.json."),
    k: int = typer.Option(8, "--k", min=1, help="Completions sampled per prompt."),
    min_rate: float = typer.Option(0.05, "--min", help="Lowest pass rate kept (drops never-solved prompts)."),
    max_rate: float = typer.Option(0.95, "--max", help="Highest pass rate kept (drops always-solved prompts)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", min=1, help="Only the first N rows."),
    data: Optional[str] = typer.Option(None, "--data", help="Filter this data set instead of the recipe's "
                                       "training split (a local file or a Hugging Face name; the recipe's columns)."),
    split: Optional[str] = typer.Option(None, "--split", help="--data's split (default: the recipe's split)."),
) -> None:
    """Keep the prompts whose pass rate under the model lies in a band: drop always- and never-solved ones."""
    cfg = _load(recipe or (DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None), list(overrides or []))
    from rlwhf.data.difficulty import filter_by_pass_rate
    from rlwhf.evaluation import RewardFailed

    try:
        stats = filter_by_pass_rate(str(model or cfg.run.dir), cfg, out, k=k, low=min_rate, high=max_rate,
                                    prompts=prompts, data=data, split=split)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except RewardFailed as exc:
        _fail(str(exc), code=1)
    bars = ", ".join(f"{float(level):.2f}: {count}" for level, count in stats["histogram"].items())
    typer.echo(f"pass rates of {stats['prompts']} prompts ({k} samples each), prompts per rate: {bars}")
    typer.echo(f"kept {stats['kept']} with a pass rate in [{min_rate}, {max_rate}]; dropped "
               f"{stats['prompts'] - stats['kept']}, of which {stats['always_solved']} always solved and "
               f"{stats['never_solved']} never solved -> {out}\n"
               f"histogram: {stats['plot']}\ntrain on it: data.task=dataset data.dataset={out}")


def _steps_text(steps) -> str:
    steps = sorted(int(s) for s in set(steps))
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}..{steps[-1]}" if len(steps) > 1 else str(steps[0])
    return ", ".join(map(str, steps))


def _fmt(value, spec: str = ".3f") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if value != value else format(value, spec)


@app.command()
def inspect(
    run_dir: Path = typer.Argument(..., help="Run directory made by `rlwhf train` (e.g. runs/tiny)."),
    step: Optional[int] = typer.Option(None, "--step", help="Show one step: its prompts, or with --prompt one group."),
    prompt: Optional[int] = typer.Option(None, "--prompt", help="Prompt index within --step: print its completions."),
    tag: str = typer.Option("train", "--tag", help="Which traces: train, eval_before, eval_after, eval_stepN."),
    every: int = typer.Option(10, "--every", min=1, help="Per-step table: every Nth step (plus first and last)."),
) -> None:
    """Summarise a run (reward, accuracy, lengths, per-step table) or print one group's completions."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from rlwhf import traces as T

    if not run_dir.is_dir():
        _fail(f"run directory {run_dir} does not exist")
    if not (run_dir / "metrics.jsonl").is_file():
        _fail(f"{run_dir}: no metrics.jsonl; expected a run directory made by `rlwhf train`")
    # Piped output (tests, `| less`) gets 120 columns unless COLUMNS says otherwise.
    console = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)
    if step is None and prompt is None:
        _inspect_summary(console, run_dir, every)
        return
    if step is None:
        _fail("--prompt needs --step N as well")
    try:
        df = T.load(run_dir, tag)
    except FileNotFoundError:
        found = sorted({p.name.split("_step_")[0] for p in (run_dir / "traces").glob("*_step_*.parquet")})
        _fail(f"{run_dir}: no {tag} traces; traces there: {', '.join(found) or 'none'}")
    if step not in set(df["step"]):
        _fail(f"step {step} not in run: steps {_steps_text(df['step'])}" + ("" if tag == "train" else f" ({tag})"))
    at_step = df[df["step"] == step]
    accuracy = T.accuracy_column(df, (T.load_config(run_dir).get("rewards") or {}).get("accuracy"))
    if prompt is None:
        table = Table(title=f"{run_dir.name}: step {step} ({tag}), {at_step['prompt_index'].nunique()} prompts")
        for col in ("prompt", "text", "gold", "mean reward", "right", "mean tokens"):
            table.add_column(col, justify="right" if col not in ("text", "gold") else "left")
        for k, g in at_step.groupby("prompt_index"):
            right = f"{int(g[accuracy].ge(1.0).sum())}/{len(g)}" if accuracy else "—"
            table.add_row(str(k), str(g["prompt"].iloc[0]).strip(), str(g["answer"].iloc[0]),
                          _fmt(g["reward"].mean()), right, _fmt(g["num_tokens"].mean(), ".1f"))
        console.print(table)
        console.print(f"[dim]see one group: rlwhf inspect {run_dir} --step {step} --prompt K[/dim]")
        return
    if prompt not in set(at_step["prompt_index"]):
        _fail(f"prompt {prompt} not at step {step}: prompts {_steps_text(at_step['prompt_index'])}")
    rows = T.group(df, step, prompt)
    first = rows.iloc[0]
    console.print(f"[bold]step {step} · prompt {prompt}[/bold] ({tag})   gold answer: [bold]{first['answer']}[/bold]")
    console.print(Text(str(first["prompt"]).rstrip(), style="cyan"))
    reward_cols = T.reward_columns(rows)
    console.print("[dim]reasoning dim; answer[/dim] [bold green]green[/bold green] [dim]= right,[/dim] "
                  "[bold red]red[/bold red] [dim]= wrong (by the accuracy reward)[/dim]")
    table = Table(show_lines=True, box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("completion", ratio=1, min_width=24, overflow="fold")
    table.add_column("reward\nadvantage", justify="right", no_wrap=True)
    table.add_column("per reward", no_wrap=True)
    table.add_column("tokens\nfinish", justify="right", no_wrap=True)
    for row in rows.to_dict("records"):
        text = str(row["completion"])
        span = T.answer_span(text)
        value = row.get(accuracy) if accuracy else None
        right = None if value is None or value != value else float(value) >= 1.0
        cell = Text()
        if span is None:
            cell.append(text, style="dim")
        else:
            a, b = span
            cell.append(text[:a], style="dim")
            cell.append(text[a:b], style={True: "bold green", False: "bold red", None: "bold"}[right])
            cell.append(text[b:], style="dim")
        per_reward = Text()
        for c in reward_cols:
            v = row[c]
            bad = v is None or v != v
            per_reward.append(f"{c[len('reward_'):]} ")
            per_reward.append("error" if bad else _fmt(v), style="red" if bad else "")
            per_reward.append("\n" if c != reward_cols[-1] else "")
        table.add_row(str(row["sample_index"]), cell, f"{_fmt(row['reward'])}\n{_fmt(row['advantage'], '+.3f')}",
                      per_reward, f"{row['num_tokens']}\n{row['finish_reason']}")
    console.print(table)


def _inspect_summary(console, run_dir: Path, every: int) -> None:
    from rich import box
    from rich.table import Table

    from rlwhf import traces as T

    metrics = T.load_metrics(run_dir)
    summary = T.load_summary(run_dir)
    rows = metrics.dropna(subset=["reward/mean"]) if "reward/mean" in metrics else metrics.iloc[0:0]
    rows = rows.drop_duplicates("step", keep="last").sort_values("step")
    if rows.empty:
        _fail(f"{run_dir}: metrics.jsonl has no training steps yet")
    acc = T.accuracy_points(metrics)
    first, last = rows.iloc[0], rows.iloc[-1]

    def pair(key: str, spec: str = ".3f") -> str:
        return f"{_fmt(first.get(key), spec)} → {_fmt(last.get(key), spec)}" if key in rows else "—"

    table = Table(title=f"run {run_dir.name}" + ("" if summary else " (unfinished: no summary.json)"),
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", f"{len(rows)} (steps {_steps_text(rows['step'])})")
    table.add_row("reward (first → last step)", pair("reward/mean"))
    for key in [c for c in rows.columns if c.startswith("reward/") and c.endswith("/mean") and c != "reward/mean"]:
        table.add_row(f"  {key.split('/')[1]}", pair(key))
    before = summary.get("accuracy_before_rl", acc.get(0))
    after = summary.get("accuracy_after_rl", acc.iloc[-1] if len(acc) else None)
    table.add_row("accuracy, greedy (before → after RL)", f"{_fmt(before)} → {_fmt(after)}")
    if "sampled_accuracy_after_rl" in summary:
        table.add_row("accuracy, sampled (before → after RL)",
                      f"{_fmt(summary.get('sampled_accuracy_before_rl'))} → {_fmt(summary['sampled_accuracy_after_rl'])}")
    for key in sorted(k.removesuffix("_after_rl") for k in summary if k.startswith(("pass@", "maj@"))
                      and k.endswith("_after_rl")):
        table.add_row(f"{key}, sampled (before → after RL)",
                      f"{_fmt(summary.get(key + '_before_rl'))} → {_fmt(summary[key + '_after_rl'])}")
    table.add_row("mean response length (first → last)", pair("response_length/mean", ".1f") + " tokens")
    if "response_length/truncated_frac" in rows:
        table.add_row("truncated fraction (first → last)", pair("response_length/truncated_frac", ".2f"))
    if "moe/max_load_ratio" in rows:
        table.add_row("expert load busiest/mean (first → last)", pair("moe/max_load_ratio", ".2f"))
        table.add_row("expert load idlest/mean (first → last)", pair("moe/min_load_ratio", ".2f"))
    if "moe/routing_agreement" in rows:
        table.add_row("trainer/rollout routing agreement (first → last)", pair("moe/routing_agreement", ".3f"))
    wall = summary.get("wall_seconds")
    table.add_row("wall time", f"{float(wall):.1f} s" if wall is not None else
                  f"{rows['time/step'].sum():.1f} s in steps" if "time/step" in rows else "—")
    console.print(table)

    shown = rows[(rows["step"] % every == 0) | (rows["step"] == first["step"]) | (rows["step"] == last["step"])]
    columns = [("reward/mean", "reward", ".3f")]
    columns += [(c, c.split("/")[1], ".3f") for c in rows.columns
                if c.startswith("reward/") and c.endswith("/mean") and c != "reward/mean"]
    columns += [("response_length/mean", "length", ".1f"), ("kl", "kl", ".4f"), ("entropy", "entropy", ".3f"),
                ("clip_fraction", "clip", ".3f"), ("time/step", "s/step", ".1f")]
    columns = [c for c in columns if c[0] in rows]
    steps = Table(title=f"per step (every {every}th, plus first and last)", box=box.SIMPLE_HEAD)
    steps.add_column("step", justify="right")
    for _, name, _ in columns:
        steps.add_column(name, justify="right")
    steps.add_column("accuracy", justify="right")
    for row in shown.to_dict("records"):
        steps.add_row(str(int(row["step"])), *(_fmt(row.get(k), spec) for k, _, spec in columns),
                      _fmt(acc.get(int(row["step"]))))
    console.print(steps)
    console.print(f"[dim]one step's prompts: rlwhf inspect {run_dir} --step {int(last['step'])}[/dim]")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (runs/NAME/checkpoints/step_N), a run directory (its "
                                      "latest complete checkpoint) or any local HF model folder."),
    out: Path = typer.Argument(..., help="The folder to write (new or empty, unless --overwrite)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Cast the saved weights: float32, bfloat16 or float16 "
                                        "(default: keep the source's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty."),
    ignore_routing_bias: bool = typer.Option(False, "--ignore-routing-bias", help="Export a moe.balance=aux_free "
                                             "checkpoint without its routing bias (its routing will differ)."),
) -> None:
    """Write a model as a plain Hugging Face folder (safetensors, config, tokenizer, generation config) for vLLM/transformers."""
    import warnings

    from transformers.utils import logging as hf_logging

    from rlwhf.export import EXPORT_INFO, export_model

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            written = export_model(checkpoint, out, dtype=dtype, overwrite=overwrite,
                                   ignore_routing_bias=ignore_routing_bias)
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            _fail(str(exc))
    for w in caught:
        if "routing bias" in str(w.message):
            typer.secho(f"warning: {w.message}", fg="yellow", err=True)
    info = json.loads((written / EXPORT_INFO).read_text())
    step = f" (step {info['step']})" if info.get("step") is not None else ""
    typer.echo(f"exported {info['source']}{step} to {written} as {info['dtype']}:")
    for f in sorted(written.iterdir()):
        typer.echo(f"  {f.name:24s} {f.stat().st_size:>12,d} bytes")
    typer.echo("load it with:")
    typer.echo(f"  vllm.LLM({str(written)!r})")
    typer.echo(f"  transformers.AutoModelForCausalLM.from_pretrained({str(written)!r})")


def main() -> None:
    app(prog_name="rlwhf")


if __name__ == "__main__":
    sys.exit(main())
