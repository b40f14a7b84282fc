"""The trace notebooks run headless against a real run, and `rlwhf inspect` reads it from the shell."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def execute(name: str, env: dict[str, str]):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{name}: outputs not cleared"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()  # raises on a cell error
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.mark.slow
def test_inspect_traces_notebook_draws_every_view_and_saves_docs_figures(short_run_dir, tmp_path):
    docs = tmp_path / "docs"
    outputs = execute("inspect_traces.ipynb", {"RLWHF_RUN_DIR": str(short_run_dir), "RLWHF_DOCS_DIR": str(docs)})
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "48 completions over 3 steps" in text
    assert "32 (layer, expert) loads over 3 steps" in text  # the policy recorded its 4 x 8 expert loads
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 4  # curves, length vs reward, advantages, expert load
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count('class="rlwhf-card') >= 4  # a group side by side, as cards
    for name in ("curves.png", "trace_view.png"):
        assert (docs / name).stat().st_size > 10_000, name


@pytest.mark.slow
def test_compare_runs_notebook_overlays_two_runs(short_run_dir, tmp_path):
    outputs = execute("compare_runs.ipynb", {"RLWHF_RUN_DIRS": f"{short_run_dir},{short_run_dir}"})
    assert not [o for o in outputs if o.output_type == "error"]
    assert "2 runs: ['short', 'short#2']" in "".join(o.get("text", "") for o in outputs)
    assert [o for o in outputs if "image/png" in o.get("data", {})]
    assert "accuracy after RL" in "".join(o.get("data", {}).get("text/html", "") for o in outputs)


def inspect(*args):
    return subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "inspect", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "150"},
    )


@pytest.mark.slow
def test_inspect_summary(short_run_dir):
    proc = inspect(short_run_dir)
    assert proc.returncode == 0, proc.stderr
    for text in (
        "3 (steps 1..3)",
        "reward (first → last step)",
        "accuracy, greedy (before → after RL)",
        "accuracy, sampled (before → after RL)",
        "mean response length",
        "wall time",
        "math_accuracy",
        "per step",
    ):
        assert text in proc.stdout, text


@pytest.mark.slow
def test_inspect_one_step_and_one_group(short_run_dir):
    proc = inspect(short_run_dir, "--step", 2)
    assert proc.returncode == 0, proc.stderr
    assert "step 2 (train), 4 prompts" in proc.stdout
    proc = inspect(short_run_dir, "--step", 2, "--prompt", 1)
    assert proc.returncode == 0, proc.stderr
    import rlwhf.traces as T

    group = T.group(T.load(short_run_dir), 2, 1)
    assert f"gold answer: {group.answer[0]}" in proc.stdout
    assert proc.stdout.count("math_accuracy ") == 4 and "advantage" in proc.stdout
    assert group.completion[0].splitlines()[0][:20] in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--step", 7], "step 7 not in run: steps 1..3"),
        (["--step", 2, "--prompt", 9], "prompt 9 not at step 2: prompts 0..3"),
        (["--prompt", 1], "--prompt needs --step"),
        (
            ["--tag", "eval_nope", "--step", 1],
            "no eval_nope traces; traces there: eval_after, eval_before, eval_step2, train",
        ),
    ],
)
def test_inspect_refuses_bad_input_naming_what_exists(short_run_dir, args, message):
    proc = inspect(short_run_dir, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_inspect_refuses_a_missing_run_dir(tmp_path):
    proc = inspect(tmp_path / "nope")
    assert proc.returncode == 2 and f"run directory {tmp_path / 'nope'} does not exist" in proc.stderr
    proc = inspect(tmp_path)
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr
