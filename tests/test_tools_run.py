"""recipes/tiny-tools.yaml, shortened, through the CLI: two steps of multi-turn RL with the python tool
(vLLM, the sandbox, the reward workers, the trainer on masked episodes), then its traces, `rlwhf
inspect` and `rlwhf eval` with the tool."""

import json

import pandas as pd
import pytest
from conftest import ROOT, SHORT, run_cli

from rlwhf.traces import load, turns_of

# Every cold-start trace calls the tool (three-digit products, short enough for SHORT's turns), so the
# shortened SFT makes a model that calls it from the first step.
TOOLS_SHORT = [
    *SHORT,
    "data.direct_fraction=0",
    "data.min_digits=3",
    "data.max_digits=3",
    "sft.steps=120",
    "rollout.max_new_tokens=40",
    "eval.max_new_tokens=40",
    "train.steps=2",
    "train.eval_every=0",
]


@pytest.fixture(scope="module")
def tools_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools_run")
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-tools.yaml",
        *TOOLS_SHORT,
        "run.name=tools",
        f"run.output_dir={out}",
        cwd=out,
        paying=(),
    )
    return out / "tools"


@pytest.mark.slow
def test_a_tools_run_calls_the_python_tool_and_trains_on_the_model_tokens_only(tools_run):
    steps = [json.loads(line) for line in (tools_run / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "loss" in m]
    assert len(trained) == 2
    assert all(m["episodes/tool_use_frac"] > 0 and m["episodes/observation_tokens"] > 0 for m in trained)
    summary = json.loads((tools_run / "summary.json").read_text())
    calls = summary["tool_calls"]
    assert calls["calls"] > 0 and calls["latency_p99_s"] >= calls["latency_p50_s"] > 0
    df = load(tools_run)
    called = [turns_of(r) for r in df.to_dict("records") if r["tool_calls"] > 0]
    assert called
    for turns in called:
        observation = next(t for t in turns if t["role"] == "tool")
        assert observation["tool"] == "python" and observation["text"].startswith("```output\n")
        code = turns[0]["text"]
        if observation["status"] == "ok":  # the program the model wrote ran, and printed what Python prints
            expression = code.split("print(", 1)[1].rsplit(")", 1)[0]
            if all(c.isdigit() or c == "*" for c in expression) and expression.count("*") == 1:
                a, b = map(int, expression.split("*"))
                assert observation["text"] == f"```output\n{a * b}\n```\n"
        assert turns[-1]["role"] == "assistant"


@pytest.mark.slow
def test_inspect_and_eval_show_a_tools_run_turn_by_turn(tools_run, tmp_path):
    proc = run_cli("inspect", tools_run, cwd=tmp_path)
    assert "episodes calling a tool" in proc.stdout and "tool calls in training" in proc.stdout
    df = load(tools_run)
    k = int(df[(df["step"] == 2) & (df["tool_calls"] > 0)]["prompt_index"].iloc[0])
    proc = run_cli("inspect", tools_run, "--step", "2", "--prompt", k, cwd=tmp_path)
    assert "[python · ok" in proc.stdout and "turns" in proc.stdout
    out = tmp_path / "report.json"
    proc = run_cli("eval", tools_run, "--out", out, "--prompts", "4", cwd=tmp_path)  # the run's recipe: with the tool
    metrics = json.loads(out.read_text())["metrics"]
    assert "tool_use_frac" in proc.stdout and metrics["sampled/tool_calls"] > 0
    done = pd.read_parquet(tmp_path / "report-completions.parquet")
    assert done["tool_calls"].sum() > 0 and "turns" in done


@pytest.mark.slow
def test_the_inspect_notebook_shows_a_tools_runs_turns(tools_run):
    from test_notebooks import execute

    outputs = execute("inspect_traces.ipynb", {"RLWHF_RUN_DIR": str(tools_run)})
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "episodes calling a tool:" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert 'class="rlwhf-obs' in html and "python · ok" in html
