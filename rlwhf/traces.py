"""Reading a run's traces into pandas, for notebooks and ``rlwhf inspect``.

Everything here is a small pure function over a run directory's files (``metrics.jsonl``,
``summary.json``, ``config.yaml``, ``traces/*.parquet``) or over the DataFrames they load into::

    import rlwhf.traces as T
    df = T.load("runs/tiny")                      # one row per completion
    T.render_group_html(T.group(df, step=5, prompt_index=0))   # a group, side by side

Plots draw on a matplotlib ``Axes`` when given one, else on a new ``Figure`` (built without pyplot,
so they work headless, in threads and in notebooks alike) and return the figure.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = [
    "load",
    "load_metrics",
    "load_summary",
    "load_config",
    "reward_columns",
    "reward_weights",
    "accuracy_column",
    "failures",
    "group",
    "prompt_history",
    "expert_load",
    "answer_span",
    "render_trace_html",
    "render_group_html",
    "plot_curves",
    "plot_length_vs_reward",
    "plot_advantages",
    "plot_expert_load",
    "plot_group",
    "plot_compare",
    "NO_EXPERT_LOAD",
    "routing_agreement",
    "plot_routing",
]

NO_EXPERT_LOAD = "this run recorded no expert load"
FAILURE_KINDS = ("reward_error", "truncated", "format", "wrong")
_SORT = ["step", "prompt_index", "sample_index"]


# --------------------------------------------------------------------------------------------
# Loading


def reward_of(key: str) -> str | None:
    """The reward a per-reward metric is about: ``reward/<name>/mean`` gives ``name`` (a name naming a
    file, ``dir/my_rewards.py:fn``, keeps its slashes); None for any other key."""
    if not key.startswith("reward/") or key.count("/") < 2:
        return None
    return key[len("reward/") : key.rindex("/")]


def load(run_dir: str | Path, tag: str = "train") -> pd.DataFrame:
    """All traces of a run (one row per completion), sorted by step, prompt and sample.

    ``tag`` picks the files ``traces/{tag}_step_*.parquet``: ``"train"`` (the default, GRPO
    rollouts), ``"eval_before"``, ``"eval_after"``, ``"eval_step40"``, ...; ``"eval"`` loads every
    evaluation at once, with a ``tag`` column saying which one each row came from.
    """
    traces_dir = Path(run_dir) / "traces"
    if tag == "eval":
        files = sorted(traces_dir.glob("eval_*_step_*.parquet"))
    else:
        files = sorted(traces_dir.glob(f"{tag}_step_*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {tag} traces under {traces_dir}")
    frames = []
    for f in files:
        frame = pd.read_parquet(f)
        if tag == "eval":
            frame.insert(0, "tag", f.name.split("_step_")[0])
        frames.append(frame)
    keys = _SORT if tag != "eval" else ["step", "tag", "prompt_index", "sample_index"]
    return pd.concat(frames, ignore_index=True).sort_values(keys, kind="stable", ignore_index=True)


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame, one row per line (training steps, then the final eval line)."""
    path = Path(run_dir) / "metrics.jsonl"
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json as a dict (accuracy before/after RL, steps, wall seconds); ``{}`` while a run is unfinished."""
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved recipe (config.yaml) as plain data; ``{}`` when absent."""

    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def reward_columns(df: pd.DataFrame) -> list[str]:
    """The per-reward score columns of a traces frame (``reward_<name>``), in file order."""
    return [c for c in df.columns if c.startswith("reward_")]


def reward_weights(run_dir: str | Path) -> dict[str, float]:
    """``{reward name: weight}`` from the run's config.yaml (empty when it has none)."""
    funcs = (load_config(run_dir).get("rewards") or {}).get("funcs") or []
    return {f["name"]: float(f.get("weight", 1.0)) for f in funcs if isinstance(f, dict) and "name" in f}


def accuracy_column(df: pd.DataFrame, accuracy: str | None = None) -> str | None:
    """The column that says whether a completion is right.

    ``accuracy`` (a reward name or column) wins; else ``reward_math_accuracy``, ``reward_code_tests``,
    or the first reward column that is not a format or length reward; ``None`` when there is none.
    """
    columns = reward_columns(df)
    if accuracy:
        name = accuracy if accuracy.startswith("reward_") else f"reward_{accuracy}"
        return name if name in df.columns else None
    for name in ("reward_math_accuracy", "reward_code_tests"):
        if name in columns:
            return name
    rest = [c for c in columns if not any(k in c for k in ("format", "length"))]
    return rest[0] if rest else None


