"""``rlwhf inspect``: a run summarised (reward, accuracy, lengths, a per-step table), one step's
prompts, or one group's completions with the answer coloured by the accuracy reward."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from rlwhf import traces as T
from rlwhf.commands import output
from rlwhf.commands.output import fmt, steps_text


def inspect_run(
    run_dir: Path, step: int | None = None, prompt: int | None = None, tag: str = "train", every: int = 10
) -> None:
    """Print a run's summary, or with ``step`` its prompts, or with ``step`` and ``prompt`` that group."""
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    if not (run_dir / "metrics.jsonl").is_file():
        raise ValueError(f"{run_dir}: no metrics.jsonl; expected a run directory made by `rlwhf train`")
    console = output.console()
    if step is None and prompt is None:
        summarise_run(console, run_dir, every)
        return
    if step is None:
        raise ValueError("--prompt needs --step N as well")
    try:
        df = T.load(run_dir, tag)
    except FileNotFoundError:
        found = sorted({p.name.split("_step_")[0] for p in (run_dir / "traces").glob("*_step_*.parquet")})
        raise ValueError(f"{run_dir}: no {tag} traces; traces there: {', '.join(found) or 'none'}") from None
    if step not in set(df["step"]):
        raise ValueError(
            f"step {step} not in run: steps {steps_text(df['step'])}" + ("" if tag == "train" else f" ({tag})")
        )
    at_step = df[df["step"] == step]
    accuracy = T.accuracy_column(df, (T.load_config(run_dir).get("rewards") or {}).get("accuracy"))
    if prompt is None:
        table = Table(title=f"{run_dir.name}: step {step} ({tag}), {at_step['prompt_index'].nunique()} prompts")
        for col in ("prompt", "text", "gold", "mean reward", "right", "mean tokens"):
            table.add_column(col, justify="right" if col not in ("text", "gold") else "left")
        for k, g in at_step.groupby("prompt_index"):
            right = f"{int(g[accuracy].ge(1.0).sum())}/{len(g)}" if accuracy else "—"
            table.add_row(
                str(k),
                str(g["prompt"].iloc[0]).strip(),
                str(g["answer"].iloc[0]),
                fmt(g["reward"].mean()),
                right,
                fmt(g["num_tokens"].mean(), ".1f"),
            )
        console.print(table)
        console.print(f"[dim]see one group: rlwhf inspect {run_dir} --step {step} --prompt K[/dim]")
        return
    if prompt not in set(at_step["prompt_index"]):
        raise ValueError(f"prompt {prompt} not at step {step}: prompts {steps_text(at_step['prompt_index'])}")
    rows = T.group(df, step, prompt)
    first = rows.iloc[0]
    console.print(f"[bold]step {step} · prompt {prompt}[/bold] ({tag})   gold answer: [bold]{first['answer']}[/bold]")
    console.print(Text(str(first["prompt"]).rstrip(), style="cyan"))
    reward_cols = T.reward_columns(rows)
    console.print(
        "[dim]reasoning dim; answer[/dim] [bold green]green[/bold green] [dim]= right,[/dim] "
        "[bold red]red[/bold red] [dim]= wrong (by the accuracy reward)[/dim]"
    )
    table = Table(show_lines=True, box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("completion", ratio=1, min_width=24, overflow="fold")
    table.add_column("reward\nadvantage", justify="right", no_wrap=True)
    table.add_column("per reward", no_wrap=True)
    table.add_column("tokens\nfinish", justify="right", no_wrap=True)
    for row in rows.to_dict("records"):
        value = row.get(accuracy) if accuracy else None
        right = None if value is None or value != value else float(value) >= 1.0
        cell = Text()
        turns = T.turns_of(row)
        if not turns:
            _append_answer(cell, str(row["completion"]), right)
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
        for i, turn in enumerate(turns):
            if turn["role"] == "assistant":
                if i == last:
                    _append_answer(cell, str(turn["text"]), right)
                else:
                    cell.append(str(turn["text"]), style="dim")
            else:  # an observation: not the model's, not trained on
                failed = turn.get("status") not in (None, "ok")
                cell.append(f"[{T.describe_turn(turn)}]\n", style="bold red" if failed else "bold blue")
                cell.append(str(turn["text"]), style="red" if failed else "blue")
        per_reward = Text()
        for c in reward_cols:
            v = row[c]
            bad = v is None or v != v
            per_reward.append(f"{c[len('reward_') :]} ")
            per_reward.append("error" if bad else fmt(v), style="red" if bad else "")
            per_reward.append("\n" if c != reward_cols[-1] else "")
        table.add_row(
            str(row["sample_index"]),
            cell,
            f"{fmt(row['reward'])}\n{fmt(row['advantage'], '+.3f')}",
            per_reward,
            f"{row['num_tokens']}\n{row['finish_reason']}"
            + (f"\n{sum(t['role'] == 'assistant' for t in turns)} turns" if turns else ""),
        )
    console.print(table)


def _append_answer(cell: Text, text: str, right: bool | None) -> None:
    """``text`` dim, its answer coloured green (right), red (wrong) or bold (not scored)."""
    span = T.answer_span(text)
    if span is None:
        cell.append(text, style="dim")
        return
    a, b = span
    cell.append(text[:a], style="dim")
    cell.append(text[a:b], style={True: "bold green", False: "bold red", None: "bold"}[right])
    cell.append(text[b:], style="dim")


def summarise_run(console, run_dir: Path, every: int) -> None:
    """Reward, accuracy before and after, lengths, MoE load and time, then a per-step table."""
    metrics = T.load_metrics(run_dir)
    summary = T.load_summary(run_dir)
    rows = metrics.dropna(subset=["reward/mean"]) if "reward/mean" in metrics else metrics.iloc[0:0]
    rows = rows.drop_duplicates("step", keep="last").sort_values("step")
    if rows.empty:
        raise ValueError(f"{run_dir}: metrics.jsonl has no training steps yet")
    acc = T.accuracy_points(metrics)
    first, last = rows.iloc[0], rows.iloc[-1]

    def pair(key: str, spec: str = ".3f") -> str:
        return f"{fmt(first.get(key), spec)} → {fmt(last.get(key), spec)}" if key in rows else "—"

    table = Table(
        title=f"run {run_dir.name}" + ("" if summary else " (unfinished: no summary.json)"), show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", f"{len(rows)} (steps {steps_text(rows['step'])})")
    table.add_row("reward (first → last step)", pair("reward/mean"))
    for key in [c for c in rows.columns if c.startswith("reward/") and c.endswith("/mean") and c != "reward/mean"]:
        table.add_row(f"  {T.reward_of(key)}", pair(key))
    before = summary.get("accuracy_before_rl", acc.get(0))
    after = summary.get("accuracy_after_rl", acc.iloc[-1] if len(acc) else None)
    table.add_row("accuracy, greedy (before → after RL)", f"{fmt(before)} → {fmt(after)}")
    if "sampled_accuracy_after_rl" in summary:
        table.add_row(
            "accuracy, sampled (before → after RL)",
            f"{fmt(summary.get('sampled_accuracy_before_rl'))} → {fmt(summary['sampled_accuracy_after_rl'])}",
        )
    for key in sorted(
        k.removesuffix("_after_rl") for k in summary if k.startswith(("pass@", "maj@")) and k.endswith("_after_rl")
    ):
        table.add_row(
            f"{key}, sampled (before → after RL)",
            f"{fmt(summary.get(key + '_before_rl'))} → {fmt(summary[key + '_after_rl'])}",
        )
    table.add_row("mean response length (first → last)", pair("response_length/mean", ".1f") + " tokens")
    if "response_length/truncated_frac" in rows:
        table.add_row("truncated fraction (first → last)", pair("response_length/truncated_frac", ".2f"))
    if "episodes/tool_use_frac" in rows:
        table.add_row("episodes calling a tool (first → last)", pair("episodes/tool_use_frac", ".2f"))
        table.add_row("model turns per episode (first → last)", pair("episodes/turns", ".2f"))
        calls = summary.get("tool_calls") or {}
        if calls.get("calls"):
            table.add_row(
                "tool calls in training",
                f"{calls['calls']}, {calls['errors']} failed; latency p50 {calls['latency_p50_s'] * 1000:.0f} ms, "
                f"p99 {calls['latency_p99_s'] * 1000:.0f} ms",
            )
    if "moe/max_load_ratio" in rows:
        table.add_row("expert load busiest/mean (first → last)", pair("moe/max_load_ratio", ".2f"))
        table.add_row("expert load idlest/mean (first → last)", pair("moe/min_load_ratio", ".2f"))
    if "moe/routing_agreement" in rows:
        table.add_row("trainer/rollout routing agreement (first → last)", pair("moe/routing_agreement", ".3f"))
    wall = summary.get("wall_seconds")
    table.add_row(
        "wall time",
        f"{float(wall):.1f} s"
        if wall is not None
        else f"{rows['time/step'].sum():.1f} s in steps"
        if "time/step" in rows
        else "—",
    )
    console.print(table)

    shown = rows[(rows["step"] % every == 0) | (rows["step"] == first["step"]) | (rows["step"] == last["step"])]
    columns = [("reward/mean", "reward", ".3f")]
    columns += [
        (c, T.reward_of(c), ".3f")
        for c in rows.columns
        if c.startswith("reward/") and c.endswith("/mean") and c != "reward/mean"
    ]
    columns += [
        ("response_length/mean", "length", ".1f"),
        ("kl", "kl", ".4f"),
        ("entropy", "entropy", ".3f"),
        ("clip_fraction", "clip", ".3f"),
        ("time/step", "s/step", ".1f"),
    ]
    columns = [c for c in columns if c[0] in rows]
    steps = Table(title=f"per step (every {every}th, plus first and last)", box=box.SIMPLE_HEAD)
    steps.add_column("step", justify="right")
    for _, name, _ in columns:
        steps.add_column(name, justify="right")
    steps.add_column("accuracy", justify="right")
    for row in shown.to_dict("records"):
        steps.add_row(
            str(int(row["step"])), *(fmt(row.get(k), spec) for k, _, spec in columns), fmt(acc.get(int(row["step"])))
        )
    console.print(steps)
    console.print(f"[dim]one step's prompts: rlwhf inspect {run_dir} --step {int(last['step'])}[/dim]")
