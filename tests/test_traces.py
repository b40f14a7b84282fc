"""rlwhf.traces: loaders and views over a real run directory, plus the pure helpers on hand-made frames."""

import json

import pandas as pd
import pytest

import rlwhf.traces as T


def _frame(**columns):
    base = {
        "step": [1, 1, 1, 1, 1],
        "prompt_index": [0, 0, 0, 0, 1],
        "sample_index": [0, 1, 2, 3, 0],
        "prompt": ["Q: 1+2=?\n"] * 4 + ["Q: 5+5=?\n"],
        "answer": ["3"] * 4 + ["10"],
        "completion": [
            "<think>1+2=3\n</think><answer>3</answer>",  # right
            "<think>1+2=4\n</think><answer>4</answer>",  # wrong
            "<think>1+2=",  # truncated
            "the answer is 3",  # bad format
            "<think>5+5=10</think><answer>10</answer>",
        ],  # reward errored
        "reward": [1.1, 0.1, 0.0, 1.0, float("nan")],
        "advantage": [1.2, -0.3, -0.6, 0.9, 0.0],
        "num_tokens": [20, 20, 32, 8, 18],
        "finish_reason": ["stop", "stop", "length", "stop", "stop"],
        "reward_math_accuracy": [1.0, 0.0, 0.0, 1.0, None],
        "reward_format": [1.0, 1.0, 0.0, 0.0, 1.0],
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_failures_labels_each_failing_row_with_the_first_kind_that_applies():
    fails = T.failures(_frame())
    assert dict(zip(fails.sample_index + 10 * fails.prompt_index, fails.failure)) == {
        1: "wrong",
        2: "truncated",
        3: "format",
        10: "reward_error",
    }
    assert set(fails.columns) >= set(_frame().columns) | {"failure"}


def test_failures_without_a_format_reward_looks_for_an_answer():
    df = _frame().drop(columns="reward_format")
    assert dict(zip(T.failures(df).sample_index + 10 * T.failures(df).prompt_index, T.failures(df).failure)) == {
        1: "wrong",
        2: "truncated",
        3: "format",
        10: "reward_error",
    }


def test_answer_span_finds_answer_tags_then_the_last_boxed():
    text = "<think>x</think><answer>42</answer>"
    a, b = T.answer_span(text)
    assert text[a:b] == "42"
    text = r"so \boxed{1} no, \boxed{\frac{1}{2}} done"
    a, b = T.answer_span(text)
    assert text[a:b] == r"\frac{1}{2}"
    assert T.answer_span("no answer here") is None
    assert T.answer_span(r"\boxed{unclosed") is None


def test_group_prompt_history_and_reward_columns():
    df = pd.concat([_frame(), _frame(step=[2] * 5)], ignore_index=True)
    assert T.reward_columns(df) == ["reward_math_accuracy", "reward_format"]
    g = T.group(df, 2, 0)
    assert list(g.sample_index) == [0, 1, 2, 3] and set(g.step) == {2}
    h = T.prompt_history(df, "Q: 5+5=?\n")
    assert list(h.step) == [1, 2]
    assert T.accuracy_column(df) == "reward_math_accuracy"
    assert T.accuracy_column(df, "format") == "reward_format"


def test_html_escapes_text_and_highlights_the_answer_by_correctness():
    df = _frame(
        completion=["<think><script>alert(1)</script> & 1+2</think><answer>3</answer>"] * 4 + ["<answer>9</answer>"]
    )
    page = T.render_group_html(T.group(df, 1, 0))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; 1+2" in page
    assert '<span class="rlwhf-ans ok">3</span>' in page  # reward_math_accuracy 1 -> green
    assert '<span class="rlwhf-ans bad">3</span>' in page  # the wrong one -> red
    assert "advantage <b>+1.200" not in page and "advantage <b>1.200</b>" in page
    assert "advantage <b>-0.300</b>" in page
    assert page._repr_html_() == page  # Jupyter renders it
    card = T.render_trace_html(df.iloc[4])
    assert "math_accuracy error" in card  # the errored reward is shown as such
    assert '<span class="rlwhf-think">&lt;think&gt;' in T.render_trace_html(df.iloc[0])


def test_expert_load_reads_the_moe_load_keys(tmp_path):
    lines = []
    for step in (1, 2, 3):
        row = {"step": step, "reward/mean": 0.5, "moe/max_load_ratio": 1.0 + step / 10}
        for layer in (0, 1):
            for expert in range(4):
                row[f"moe/load/L{layer}/E{expert}"] = [0.4, 0.3, 0.2, 0.1][expert] if layer else 0.25
        lines.append(row)
    lines.append({"step": 3, "accuracy": 0.5, "accuracy_before_rl": 0.25})  # the final eval line
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    metrics = T.load_metrics(tmp_path)
    load = T.expert_load(metrics)
    assert list(load.index) == [1, 2, 3]
    assert list(load.columns.names) == ["layer", "expert"] and load.shape == (3, 8)
    assert load[1].sum(axis=1).tolist() == pytest.approx([1.0] * 3)
    assert load.loc[2, (1, 0)] == pytest.approx(0.4)
    fig = T.plot_expert_load(metrics)
    assert len([a for a in fig.axes if a.images]) == 2  # one heat map per layer
    fig.savefig(tmp_path / "load.png")


def test_rollout_side_load_and_routing_agreement_read_their_keys(tmp_path):
    lines = []
    for step in (1, 2):
        row = {
            "step": step,
            "moe/max_load_ratio": 2.0,
            "moe/min_load_ratio": 0.1,
            "moe/rollout_max_load_ratio": 2.1,
            "moe/rollout_min_load_ratio": 0.2,
        }
        for layer in (0, 1):
            row[f"moe/routing_agreement/L{layer}"] = 0.9 + step / 100 + layer / 1000
            for expert in range(2):
                row[f"moe/rollout_load/L{layer}/E{expert}"] = 0.75 if expert else 0.25
        lines.append(row)
    metrics = pd.DataFrame(lines)
    assert T.expert_load(metrics) is None  # no trainer-side keys
    rollout = T.expert_load(metrics, side="rollout")
    assert rollout.shape == (2, 4) and rollout.loc[1, (0, 1)] == pytest.approx(0.75)
    agree = T.routing_agreement(metrics)
    assert list(agree.columns) == [0, 1] and agree.loc[2, 1] == pytest.approx(0.921)
    fig = T.plot_routing(metrics)
    left, right = [a for a in fig.axes if a.get_visible()][:2]
    assert len(left.lines) == 2 and len(right.lines) == 5  # two layers; four ratios and the line at 1
    fig.savefig(tmp_path / "routing.png")
    assert T.routing_agreement(pd.DataFrame([{"step": 1}])) is None


def test_expert_load_absent_says_so():
    metrics = pd.DataFrame([{"step": 1, "reward/mean": 0.0}])
    assert T.expert_load(metrics) is None
    fig = T.plot_expert_load(metrics)
    assert any(T.NO_EXPERT_LOAD in t.get_text() for a in fig.axes for t in a.texts)


def test_accuracy_points_put_before_rl_at_step_zero():
    metrics = pd.DataFrame(
        [
            {"step": 1, "reward/mean": 0.1},
            {"step": 2, "reward/mean": 0.2, "accuracy": 0.4},
            {"step": 2, "accuracy": 0.5, "accuracy_before_rl": 0.1},
        ]
    )
    assert T.accuracy_points(metrics).to_dict() == {0: 0.1, 2: 0.5}
    metrics["accuracy/sampled"] = [None, 0.3, 0.35]
    metrics["sampled_accuracy_before_rl"] = [None, None, 0.2]
    assert T.accuracy_points(metrics, "accuracy/sampled").to_dict() == {0: 0.2, 2: 0.35}


# ---- a real run -------------------------------------------------------------------------------


@pytest.mark.slow
def test_loaders_on_a_real_run(short_run_dir):
    df = T.load(short_run_dir)
    assert sorted(df.step.unique()) == [1, 2, 3] and len(df) == 3 * 4 * 4
    assert df[["step", "prompt_index", "sample_index"]].equals(
        df[["step", "prompt_index", "sample_index"]].sort_values(["step", "prompt_index", "sample_index"])
    )
    evals = T.load(short_run_dir, "eval")
    assert set(evals.tag) == {"eval_before", "eval_step2", "eval_after"}
    assert dict(evals.groupby("tag").step.first()) == {"eval_before": 0, "eval_step2": 2, "eval_after": 3}
    assert evals.advantage.isna().all()
    assert len(T.load(short_run_dir, "eval_after")) == 8
    with pytest.raises(FileNotFoundError, match="no eval_nope traces"):
        T.load(short_run_dir, "eval_nope")
    metrics = T.load_metrics(short_run_dir)
    assert metrics.dropna(subset=["reward/mean"]).step.tolist() == [1, 2, 3]
    summary = T.load_summary(short_run_dir)
    assert summary["steps"] == 3 and 0.0 <= summary["accuracy_after_rl"] <= 1.0
    assert T.reward_weights(short_run_dir) == {"math_accuracy": 1.0, "format": 0.1}
    acc = T.accuracy_points(metrics)
    assert list(acc.index) == [0, 2, 3]
    sampled = T.accuracy_points(metrics, "accuracy/sampled")  # 4 samples per held-out prompt by default
    assert list(sampled.index) == [0, 2, 3] and all(v in {k / 32 for k in range(33)} for v in sampled)
    assert summary["sampled_accuracy_after_rl"] == sampled[3]
    # every row is either a failure (with one kind) or right
    fails = T.failures(df)
    assert set(fails.failure) <= set(T.FAILURE_KINDS)
    assert len(fails) + int(
        (df.reward_math_accuracy.ge(1) & df.reward_format.ge(1) & df.finish_reason.ne("length")).sum()
    ) == len(df)
    history = T.prompt_history(evals, evals.prompt.iloc[0])
    assert list(history.tag) == ["eval_before", "eval_step2", "eval_after"]


@pytest.mark.slow
def test_plots_on_a_real_run(short_run_dir, tmp_path):
    df, metrics = T.load(short_run_dir), T.load_metrics(short_run_dir)
    figures = {
        "curves": T.plot_curves(metrics, T.reward_weights(short_run_dir)),
        "length": T.plot_length_vs_reward(df),
        "advantages": T.plot_advantages(df),
        "load": T.plot_expert_load(metrics),
        "group": T.plot_group(T.group(df, 2, 1)),
        "compare": T.plot_compare({"a": short_run_dir, "b": short_run_dir}),
    }
    reward_ax = figures["curves"].axes[0]
    assert [line.get_label() for line in reward_ax.lines] == ["total reward", "math_accuracy", "0.1 × format"]
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
    # drawing on the caller's axes
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    assert T.plot_advantages(df, ax=ax) is fig and ax.patches
    html = T.render_group_html(T.group(df, 3, 0))
    assert html.count('class="rlwhf-card') == 4
