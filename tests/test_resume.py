"""Nothing lost on a crash: a run killed with SIGKILL at any moment (sampling, updating, writing a
checkpoint) or stopped by SIGTERM resumes to exactly the metrics of a run that was never interrupted.

The crashes are real: the driver kills itself with SIGKILL where ``RLWHF_FAULT=phase@step`` says
(``rlwhf.faults.fault_point``), and SIGTERM is sent from here. Each run gets its own process session,
so that the Ray processes a killed driver leaves behind are killed with it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import SHORT, run_cli

from rlwhf.checkpoints import latest_checkpoint, rewind_run_dir

ROOT = Path(__file__).resolve().parent.parent
# The 20-step SFT model never answers right; the length reward makes groups differ, so steps update.
VARYING = (
    "rewards.funcs=[{name: math_accuracy}, {name: format, weight: 0.1}, "
    "{name: length_penalty, weight: 1.0, kwargs: {max_chars: 80}}]"
)


def start(args, cwd, fault=None) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RLWHF_FAULT", None)
    if fault:
        env["RLWHF_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "rlwhf.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout=900) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:  # what the driver's Ray left behind (its agents outlive a SIGKILLed driver)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out + err


def crash(args, cwd, fault) -> None:
    code, output = finish(start(args, cwd, fault))
    assert code == -signal.SIGKILL, f"expected the fault {fault} to kill the driver; exit {code}\n{output[-3000:]}"


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps_of(run_dir: Path) -> list[int]:
    return [m["step"] for m in metrics_of(run_dir) if "reward/mean" in m]


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Every metrics line (but wall times and rates) and every training trace equal the reference's."""
    got, want = metrics_of(resumed), metrics_of(reference)
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(got, want):
        keys = {k for k in b if not k.startswith(("time/", "tokens_per_s/"))}
        assert keys == {k for k in a if not k.startswith(("time/", "tokens_per_s/"))}, a["step"]
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key, a[key], b[key])
    for trace in sorted((reference / "traces").glob("*.parquet")):
        mine = resumed / "traces" / trace.name
        assert mine.is_file(), trace.name
        columns = ["completion", "reward", "advantage", "num_tokens"]
        pd.testing.assert_frame_equal(
            pd.read_parquet(mine)[columns], pd.read_parquet(trace)[columns], check_exact=False, rtol=1e-6
        )
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (resumed, reference))
    for key in ("accuracy_before_rl", "accuracy_after_rl", "sampled_accuracy_after_rl", "steps"):
        assert summary[key] == expected[key], key


