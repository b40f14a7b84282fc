"""The benchmarks that must run elsewhere run here too, on the CPU, in their smallest form."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_trainer_benchmark_needs_only_torch_and_transformers(tmp_path):
    # The GPU machine has neither vLLM nor Ray nor pydantic: the script must not import them.
    out = tmp_path / "result.json"
    code = ("import sys, runpy; sys.modules.update(pydantic=None, ray=None, vllm=None, trl=None, datasets=None); "
            f"sys.argv = ['gpu_trainer.py', '--device', 'cpu', '--size', 'tiny', '--steps', '2', '--completions', '8', "
            f"'--length', '64', '--micro-batch-tokens', '128', '--checkpointing', '--json', '{out}']; "
            f"runpy.run_path('{ROOT / 'benchmarks' / 'gpu_trainer.py'}', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and result["plan_estimate_gib"] > 0
    assert result["active_parameters"] < result["parameters"]
