"""`rlwhf eval` and the evaluation metrics the loop and the command share."""

import json

import pandas as pd
import pytest

from rlwhf.evaluation import completion_metrics, final_answer, majority_index
from rlwhf.rollout.base import Completion, Group
from rlwhf.rollout.sampling import Scored

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _group(texts, finish=None, tokens=None):
    finish = finish or ["stop"] * len(texts)
    tokens = tokens or [len(t) for t in texts]
    return Group("p", [1], [Completion(t, [0] * n, [0.0] * n, f) for t, f, n in zip(texts, finish, tokens)])


def _scored(per_reward):
    total = [sum(v[i] or 0.0 for v in per_reward.values()) for i in range(len(next(iter(per_reward.values()))))]
    return Scored(per_reward, total, {}, [], 0.0)


def test_final_answer_needs_a_committed_answer_not_a_stray_number():
    assert final_answer("<think>3+4</think><answer>7</answer>", "math") == "7"
    assert final_answer("so it is \\boxed{\\frac{1}{2}}", "math") == "\\frac{1}{2}"
    assert final_answer("I think 7 maybe", "math") is None
    assert final_answer("```python\nprint(1)\n```", "code") == "print(1)"
    assert final_answer("print(1)", "code") is None


def test_majority_groups_equivalent_answers_with_the_math_verifier():
    # 1/2, 0.5 and 2/4 are one answer (3 votes) against 3 (2 votes); the set's first member is index 1
    assert majority_index(["3", "1/2", "0.5", "3", "\\frac{2}{4}"], "math") == 1
    assert majority_index(["3", None, "4", None], "math") == 0  # a tie goes to the answer seen first
    assert majority_index([None, None], "math") is None
    assert majority_index(["a", "b", "b"], "code") == 1


def test_completion_metrics_by_hand():
    # prompt 1: 4 samples, 1 right (index 2); its majority answer 5 (indices 0, 1) is wrong
    # prompt 2: 4 samples, 3 right; its majority answer is right; one truncated without an answer
    groups = [
        _group(["<answer>5</answer>", "<answer>5.0</answer>", "<answer>6</answer>", "<answer>7</answer>"]),
        _group(
            ["<answer>9</answer>", "<answer>9</answer>", "<answer>9</answer>", "nine and"],
            finish=["stop", "stop", "stop", "length"],
            tokens=[10, 10, 10, 30],
        ),
    ]
    acc = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    fmt = [1.0] * 7 + [None]
    m = completion_metrics(groups, _scored({"math_accuracy": acc, "format": fmt}), "math_accuracy", k=2)
    assert m["accuracy"] == pytest.approx(0.5) and m["pass@1"] == pytest.approx(0.5)
    # pass@2 = mean(1 - C(3,2)/C(4,2), 1 - C(1,2)/C(4,2)) = mean(0.5, 1.0)
    assert m["pass@2"] == pytest.approx(0.75)
    # maj@2 takes the first two samples: prompt 1's are 5 and 5.0 (one answer, wrong), prompt 2's 9 (right)
    assert m["maj@2"] == pytest.approx(0.5)
    assert m["truncated_frac"] == pytest.approx(1 / 8) and m["format_error_frac"] == pytest.approx(1 / 8)
    assert m["reward/format/mean"] == pytest.approx(1.0)  # a None score is left out of the mean
    with pytest.raises(ValueError, match="pass@5 needs at least 5"):
        completion_metrics(groups, _scored({"math_accuracy": acc}), "math_accuracy", k=5)


def test_eval_k_may_not_exceed_the_samples():
    from rlwhf.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match=r"eval.*k \(8\) must be at most samples \(4\)"):
        load_recipe(None, ["eval.k=8", "eval.samples=4"])
    assert load_recipe(None, ["eval.k=8", "eval.samples=0"]).eval.k == 8  # greedy only: k unused