@pytest.mark.slow
@pytest.mark.timeout(2400)  # six runs
def test_a_run_killed_at_any_moment_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    recipe = ROOT / "recipes" / "tiny-base.yaml"
    # With a KL term to a reference model that is refreshed at step 3: the reference, too, must come
    # back from the checkpoint as it was.
    common = [
        *SHORT,
        VARYING,
        "train.steps=5",
        "train.save_every=2",
        "train.eval_every=2",
        "train.learning_rate=3e-3",
        "train.warmup_steps=0",
        "algo.kl_coef=0.05",
        "algo.ref_refresh_every=3",
        "tracking.wandb=true",
        f"run.output_dir={tmp_path}",
    ]
    run_cli("train", recipe, *common, "run.name=reference", cwd=tmp_path)
    updates = [m for m in metrics_of(tmp_path / "reference") if "loss" in m]
    assert any(m["kl"] > 0 for m in updates), "the policy never moved away from its reference"
    for m in updates:  # the KL term reached the loss (token-mean aggregation, no entropy term)
        assert m["loss"] == pytest.approx(m["pg_loss"] + 0.05 * m["kl"], abs=1e-6), m
    run = tmp_path / "crashed"

    crash(["train", recipe, *common, "run.name=crashed"], tmp_path, "rollout@3")  # sampling step 3
    assert latest_checkpoint(run).name == "step_2" and steps_of(run) == [1, 2]
    crash(["train", "--resume", run], tmp_path, "update@4")  # step 3 logged after the checkpoint
    assert steps_of(run) == [1, 2, 3]
    crash(["train", "--resume", run], tmp_path, "save@4")  # while writing step_4's checkpoint
    assert (run / "checkpoints" / "step_4.tmp").is_dir(), "the save was not under way when the driver died"
    assert steps_of(run) == [1, 2, 3, 4]

    # A preemption notice: SIGTERM once the resumed run (back at step 2) has logged step 3 again.
    proc = start(["train", "--resume", run], tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and not (3 in steps_of(run) and 4 not in steps_of(run)):
        assert proc.poll() is None, finish(proc)[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code, output = finish(proc)
    assert code == 0, output[-3000:]
    assert "stopped by SIGTERM after step" in output and f"rlwhf train --resume {run}" in output
    stopped_at = steps_of(run)[-1]
    assert latest_checkpoint(run).name == f"step_{stopped_at}"
    assert not (run / "checkpoints" / "step_4.tmp").exists(), "the killed save's folder was not removed"

    run_cli("train", "--resume", run, cwd=tmp_path)
    assert_same_run(run, tmp_path / "reference")
    wandb_runs = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(wandb_runs) == 1, f"resumed runs logged to other wandb runs: {wandb_runs}"


@pytest.mark.slow
def test_an_off_policy_run_resumes_with_the_rollouts_it_had_sampled_ahead(tmp_path):
    # One-step off-policy: step t+1 is sampled by the weights before step t's update. The checkpoint
    # keeps those rollouts; sampling them again after the resume would use the updated weights.
    recipe = ROOT / "recipes" / "tiny-async.yaml"
    common = [
        *SHORT,
        VARYING,
        "train.steps=4",
        "train.save_every=2",
        "train.eval_every=0",
        "train.learning_rate=3e-3",
        "train.warmup_steps=0",
        f"run.output_dir={tmp_path}",
    ]
    run_cli("train", recipe, *common, "run.name=reference", cwd=tmp_path)
    run = tmp_path / "crashed"
    crash(["train", recipe, *common, "run.name=crashed"], tmp_path, "update@3")
    assert (latest_checkpoint(run) / "pending_rollouts.pkl").is_file()
    run_cli("train", "--resume", run, cwd=tmp_path)
    assert_same_run(run, tmp_path / "reference")


def test_rewinding_keeps_the_steps_up_to_the_checkpoint_and_drops_the_rest(tmp_path):
    lines = [
        {"step": 1, "reward/mean": 0.1},
        {"step": 2, "reward/mean": 0.2, "accuracy": 0.5},
        {"step": 3, "reward/mean": 0.3},
        {"step": 3, "accuracy": 0.7},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"step": 4, "rew')
    traces = tmp_path / "traces"
    traces.mkdir()
    names = [
        "train_step_000002.parquet",
        "train_step_000003.parquet",
        "eval_before_step_000000.parquet",
        "eval_step2_step_000002.parquet",
        "eval_after_step_000002.parquet",
        "train_step_000003.tmp",
    ]
    for name in names:
        (traces / name).write_text("x")
    (tmp_path / "summary.json").write_text("{}")
    rewind_run_dir(tmp_path, 2)
    assert metrics_of(tmp_path) == lines[:2]  # the cut-off last line of the crash is gone too
    assert sorted(p.name for p in traces.iterdir()) == sorted(names[0:1] + names[2:4])
    assert not (tmp_path / "summary.json").exists()


def test_incomplete_checkpoints_are_ignored_and_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    for name, complete in [("step_2", True), ("step_10", True), ("step_12.tmp", False), ("step_11", False)]:
        (folder / name).mkdir(parents=True)
        if complete:
            (folder / name / "loop_state.json").write_text("{}")
    # A save killed between moving the old step_20 aside and renaming the new one into place.
    (folder / "step_20.old").mkdir()
    (folder / "step_20.old" / "loop_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step_20"
    assert sorted(p.name for p in folder.iterdir()) == ["step_10", "step_11", "step_2", "step_20"]


def test_resume_refuses_a_run_with_no_checkpoint_and_a_recipe_it_would_ignore(tmp_path):
    from rlwhf.checkpoints import prepare_run_dir
    from rlwhf.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"run.output_dir={tmp_path}", "run.name=failed"])
    run = prepare_run_dir(recipe, resume=False)  # a start that failed before its first checkpoint

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "rlwhf.cli", "train", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    no_checkpoint = cli("--resume", str(run))
    assert no_checkpoint.returncode == 2 and "no checkpoint in" in no_checkpoint.stderr
    assert "run.overwrite=true" in no_checkpoint.stderr and "Traceback" not in no_checkpoint.stderr
    both = cli(str(ROOT / "recipes" / "tiny.yaml"), "--resume", str(run))
    assert both.returncode == 2 and "a resumed run keeps its own recipe" in both.stderr
    # Starting it again replaces what the failed start left (its config and logs), without asking
    (run / "logs").mkdir()
    (run / "logs" / "driver.log").write_text("Traceback ...")
    assert prepare_run_dir(recipe, resume=False) == run and not (run / "logs").exists()
    # A run that recorded steps but stopped before its first checkpoint is not replaced silently
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match="holds steps but no checkpoint to resume; set run.overwrite=true"):
        prepare_run_dir(recipe, resume=False)
    assert not (run / "checkpoints").exists()
