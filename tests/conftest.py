import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "plugins"))  # reward plugins the tests name by module path
os.environ.setdefault("PYTHONPATH", str(ROOT / "tests" / "plugins"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny Qwen3-MoE and its tokenizer, saved in HF format."""
    from rlwhf.models.tiny import build_tiny_moe

    return str(build_tiny_moe(tmp_path_factory.mktemp("tiny_moe")))


# Overrides that make any tiny recipe run in seconds: a few prompts, short completions, a 20-step SFT.
SHORT = ["data.num_train=200", "data.num_test=8", "eval.num_prompts=8", "sft.steps=20",
         "train.prompts_per_step=4", "rollout.group_size=4", "train.minibatch_size=8",
         "rollout.max_new_tokens=32", "eval.max_new_tokens=32", "train.save_every=1"]


def run_cli(*args, cwd):
    """``python -m rlwhf.cli ARGS`` in ``cwd``; fails the test with the output's tail unless it exits 0."""
    import subprocess

    env = {**os.environ, "WANDB_MODE": "offline", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc = subprocess.run([sys.executable, "-m", "rlwhf.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="session")
def short_run_dir(tmp_path_factory):
    """A real 3-step run of the tiny base recipe (plain GRPO, so every step keeps all its groups; eval
    at step 2 and at the end), made once per session through the CLI, for tests that read run
    directories (traces helpers, notebooks, `rlwhf inspect`)."""
    out = tmp_path_factory.mktemp("short_run")
    run_cli("train", ROOT / "recipes" / "tiny-base.yaml", *SHORT, "train.steps=3", "train.eval_every=2",
            "run.name=short", f"run.output_dir={out}", cwd=out)
    return out / "short"