# --------------------------------------------------------------------------------------------
# Selecting rows

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def answer_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the final answer inside a completion: the first ``<answer>...</answer>``
    content, else the last ``\\boxed{...}`` content (braces matched); ``None`` when it has neither."""
    m = _ANSWER.search(text)
    if m:
        return m.span(1)
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, i = 0, start + len("\\boxed")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return i + 1, j
        start = text.rfind("\\boxed{", 0, start)
    return None


def failures(df: pd.DataFrame, accuracy: str | None = None) -> pd.DataFrame:
    """The rows that went wrong, with a ``failure`` column saying how (the first that applies):

    - ``reward_error``: a reward raised or timed out (its ``reward_<name>`` is NaN/None);
    - ``truncated``: generation hit the token limit (``finish_reason == "length"``);
    - ``format``: the format reward is below its maximum of 1 (or, with no format reward,
      the completion has no ``<answer>...</answer>`` / ``\\boxed{}``);
    - ``wrong``: well-formed, but the accuracy reward (see :func:`accuracy_column`) is below 1.
    """
    columns = reward_columns(df)
    error = df[columns].isna().any(axis=1) if columns else pd.Series(False, index=df.index)
    truncated = df["finish_reason"].astype(str).eq("length") if "finish_reason" in df else error & False
    if "reward_format" in df:
        bad_format = df["reward_format"].lt(1.0)
    else:
        bad_format = ~df["completion"].map(lambda c: answer_span(str(c)) is not None).astype(bool)
    acc = accuracy_column(df, accuracy)
    wrong = df[acc].lt(1.0) if acc else pd.Series(False, index=df.index)
    kind = pd.Series(pd.NA, index=df.index, dtype="object")
    for name, mask in reversed(list(zip(FAILURE_KINDS, (error, truncated, bad_format, wrong)))):
        kind = kind.mask(mask.fillna(False).astype(bool), name)
    out = df.assign(failure=kind)
    return out[out["failure"].notna()].reset_index(drop=True)


def group(df: pd.DataFrame, step: int, prompt_index: int) -> pd.DataFrame:
    """The G completions sampled for one prompt at one step (a GRPO group), by sample index."""
    rows = df[(df["step"] == step) & (df["prompt_index"] == prompt_index)]
    return rows.sort_values("sample_index", kind="stable").reset_index(drop=True)


def prompt_history(df: pd.DataFrame, prompt: str) -> pd.DataFrame:
    """Every completion for the same prompt text, across all steps (to see one problem learnt)."""
    rows = df[df["prompt"] == prompt]
    return rows.sort_values(["step", "sample_index"], kind="stable").reset_index(drop=True)


_LOAD_KEY = {side: re.compile(rf"^moe/{side}/L(\d+)/E(\d+)$") for side in ("load", "rollout_load")}
_AGREEMENT_KEY = re.compile(r"^moe/routing_agreement/L(\d+)$")


def expert_load(metrics: pd.DataFrame, side: str = "trainer") -> pd.DataFrame | None:
    """MoE routing load per step: index ``step``, columns ``(layer, expert)`` (a MultiIndex), values the
    fraction of that layer's routed token slots sent to that expert (each layer's row sums to 1), as
    the trainer routed the step's completion tokens (``side="trainer"``) or as the rollout engine did
    while sampling them (``side="rollout"``). ``None`` when the run recorded no such metrics."""
    table = _per_step(metrics, _LOAD_KEY["rollout_load" if side == "rollout" else "load"])
    if table is not None:
        table.columns = pd.MultiIndex.from_tuples(table.columns, names=["layer", "expert"])
    return table


def routing_agreement(metrics: pd.DataFrame) -> pd.DataFrame | None:
    """Per step (index) and MoE layer (columns), the share of completion tokens whose top-k experts the
    trainer and the rollout engine chose alike. ``None`` when the engine recorded no routes."""
    table = _per_step(metrics, _AGREEMENT_KEY)
    if table is not None:
        table.columns = pd.Index([c[0] for c in table.columns], name="layer")
    return table


def _per_step(metrics: pd.DataFrame, pattern: re.Pattern) -> pd.DataFrame | None:
    """The metrics whose keys ``pattern`` matches, one row per step, the columns renamed to the
    key's numbers (tuples), sorted; ``None`` when there are none."""
    keys = {c: tuple(map(int, m.groups())) for c in metrics.columns if (m := pattern.match(str(c)))}
    if not keys:
        return None
    table = metrics[["step", *keys]].dropna(subset=list(keys), how="all")
    if table.empty:
        return None
    table = table.drop_duplicates("step", keep="last").set_index("step")
    table.columns = [keys[c] for c in table.columns]
    return table[sorted(table.columns)].astype(float)


