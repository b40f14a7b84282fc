"""``rlwhf``: train, eval, rewards, inspect, data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="GRPO post-training of MoE reasoning models, paid by automated verifiers.")

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


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
    from rlwhf.loop import train as run_training

    try:
        summary = run_training(cfg, resume=resume is not None)
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides."),
) -> None:
    """Check a recipe without running it (real-model recipes are validated here, run on GPU clusters)."""
    cfg = _load(recipe, list(overrides or []))
    import rewards

    for spec in cfg.rewards.funcs:
        try:
            rewards.get(spec.name)
        except KeyError as exc:
            _fail(f"{recipe}: rewards.funcs: {exc}")
    typer.echo(f"{recipe}: ok ({cfg.model.path}, {cfg.rollout.engine} rollouts, {cfg.train.steps} steps)")


@app.command("rewards")
def list_rewards() -> None:
    """List the rewards a recipe can name."""
    import rewards

    for name in rewards.available():
        fn = rewards.get(name)
        doc = (fn.__doc__ or "").strip().splitlines()
        typer.echo(f"{name:20s} {doc[0] if doc else ''}")


@app.command()
def data(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML."),
    n: int = typer.Option(3, help="Rows to show."),
) -> None:
    """Show the first prompts (and solutions) a recipe trains on."""
    cfg = _load(recipe or (DEFAULT_RECIPE if DEFAULT_RECIPE.exists() else None), [])
    from rlwhf.data.source import load_task

    task = load_task(cfg.data, cfg.run.seed)
    typer.echo(f"{len(task.train)} training rows, {len(task.test)} held-out rows")
    for row in task.train[:n]:
        typer.echo(json.dumps(row))


def main() -> None:
    app(prog_name="rlwhf")


if __name__ == "__main__":
    sys.exit(main())
