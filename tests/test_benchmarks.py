"""The benchmarks that must run elsewhere run here too, on the CPU, in their smallest form."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_trainer_benchmark_needs_only_torch_and_transformers(tmp_path):
    # The GPU machine has neither vLLM nor Ray nor pydantic: the script must not import them.
    out = tmp_path / "result.json"
    code = (
        "import sys, runpy; sys.modules.update(pydantic=None, ray=None, vllm=None, trl=None, datasets=None); "
        f"sys.argv = ['gpu_trainer.py', '--device', 'cpu', '--size', 'tiny', '--steps', '2', '--completions', '8', "
        f"'--length', '64', '--micro-batch-tokens', '128', '--checkpointing', '--json', '{out}']; "
        f"runpy.run_path('{ROOT / 'benchmarks' / 'gpu_trainer.py'}', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and result["plan_estimate_gib"] > 0
    assert result["active_parameters"] < result["parameters"]


@pytest.mark.slow
def test_the_comparison_with_trl_runs_both_tools_and_writes_its_table(tmp_path):
    """benchmarks/vs_trl.py in its smallest form: a 20-step cold start, 2 steps of 4 prompts x 8."""
    out = tmp_path / "vs_trl.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "vs_trl.py"),
            "--steps",
            "2",
            "--rounds",
            "1",
            "--prompts",
            "4",
            "--tokens",
            "24",
            "--sft-steps",
            "20",
            "--held-out",
            "8",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for arm in ("rlwhf", "trl"):
        row = result["table"][arm]
        assert row["s_per_step"] > 0 and row["startup_s"] > 0 and 0 <= row["held_out_accuracy"] <= 1
        assert len(result["results"][arm][0]["step_s"]) == 2
    assert result["phases"]["rlwhf"]["time/rollout"] > 0 and "time/train/forward_backward" in result["phases"]["rlwhf"]
    assert result["phases"]["trl"]["time/generate"] > 0
    last = proc.stdout.strip().splitlines()[-1]  # issue 33's two ratios, on the benchmark's last line
    assert "rlwhf / TRL step time" in last and "rlwhf step / its limit" in last, last
    assert result["own_limit"]["ratio"] > 0 and result["own_limit"]["limit_s"] > 0