# --------------------------------------------------------------------------------------------
# HTML


class Html(str):
    """A string of HTML that Jupyter displays rendered (and ``print`` shows as source)."""

    def _repr_html_(self) -> str:
        return str(self)


_CSS = """<style>
.rlwhf-group{display:flex;flex-wrap:wrap;gap:8px;font-family:system-ui,sans-serif;font-size:13px}
.rlwhf-card{flex:1 1 260px;max-width:420px;border:1px solid #ccc;border-radius:6px;padding:6px 8px;background:#fff;color:#222}
.rlwhf-card.ok{border-left:5px solid #2a9d4b}.rlwhf-card.bad{border-left:5px solid #c0392b}
.rlwhf-head{display:flex;justify-content:space-between;gap:6px;margin-bottom:4px;font-size:12px}
.rlwhf-text{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all;margin:0}
.rlwhf-think{color:#888}
.rlwhf-ans{font-weight:bold;padding:0 2px;border-radius:3px}
.rlwhf-ans.ok{background:#d4f5dc;color:#145a2a}.rlwhf-ans.bad{background:#fbd9d3;color:#8a1f11}
.rlwhf-meta{color:#555;font-size:11px;margin-top:4px}
.rlwhf-obs{display:block;background:#eef3fb;color:#1d3b6e;border-left:3px solid #5b84c4;padding:0 4px;margin:2px 0}
.rlwhf-obs.err{background:#fbeeee;color:#6e1d1d;border-left-color:#c45b5b}
.rlwhf-obs i{color:#667;font-size:11px}
.rlwhf-prompt{font-family:ui-monospace,monospace;white-space:pre-wrap;background:#f4f4f4;padding:4px 6px;border-radius:4px}
</style>"""


def _num(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "—"
    return "error" if math.isnan(x) else f"{x:+.3f}" if x < 0 else f"{x:.3f}"


def _correct(row: Mapping[str, Any], accuracy: str | None) -> bool | None:
    if accuracy is None or accuracy not in row:
        return None
    value = row[accuracy]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value) >= 1.0


def _completion_html(text: str, correct: bool | None) -> str:
    """Reasoning muted, the answer content highlighted (green right, red wrong), all escaped."""
    span = answer_span(text)
    if span is None:
        return f'<span class="rlwhf-think">{html.escape(text)}</span>'
    a, b = span
    cls = {True: " ok", False: " bad", None: ""}[correct]
    return (
        f'<span class="rlwhf-think">{html.escape(text[:a])}</span>'
        f'<span class="rlwhf-ans{cls}">{html.escape(text[a:b])}</span>'
        f'<span class="rlwhf-think">{html.escape(text[b:])}</span>'
    )


def turns_of(row: Mapping[str, Any]) -> list[dict]:
    """A multi-turn episode's turns (``rlwhf.rollout.episodes.Turn`` as dicts: role, text, token_ids,
    tool, status, seconds), in order; [] for a single-turn completion."""
    turns = row.get("turns")
    if turns is None or (isinstance(turns, float) and math.isnan(turns)):
        return []
    return [dict(t) for t in turns]


def describe_turn(turn: Mapping[str, Any]) -> str:
    """An observation's label: who answered, how, how fast (``python · ok · 0.031 s``)."""
    parts = [str(turn.get("tool") or turn.get("role"))]
    if turn.get("status"):
        parts.append(str(turn["status"]))
    if turn.get("tool"):
        parts.append(f"{float(turn.get('seconds') or 0.0):.3f} s")
    return " · ".join(parts)


