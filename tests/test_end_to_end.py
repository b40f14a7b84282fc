"""A short real run through the CLI: Ray actors, vLLM rollouts, rewards in processes, GRPO updates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHORT
from conftest import run_cli as rlwhf

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_writes_the_run_directory_contract_and_resumes(tmp_path):
    # The base recipe is plain GRPO: every step keeps all of its groups, so the counts below are exact.
    run_dir = tmp_path / "runs" / "e2e"
    rlwhf(
        "train",
        str(ROOT / "recipes" / "tiny-base.yaml"),
        *SHORT,
        "train.steps=2",
        "run.name=e2e",
        f"run.output_dir={tmp_path / 'runs'}",
        "tracking.wandb=true",
        cwd=tmp_path,
    )

    assert (run_dir / "config.yaml").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for key in (
        "reward/mean",
        "reward/math_accuracy/mean",
        "reward/format/mean",
        "response_length/mean",
        "loss",
        "kl",
        "clip_fraction",
        "entropy",
        "time/rollout",
        "time/train",
        "time/sync",
    ):
        assert key in steps[0], key
    assert "accuracy" in metrics[-1]

    from rlwhf.traces import load

    traces = load(run_dir)
    assert len(traces) == 2 * 4 * 4
    for column in (
        "step",
        "prompt",
        "completion",
        "reward_math_accuracy",
        "reward_format",
        "reward",
        "advantage",
        "num_tokens",
        "finish_reason",
    ):
        assert column in traces.columns, column
    # GRPO advantages are zero-mean within each prompt group.
    group_means = traces.groupby(["step", "prompt_index"])["advantage"].mean()
    assert group_means.abs().max() < 1e-4

    ckpt = run_dir / "checkpoints" / "step_2"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt", "loop_state.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "loop_state.json").read_text())["cursor"] == 2 * 4

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["accuracy_after_rl"] <= 1.0
    assert "accuracy_before_rl" in summary and summary["wall_seconds"] > 0
    for key in ("sampled_accuracy_before_rl", "sampled_accuracy_after_rl"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert "accuracy/sampled" in metrics[-1]
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline, "wandb wrote no offline run"
    # The run's record log holds every logged key (protobuf strings) and the sampled-trace table.
    log = offline[0].read_bytes()
    for key in (b"reward/mean", b"reward/math_accuracy/mean", b"loss", b"moe/max_load_ratio", b"traces"):
        assert key in log, key

    # The trace notebook runs headless against this run and draws its figures.
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "inspect_traces.ipynb", as_version=4)
    os.environ["RLWHF_RUN_DIR"] = str(run_dir)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["RLWHF_RUN_DIR"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("32 completions over 2 steps" in o.get("text", "") for o in outputs)

    # Resume: continues from step 2 to step 3, appending to the same metrics.
    rlwhf("train", "--resume", str(run_dir), "train.steps=3", cwd=tmp_path)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward/mean" in m] == [1, 2, 3]
    assert json.loads((run_dir / "checkpoints" / "step_3" / "loop_state.json").read_text())["cursor"] == 3 * 4


def test_train_refuses_a_bad_recipe_with_a_readable_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "train", str(ROOT / "recipes" / "tiny.yaml"), "train.steps=many"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "train.steps = 'many': expected an integer" in proc.stderr


@pytest.mark.slow
def test_code_recipe_runs_grpo_with_the_sandboxed_code_reward(tmp_path, sandbox):
    # The recipe's own prompt lengths and seeded sampling (its first evaluation used to die in vLLM's
    # chunked prefill on CPU); fewer and shorter steps.
    rlwhf(
        "train",
        str(ROOT / "recipes" / "tiny-code.yaml"),
        "train.steps=1",
        "sft.steps=10",
        "data.num_train=64",
        "data.num_test=4",
        "eval.num_prompts=4",
        "train.prompts_per_step=2",
        "rollout.group_size=4",
        "train.minibatch_size=8",
        f"run.output_dir={tmp_path}",
        cwd=tmp_path,
        paying=(),
    )
    from rewards.code import code_tests
    from rlwhf.data.coding_tasks import make_coding_tasks
    from rlwhf.traces import load

    traces = load(tmp_path / "tiny-code")
    assert len(traces) == 2 * 4
    assert traces["reward_code_tests"].between(0.0, 1.0).all()
    summary = json.loads((tmp_path / "tiny-code" / "summary.json").read_text())
    assert summary["steps"] == 1
    # The scores are the sandbox's verdicts, not a blocked sandbox's zeros: the same reward pays the
    # reference programs of the very prompts the run sampled in full.
    tasks = {t["prompt"]: t for t in make_coding_tasks(64 + 4, 0)}
    traced = [tasks[p] for p in traces["prompt"].unique()]
    assert code_tests(
        [t["solution"] for t in traced], prompts=[t["prompt"] for t in traced], tests=[t["tests"] for t in traced]
    ) == [1.0] * len(traced)


@pytest.mark.slow
def test_a_reward_that_fails_on_every_group_stops_the_run_with_its_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlwhf.cli",
            "train",
            str(ROOT / "recipes" / "tiny-base.yaml"),
            *SHORT,
            "sft.enabled=false",
            "rewards.funcs=[{name: math_accuracy}, {name: 'misbehaving_rewards:raises'}]",
            f"run.output_dir={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        "error: reward 'misbehaving_rewards:raises' failed on all 8 groups; the first: reward "
        "'misbehaving_rewards:raises' on group 0: error: RuntimeError: this reward always fails"
    ) in proc.stderr