@pytest.mark.slow
def test_eval_command_scores_a_run_as_its_own_evaluation_did_and_its_numbers_match_its_completions(
    short_run_dir, tmp_path
):
    from conftest import run_cli

    out = tmp_path / "report.json"
    proc = run_cli("eval", short_run_dir, "--out", out, cwd=tmp_path)  # the run's own recipe (config.yaml)
    assert "pass@4" in proc.stdout and "maj@4" in proc.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["model"].endswith("checkpoints/step_3")  # the run's newest checkpoint
    m, summary = report["metrics"], json.loads((short_run_dir / "summary.json").read_text())
    # in chunks under progress bars, in this process, from the checkpoint: what the run measured at its end
    assert (m["accuracy"], m["accuracy/sampled"], m["pass@4"], m["maj@4"]) == (
        summary["accuracy_after_rl"],
        summary["sampled_accuracy_after_rl"],
        summary["pass@4_after_rl"],
        summary["maj@4_after_rl"],
    )
    done = pd.read_parquet(tmp_path / "report-completions.parquet")
    greedy, sampled = done[done["decoding"] == "greedy"], done[done["decoding"] == "sampled"]
    assert len(greedy) == 8 and len(sampled) == 32 and report["settings"]["prompts"] == 8
    assert m["accuracy"] == pytest.approx(greedy["reward_math_accuracy"].mean())
    assert m["sampled/pass@1"] == pytest.approx((sampled["reward_math_accuracy"] >= 1).mean())
    assert m["sampled/length/mean"] == pytest.approx(sampled["num_tokens"].mean())
    assert m["sampled/truncated_frac"] == pytest.approx((sampled["finish_reason"] == "length").mean())
    # --data scores every row of a file, as the recipe maps its columns; --k raises the samples to k
    rows = [{"question": f"Q: {a}+{b}=?\n", "gold": str(a + b)} for a, b in [(12, 30), (41, 7), (3, 99)]]
    data = tmp_path / "extra.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli(
        "eval",
        short_run_dir / "checkpoints" / "step_3",
        "--recipe",
        ROOT / "recipes" / "tiny-base.yaml",
        "--data",
        data,
        "--k",
        "3",
        "--samples",
        "2",
        "--out",
        tmp_path / "extra.json",
        "data.prompt_column=question",
        "data.answer_column=gold",
        "rollout.max_new_tokens=32",
        "eval.max_new_tokens=32",
        cwd=tmp_path,
    )
    extra = json.loads((tmp_path / "extra.json").read_text())
    assert extra["settings"]["prompts"] == 3 and extra["settings"]["samples"] == 3 and "maj@3" in extra["metrics"]
    assert len(pd.read_parquet(tmp_path / "extra-completions.parquet")) == 3 + 9


def test_eval_command_names_a_bad_model_path(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "eval", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "nope: no such file or directory" in proc.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "eval", str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and "without a complete checkpoint" in proc.stderr


@pytest.mark.slow
def test_distill_keeps_only_verified_teacher_answers_and_scores_a_smaller_dense_student(short_run_dir, tmp_path):
    from conftest import run_cli

    from rewards.math import verify

    proc = run_cli(
        "distill",
        ROOT / "recipes" / "distill-tiny.yaml",
        f"distill.teacher={short_run_dir}",
        f"run.output_dir={tmp_path}",
        "distill.num_prompts=24",
        "distill.samples=4",
        "distill.keep_per_prompt=2",
        "distill.steps=8",
        "distill.batch_size=8",
        "data.min_digits=1",
        "data.max_digits=1",
        "data.num_train=60",
        "data.num_test=8",
        "eval.num_prompts=8",
        "eval.samples=2",
        "eval.k=2",
        "rollout.max_new_tokens=32",
        "eval.max_new_tokens=32",
        cwd=tmp_path,
    )
    assert "teacher" in proc.stdout and "baseline" in proc.stdout
    run = tmp_path / "distill-tiny"
    summary = json.loads((run / "summary.json").read_text())
    kept = [json.loads(line) for line in (run / "distill_data.jsonl").read_text().splitlines()]
    assert summary["kept"] == len(kept) > 0 and summary["verified"] >= len(kept)
    assert summary["sampled"] == 24 * 4 and summary["prompts_with_one"] * 2 >= len(kept)
    per_prompt = pd.Series([row["prompt"] for row in kept]).value_counts()
    assert per_prompt.max() <= 2  # keep_per_prompt
    assert all(verify(row["answer"], row["solution"]) for row in kept)  # every kept answer is right
    config = json.loads((run / "student" / "config.json").read_text())
    assert config["model_type"] == "qwen3"  # dense, another architecture than the Qwen3-MoE teacher
    assert summary["student_parameters"] < summary["teacher_parameters"]
    for name in ("teacher", "student", "baseline"):
        m = summary["metrics"][name]
        assert 0.0 <= m["accuracy"] <= 1.0 and "pass@2" in m and "maj@2" in m


@pytest.mark.slow
def test_data_filter_keeps_the_prompts_in_the_pass_rate_band(short_run_dir, tmp_path):
    from conftest import SHORT, run_cli

    out = tmp_path / "mid.jsonl"
    proc = run_cli(
        "data",
        "filter",
        ROOT / "recipes" / "tiny-base.yaml",
        *SHORT,
        "--model",
        short_run_dir,
        "--k",
        "4",
        "--min",
        "0.25",
        "--max",
        "0.75",
        "--prompts",
        "40",
        "--out",
        out,
        "data.min_digits=1",
        "data.max_digits=1",
        "data.num_train=70",
        cwd=tmp_path,
    )
    stats = json.loads((tmp_path / "mid.stats.json").read_text())
    assert stats["prompts"] == 40 and sum(stats["histogram"].values()) == 40
    assert list(stats["histogram"]) == ["0.000", "0.250", "0.500", "0.750", "1.000"]
    in_band = sum(n for level, n in stats["histogram"].items() if 0.25 <= float(level) <= 0.75)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["kept"] == len(kept) == in_band
    assert all(0.25 <= row["pass_rate"] <= 0.75 and {"prompt", "answer", "solution"} <= set(row) for row in kept)
    assert stats["never_solved"] == stats["histogram"]["0.000"]
    assert (tmp_path / "mid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"kept {len(kept)} with a pass rate in [0.25, 0.75]" in proc.stdout