def _episode_html(turns: list[dict], correct: bool | None) -> str:
    """An episode's turns: the model's as text (its last with the answer highlighted), each tool's or
    environment's answer in a box labelled with the tool, status and time (not trained on)."""
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
    out = []
    for i, t in enumerate(turns):
        if t["role"] == "assistant":
            out.append(
                _completion_html(str(t["text"]), correct)
                if i == last
                else f'<span class="rlwhf-think">{html.escape(str(t["text"]))}</span>'
            )
        else:
            err = " err" if t.get("status") not in (None, "ok") else ""
            out.append(
                f'<span class="rlwhf-obs{err}"><i>{html.escape(describe_turn(t))}</i>\n{html.escape(str(t["text"]))}</span>'
            )
    return "".join(out)


def _card(row: Mapping[str, Any], accuracy: str | None) -> str:
    correct = _correct(row, accuracy)
    rewards = " · ".join(
        f"{html.escape(k[len('reward_') :])} {_num(row[k])}" for k in row.keys() if str(k).startswith("reward_")
    )
    failure = f" · <i>{html.escape(str(row['failure']))}</i>" if row.get("failure") else ""
    tag = f"{html.escape(str(row['tag']))} · " if row.get("tag") else ""
    head = (
        f"<b>{tag}step {row.get('step', '?')} · sample {row.get('sample_index', '?')}{failure}</b>"
        f"<span>reward <b>{_num(row.get('reward'))}</b> · advantage <b>{_num(row.get('advantage'))}</b></span>"
    )
    turns = turns_of(row)
    episode = f" · {sum(t['role'] == 'assistant' for t in turns)} turns" if turns else ""
    meta = (
        f"gold {html.escape(str(row.get('answer', '')))} · {html.escape(str(row.get('num_tokens', '?')))} tokens"
        f" · {html.escape(str(row.get('finish_reason', '')))}{episode}<br>{rewards}"
    )
    cls = {True: " ok", False: " bad", None: ""}[correct]
    body = _episode_html(turns, correct) if turns else _completion_html(str(row.get("completion", "")), correct)
    return (
        f'<div class="rlwhf-card{cls}"><div class="rlwhf-head">{head}</div>'
        f'<pre class="rlwhf-text">{body}</pre>'
        f'<div class="rlwhf-meta">{meta}</div></div>'
    )


def render_trace_html(row: Mapping[str, Any] | pd.Series, accuracy: str | None = None) -> Html:
    """One completion as an HTML card: reasoning muted and monospace, the answer highlighted
    (green when the accuracy reward is 1, red otherwise), rewards, advantage, tokens, finish reason."""
    row = dict(row)
    acc = accuracy_column(pd.DataFrame(columns=list(row)), accuracy)
    return Html(_CSS + f'<div class="rlwhf-group">{_card(row, acc)}</div>')


def render_group_html(rows: pd.DataFrame, accuracy: str | None = None) -> Html:
    """Several completions (a group, or any rows) as cards side by side, under their prompt(s)."""
    acc = accuracy_column(rows, accuracy)
    parts = [_CSS]
    for prompt, sub in rows.groupby("prompt", sort=False) if "prompt" in rows else [("", rows)]:
        parts.append(f'<div class="rlwhf-prompt">{html.escape(str(prompt))}</div>')
        parts.append('<div class="rlwhf-group">' + "".join(_card(r, acc) for r in sub.to_dict("records")) + "</div>")
    return Html("".join(parts))


# --------------------------------------------------------------------------------------------
# Plots


def _axes(ax, n: int = 1, *, figsize=(5.0, 3.5), ncols: int | None = None):
    """Return (figure, list of n axes): the caller's, or a fresh pyplot-free Figure's."""
    if ax is not None:
        axes = list(ax) if isinstance(ax, (list, tuple)) else list(getattr(ax, "flat", [ax]))
        if len(axes) < n:
            raise ValueError(f"need {n} axes, got {len(axes)}")
        return axes[0].figure, axes[:n]
    from matplotlib.figure import Figure

    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(figsize[0] * ncols, figsize[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flat
    axes = list(axes)
    for extra in axes[n:]:
        extra.set_visible(False)
    return fig, axes[:n]


def _integer_steps(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))


def _train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = metrics.dropna(subset=["reward/mean"]) if "reward/mean" in metrics else metrics.iloc[0:0]
    return rows.drop_duplicates("step", keep="last").sort_values("step")


def accuracy_points(metrics: pd.DataFrame, key: str = "accuracy") -> pd.Series:
    """Held-out accuracy by step: step 0 is before RL, then every eval the run made. ``key`` is
    ``accuracy`` (greedy) or ``accuracy/sampled`` (mean over ``eval.samples`` sampled completions)."""
    before_key = {"accuracy": "accuracy_before_rl", "accuracy/sampled": "sampled_accuracy_before_rl"}[key]
    points: dict[int, float] = {}
    if before_key in metrics:
        before = metrics[before_key].dropna()
        if len(before):
            points[0] = float(before.iloc[-1])
    if key in metrics:
        for step, value in metrics.dropna(subset=[key])[["step", key]].itertuples(index=False):
            points[int(step)] = float(value)
    return pd.Series(points, name=key, dtype=float).sort_index()


def plot_curves(metrics: pd.DataFrame, weights: Mapping[str, float] | None = None, ax=None):
    """Three panels: total reward and each reward's contribution (weight x its mean; weights from
    ``reward_weights(run_dir)``, 1 when not given), held-out accuracy points, mean response length."""
    fig, (a_reward, a_acc, a_len) = _axes(ax, 3, figsize=(4.6, 3.4))
    rows = _train_rows(metrics)
    weights = dict(weights or {})
    if len(rows):
        a_reward.plot(rows["step"], rows["reward/mean"], color="black", lw=2, label="total reward")
        for key in [c for c in rows.columns if c.startswith("reward/") and c.endswith("/mean") and reward_of(c)]:
            name = reward_of(key)
            w = weights.get(name, 1.0)
            label = f"{name}" if w == 1.0 else f"{w:g} × {name}"
            a_reward.plot(rows["step"], w * rows[key], lw=1.2, ls="--", label=label)
        a_reward.legend(fontsize=8)
    a_reward.set(title="reward per step (training samples)", xlabel="step", ylabel="mean reward")
    for key, label, color in (("accuracy", "greedy", "tab:green"), ("accuracy/sampled", "sampled", "tab:olive")):
        acc = accuracy_points(metrics, key)
        if len(acc):
            a_acc.plot(acc.index, acc.values, "o-", color=color, label=label)
            for s, v in acc.items():
                a_acc.annotate(f"{v:.2f}", (s, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if a_acc.get_legend_handles_labels()[0]:
        a_acc.legend(fontsize=8)
    a_acc.set(title="held-out accuracy", xlabel="step (0 = before RL)", ylim=(-0.05, 1.1))
    if "response_length/mean" in rows:
        a_len.plot(rows["step"], rows["response_length/mean"], color="tab:purple", label="mean")
        if "response_length/max" in rows:
            a_len.plot(rows["step"], rows["response_length/max"], color="tab:purple", ls=":", label="max")
        a_len.legend(fontsize=8)
    a_len.set(title="response length", xlabel="step", ylabel="tokens")
    _integer_steps(a_reward, a_acc, a_len)
    return fig


def plot_length_vs_reward(df: pd.DataFrame, ax=None):
    """Completion length (tokens) against total reward, one dot per completion (jittered),
    coloured by finish reason, with the mean reward per length bin."""
    import numpy as np

    fig, (a,) = _axes(ax)
    rng = np.random.default_rng(0)
    for reason, sub in df.groupby(df["finish_reason"].astype(str)):
        jitter = rng.uniform(-0.015, 0.015, len(sub)) * max(1e-9, float(df["reward"].max() - df["reward"].min()) or 1)
        a.scatter(sub["num_tokens"], sub["reward"] + jitter, s=10, alpha=0.35, label=f"finish: {reason}")
    bins = pd.cut(df["num_tokens"], bins=min(12, max(1, df["num_tokens"].nunique())))
    means = df.groupby(bins, observed=True).agg(x=("num_tokens", "mean"), y=("reward", "mean"))
    a.plot(means["x"], means["y"], "k-", lw=1.5, label="mean per bin")
    a.set(title="length vs reward", xlabel="completion tokens", ylabel="reward")
    a.legend(fontsize=8)
    return fig


def plot_advantages(df: pd.DataFrame, ax=None, accuracy: str | None = None):
    """Histogram of GRPO advantages, split into right and wrong completions when that is known."""
    fig, (a,) = _axes(ax)
    adv = df["advantage"].astype(float)
    acc = accuracy_column(df, accuracy)
    lo, hi = (float(adv.min()), float(adv.max())) if adv.notna().any() else (-1.0, 1.0)
    bins = 40 if hi > lo else 3
    if acc:
        ok = df[acc].ge(1.0)
        a.hist(
            [adv[ok].dropna(), adv[~ok].dropna()],
            bins=bins,
            stacked=True,
            color=["tab:green", "tab:red"],
            label=["right", "wrong"],
        )
        a.legend(fontsize=8)
    else:
        a.hist(adv.dropna(), bins=bins)
    zero = float((adv.abs() < 1e-8).mean()) if len(adv) else 0.0
    a.set(title=f"advantages ({zero:.0%} exactly zero: no signal)", xlabel="advantage", ylabel="completions")
    return fig


def plot_expert_load(metrics: pd.DataFrame, ax=None, side: str = "trainer"):
    """Per-layer heat map of MoE routing load (x: step, y: expert, colour: share of the layer's
    routed slots), on the trainer's side or the rollout engine's (``side``). A run without those
    metrics gets a figure that says so."""
    load_ = expert_load(metrics, side)
    if load_ is None:
        fig, (a,) = _axes(ax, figsize=(6, 1.2))
        a.axis("off")
        a.text(0.5, 0.5, NO_EXPERT_LOAD, ha="center", va="center", fontsize=12, color="#666")
        return fig
    layers = sorted(load_.columns.get_level_values("layer").unique())
    fig, axes = _axes(ax, len(layers), figsize=(4.2, 3.0), ncols=min(4, len(layers)))
    vmax = float(load_.max().max()) or 1.0
    image = None
    for a, layer in zip(axes, layers):
        table = load_[layer]
        steps = table.index.to_numpy()
        image = a.imshow(
            table.to_numpy().T,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
            extent=(steps.min() - 0.5, steps.max() + 0.5, -0.5, table.shape[1] - 0.5),
        )
        a.set(title=f"layer {layer} (uniform = 1/{table.shape[1]})", xlabel="step", ylabel="expert")
        a.set_yticks(range(table.shape[1]), [str(e) for e in table.columns])
    fig.colorbar(image, ax=axes, label="share of routed tokens", shrink=0.8)
    ratio = "moe/rollout_max_load_ratio" if side == "rollout" else "moe/max_load_ratio"
    if ratio in metrics:
        fig.suptitle(f"{side} expert load; busiest/mean last step {metrics[ratio].dropna().iloc[-1]:.2f}", fontsize=10)
    return fig


def plot_routing(metrics: pd.DataFrame, ax=None):
    """Two panels: the trainer/rollout routing agreement per layer over the steps, and the busiest
    and idlest expert's load over the mean (``moe/max_load_ratio``, ``moe/min_load_ratio``) on each
    side. A run without routing metrics gets a figure that says so."""
    agree = routing_agreement(metrics)
    ratios = [
        c
        for c in (
            "moe/max_load_ratio",
            "moe/min_load_ratio",
            "moe/rollout_max_load_ratio",
            "moe/rollout_min_load_ratio",
        )
        if c in metrics
    ]
    if agree is None and not ratios:
        fig, (a,) = _axes(ax, figsize=(6, 1.2))
        a.axis("off")
        a.text(0.5, 0.5, NO_EXPERT_LOAD, ha="center", va="center", fontsize=12, color="#666")
        return fig
    fig, (left, right) = _axes(ax, 2, figsize=(5.0, 3.5))
    if agree is not None:
        for layer in agree.columns:
            left.plot(agree.index, agree[layer], label=f"layer {layer}")
        left.legend(fontsize=8)
    left.set(title="trainer/rollout routing agreement", xlabel="step", ylabel="tokens with the same top-k")
    rows = metrics.dropna(subset=ratios, how="all") if ratios else metrics
    for column in ratios:
        right.plot(
            rows["step"],
            rows[column],
            label=column.removeprefix("moe/"),
            linestyle="--" if "rollout" in column else "-",
        )
    right.axhline(1.0, color="#999", linewidth=0.8)
    right.set(title="expert load over the mean", xlabel="step", ylabel="load / mean load")
    right.legend(fontsize=8)
    return fig


def _wrap(text: str, width: int) -> list[str]:
    out = []
    for line in text.split("\n"):
        out += [line[i : i + width] for i in range(0, max(len(line), 1), width)]
    return out


def plot_group(rows: pd.DataFrame, accuracy: str | None = None, width: int = 46, ax=None):
    """A group rendered as a figure (for docs/reports): one column per completion, reasoning in grey
    monospace, the extracted answer green (right) or red (wrong), rewards and advantage below."""
    from matplotlib.patches import Rectangle

    if rows.empty:
        raise ValueError("plot_group: no rows to draw")
    acc = accuracy_column(rows, accuracy)
    records = rows.to_dict("records")
    ncols = min(4, max(1, len(records)))
    wrapped = [_wrap(str(r.get("completion", "")), width) for r in records]
    height = max((len(w) for w in wrapped), default=1) + 6
    fig, axes = _axes(ax, len(records), figsize=(width * 0.085, 0.16 * height + 0.3), ncols=ncols)
    if "prompt" in rows and len(records):
        step = records[0].get("step", "?")
        fig.suptitle(
            f"step {step} — prompt: {str(records[0]['prompt']).strip()!s}  (gold {records[0].get('answer', '?')}; green = right, red = wrong)",
            fontsize=11,
            family="monospace",
        )
    for a, r, lines in zip(axes, records, wrapped):
        a.set_axis_off()
        correct = _correct(r, acc)
        colour = {True: "#2a9d4b", False: "#c0392b", None: "#444"}[correct]
        text = str(r.get("completion", ""))
        span = answer_span(text)
        answer = text[span[0] : span[1]] if span else "(no answer)"
        a.add_patch(Rectangle((0, 0), 1, 1, transform=a.transAxes, fill=False, ec=colour, lw=2))
        a.text(
            0.03,
            0.98,
            f"sample {r.get('sample_index', '?')}",
            transform=a.transAxes,
            va="top",
            fontsize=9,
            weight="bold",
        )
        a.text(
            0.03, 0.90, "\n".join(lines), transform=a.transAxes, va="top", family="monospace", fontsize=8, color="#777"
        )
        rewards = "  ".join(f"{k[len('reward_') :]} {_num(r[k])}" for k in r if str(k).startswith("reward_"))
        a.text(
            0.03,
            0.03,
            f"answer: {answer}\nreward {_num(r.get('reward'))}   advantage {_num(r.get('advantage'))}\n"
            f"{rewards}\n{r.get('num_tokens', '?')} tokens, {r.get('finish_reason', '')}",
            transform=a.transAxes,
            va="bottom",
            family="monospace",
            fontsize=8,
            color=colour,
        )
    return fig


def plot_compare(runs: Mapping[str, str | Path], ax=None):
    """Several runs side by side: reward curves overlaid, accuracy before/after RL as bars,
    mean response length overlaid. ``runs`` maps a label to a run directory."""
    import numpy as np

    fig, (a_reward, a_acc, a_len) = _axes(ax, 3, figsize=(4.6, 3.4))
    names = list(runs)
    before, after = [], []
    for name in names:
        metrics = load_metrics(runs[name])
        rows = _train_rows(metrics)
        if len(rows):
            a_reward.plot(rows["step"], rows["reward/mean"], label=name)
            if "response_length/mean" in rows:
                a_len.plot(rows["step"], rows["response_length/mean"], label=name)
        summary = load_summary(runs[name])
        acc = accuracy_points(metrics)
        before.append(summary.get("accuracy_before_rl", acc.get(0, float("nan"))))
        after.append(summary.get("accuracy_after_rl", acc.iloc[-1] if len(acc) else float("nan")))
    x = np.arange(len(names))
    a_acc.bar(x - 0.2, before, 0.4, label="before RL", color="#bbb")
    bars = a_acc.bar(x + 0.2, after, 0.4, label="after RL", color="tab:green")
    a_acc.bar_label(bars, fmt="%.2f", fontsize=8)
    a_acc.set_xticks(x, names, rotation=20, ha="right")
    a_acc.set(title="held-out accuracy", ylim=(0, 1.1))
    a_reward.set(title="reward per step", xlabel="step", ylabel="mean reward")
    a_len.set(title="mean response length", xlabel="step", ylabel="tokens")
    for a in (a_reward, a_acc, a_len):
        a.legend(fontsize=8)
    _integer_steps(a_reward, a_len)
    return fig
