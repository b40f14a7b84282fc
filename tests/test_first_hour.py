"""A newcomer's first hour, driven through the installed ``rlwhf`` command as a user types it: each
mistake ends in one line that names the bad input, with exit code 2 (bad input) or 1 (a failure of
rlwhf's own, its traceback in the run's log); never a traceback on the screen. Further cases live
beside the code they check: test_config (recipes, validate), test_resume (--resume), test_plan,
test_data_check (data show, data check)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RLWHF = Path(sys.executable).parent / "rlwhf"  # the console script `make setup` installs
TINY = ROOT / "recipes" / "tiny.yaml"

FILES = {
    "raises_at_import.py": "import os\nraise RuntimeError('REWARD_CONFIG is not set')\n",
    "syntax_error.py": "def score(completions:\n    return []\n",
    "decorated.py": "import rewards\n\n\n@rewards.reward('mine')\ndef mine(completions, **_):\n    return [1.0] * len(completions)\n",
    "one_number.py": "def total(completions, **_):\n    return 1.0\n",
    "needs_a_column.py": "def steps(completions, *, prompts, solution_steps, **_):\n    return [0.0] * len(completions)\n",
    "questions.jsonl": '{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n',
    "four.jsonl": "".join(f'{{"prompt": "{i}+1?", "answer": "{i + 1}"}}\n' for i in range(4)),
    "empty.jsonl": "",
    "notes.txt": "some notes\n",
    "a-file": "",
}

# A user's own rewards.py (written into a project folder, never the working directory of a command)
OWN_REWARDS_PY = "def short(completions, **_):\n    return [float(len(c) < 200) for c in completions]\n"


def recipe_with(rewards_: str = "", data: str = "", model: str = "") -> str:
    return f"base: {TINY}\n" + "".join(
        f"{section}: {body}\n" for section, body in (("rewards", rewards_), ("data", data), ("model", model)) if body
    )


def funcs(name: str) -> str:
    return f"{{funcs: [{{name: math_accuracy}}, {{name: '{name}'}}]}}"


# (case, recipe file text or None, command after `rlwhf`, exit code, what stderr names)
CASES = [
    ("reward raises at import", recipe_with(funcs("raises_at_import.py:score")), ["validate", "r.yaml"], 2,
     "cannot import 'raises_at_import.py': RuntimeError: REWARD_CONFIG is not set"),
    ("reward has a syntax error", recipe_with(funcs("syntax_error.py:score")), ["validate", "r.yaml"], 2,
     "SyntaxError: "),
    ("reward returns one number", recipe_with(funcs("one_number.py:total")), ["validate", "r.yaml"], 2,
     "'one_number.py:total': called on the first training row it fails: ValueError: returned float"),
    ("reward needs a column the data lacks", recipe_with(funcs("needs_a_column.py:steps")), ["validate", "r.yaml"], 2,
     "missing 1 required keyword-only argument: 'solution_steps'"),
    ("decorated reward named by its decorator", recipe_with(funcs("mine")), ["validate", "r.yaml"], 2,
     "registers the name only once that file is imported, so name it by its file"),
    ("data show: file without the named columns", recipe_with(data="{task: dataset, dataset: questions.jsonl}"),
     ["data", "show", "r.yaml"], 2, "has no column 'prompt'"),
    ("data show: empty file", recipe_with(data="{task: dataset, dataset: empty.jsonl}"),
     ["data", "show", "r.yaml"], 2, "data.dataset 'empty.jsonl' is empty"),
    ("validate: file without the named columns", recipe_with(data="{task: dataset, dataset: questions.jsonl, num_test: 1}"),
     ["validate", "r.yaml"], 2, "has no column 'prompt'"),
    ("validate: training split left empty", recipe_with(data="{task: dataset, dataset: four.jsonl}"),
     ["validate", "r.yaml"], 2, "has 4 rows and data.num_test=200 holds them all out"),
    ("train: held-out split takes every row, caught before Ray", recipe_with(data="{task: dataset, dataset: four.jsonl}"),
     ["train", "r.yaml", "run.output_dir=runs"], 2, "has 4 rows and data.num_test=200 holds them all out"),
    ("train: model folder not there", None, ["train", str(TINY), "model.path=./no/such/model"], 2,
     "model.path = './no/such/model': no such folder"),
    ("train: model folder without config.json", None, ["train", str(TINY), "model.path=FOLDER"], 2,
     "the folder has no config.json"),
    ("validate: model folder whose config cannot be loaded", None, ["validate", str(TINY), "model.path=BROKEN"], 2,
     "its config.json cannot be loaded"),
    ("train: output folder cannot be made", None, ["train", str(TINY), "run.output_dir=a-file/runs"], 2,
     "is not a folder, so the run's folder cannot be made there"),
    ("data check: a file of a kind not read, not sent to the Hub", None, ["data", "check", "notes.txt"], 2,
     "data.dataset 'notes.txt' is a file of a kind rlwhf does not read"),
    ("data check: recipe's model not there", recipe_with(data="{task: dataset, dataset: four.jsonl}", model="{path: ./no/model}"),
     ["data", "check", "--recipe", "r.yaml"], 2, "model.path = './no/model': no such folder"),
    ("a failure of rlwhf's own", None, ["train", str(TINY), "run.output_dir=runs", "run.name=crash"], 1,
     "RuntimeError: injected by RLWHF_FAULT=start@0 (the traceback is in runs/crash/logs/driver.log; --debug shows it)"),
]  # fmt: skip


def rlwhf(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RLWHF_FAULT")}
    return subprocess.run(
        [str(RLWHF), *args], cwd=tmp_path, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=180
    )


@pytest.fixture
def workdir(tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"hidden_size": 8}')  # no model_type
    return tmp_path


@pytest.mark.parametrize("case, recipe, args, code, expected", CASES, ids=[c[0] for c in CASES])
def test_each_mistake_ends_in_one_line_naming_it(workdir, case, recipe, args, code, expected):
    if recipe is not None:
        (workdir / "r.yaml").write_text(recipe)
    args = [a.replace("FOLDER", str(workdir / "folder")).replace("BROKEN", str(workdir / "broken")) for a in args]
    proc = rlwhf(workdir, *args, env={"RLWHF_FAULT": "start@0"} if code == 1 else None)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_failure_of_ours_is_logged_shown_with_debug_and_its_start_replaced(workdir):
    crash = ["train", str(TINY), "run.output_dir=runs", "run.name=crash"]
    assert rlwhf(workdir, *crash, env={"RLWHF_FAULT": "start@0"}).returncode == 1
    log = workdir / "runs" / "crash" / "logs" / "driver.log"
    assert "Traceback" in log.read_text() and "RuntimeError: injected by RLWHF_FAULT=start@0" in log.read_text()
    shown = rlwhf(workdir, "--debug", *crash, env={"RLWHF_FAULT": "start@0"})
    assert shown.returncode == 1 and "Traceback" in shown.stderr
    # The folder a failed start left is replaced by the next start, not offered to --resume
    assert "replacing runs/crash: a start that failed before its first step left it" in shown.stdout


def test_a_users_own_rewards_py_beside_the_recipe_works_and_a_shadowing_one_is_named(workdir):
    recipes = workdir / "my-project"
    recipes.mkdir()
    (recipes / "rewards.py").write_text(OWN_REWARDS_PY)
    (recipes / "questions.jsonl").write_text(FILES["four.jsonl"] * 3)
    (recipes / "r.yaml").write_text(  # every path relative to the recipe, run from elsewhere
        "base: tiny.yaml\nrewards: {funcs: [{name: math_accuracy}, {name: 'rewards.py:short'}]}\n"
        "data: {task: dataset, dataset: questions.jsonl, num_test: 2}\n"
    )
    ok = rlwhf(workdir, "validate", "my-project/r.yaml")
    assert ok.returncode == 0 and "2 rewards tried on a training row" in ok.stdout, ok.stderr
    tried = rlwhf(workdir, "rewards", "try", "--recipe", "my-project/r.yaml", "--rows", "2")
    assert tried.returncode == 0 and "my-project/rewards.py:short" in tried.stdout and "1.000" in tried.stdout
    shadowed = rlwhf(workdir, "validate", "my-project/r.yaml", env={"PYTHONPATH": str(recipes)})
    assert shadowed.returncode == 2 and "in place of rlwhf's own rewards package" in shadowed.stderr
    assert "Traceback" not in shadowed.stderr
    # run from its own folder, the file would be what Ray's workers import as `rewards`: said first
    inside = rlwhf(recipes, "validate", "r.yaml")
    assert inside.returncode == 2 and "is in the working directory, where rlwhf's Ray workers" in inside.stderr


def test_rewards_try_exits_1_naming_the_line_that_failed(workdir):
    (workdir / "crashes.py").write_text(
        "def first_word(completions, **_):\n    return [len(c.split()[0]) for c in completions]\n"
    )
    proc = rlwhf(workdir, "rewards", "try", "crashes.py:first_word", "format", "--rows", "1")
    assert proc.returncode == 1 and "failed" in proc.stdout and "1.000" in proc.stdout  # format still scores
    assert proc.stderr.splitlines() == [
        f"error: reward 'crashes.py:first_word' on row 0: IndexError: list index out of range "
        f"({workdir / 'crashes.py'}, line 2)"
    ]


def test_the_format_reward_pays_the_format_the_prompt_asks_for():
    import rewards
    from rlwhf.config import load_recipe

    fmt = rewards.get("format")
    completions = ["<think>2+2</think><answer>4</answer>", "So it is \\boxed{4}.", "in \\boxed{}.", "4"]
    assert fmt(completions, prompts=[""] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert fmt(completions, prompts=[""] * 4, style="boxed") == [0.0, 1.0, 0.0, 0.0]
    boxed = load_recipe(TINY, ["data.prompt_template={prompt} Put it in \\boxed{}."])
    assert {s.name: s.kwargs for s in boxed.rewards.funcs}["format"] == {"style": "boxed"}
    assert {s.name: s.kwargs for s in load_recipe(TINY).rewards.funcs}["format"] == {}


def test_derived_keys_and_presets_fill_only_what_the_recipe_leaves_unset():
    from rlwhf.config import ALGO_PRESETS, load_recipe

    base = ROOT / "recipes" / "tiny-base.yaml"
    assert load_recipe(base).train.minibatch_size == 32 * 8  # unset: one update on the whole step
    assert load_recipe(base, ["train.prompts_per_step=4"]).train.minibatch_size == 4 * 8
    # the demo's four updates a step hold when its step is made smaller; a minibatch_size given wins
    assert load_recipe(TINY).train.minibatch_size == 32 * 8 // 4
    assert load_recipe(TINY, ["train.prompts_per_step=4"]).train.minibatch_size == 4 * 8 // 4
    assert load_recipe(TINY, ["train.prompts_per_step=4", "train.minibatch_size=32"]).train.minibatch_size == 32
    dapo = load_recipe(base, ["algo.preset=dapo", "algo.clip_high=0.3"]).algo
    assert dapo.dynamic_sampling and dapo.overlong_penalty and dapo.clip_high == 0.3  # a later key wins
    assert load_recipe(base, ["algo.clip_high=0.3", "algo.preset=dapo"]).algo.clip_high == 0.28
    for name, keys in ALGO_PRESETS.items():
        algo = load_recipe(base, [f"algo.preset={name}"]).algo
        assert {k: getattr(algo, k) for k in keys} == keys


def test_a_shipped_recipe_copied_elsewhere_still_resolves(tmp_path):
    import shutil

    from rlwhf.config import load_recipe

    shutil.copy(TINY, tmp_path / "tiny.yaml")
    assert load_recipe(tmp_path / "tiny.yaml").model_dump() == load_recipe(TINY).model_dump()


@pytest.mark.slow
def test_the_first_hour_page_runs_as_written(smollm2, tmp_path):
    """docs/first-hour.md: its files written from the page, its commands run as typed (installing
    aside), a real pretrained model trained two steps on the page's data with the page's reward."""
    import json
    import re

    page = (ROOT / "docs" / "first-hour.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", page, re.S)
    for lang, body in blocks:
        first = body.splitlines()[0]
        if lang in ("python", "yaml") and first.startswith("# my-project/"):
            (tmp_path / first[2:]).parent.mkdir(exist_ok=True)
            (tmp_path / first[2:]).write_text(body)
    commands = [
        line.split("  #")[0].strip()
        for lang, body in blocks
        if lang == "bash"
        for line in body.splitlines()
        if line.strip() and not line.startswith(("make ", "source "))
    ]
    assert any(c.startswith("rlwhf train") for c in commands) and len(commands) >= 7
    env = {**os.environ, "PATH": f"{RLWHF.parent}:{os.environ['PATH']}", "WANDB_MODE": "offline"}
    env.pop("PYTHONPATH", None)
    for command in commands:
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (command, proc.stderr[-3000:])
    assert len((tmp_path / "my-project" / "problems.jsonl").read_text().splitlines()) == 64
    run = tmp_path / "runs" / "my-run"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    own = "reward/my-project/my_rewards.py:concise/mean"
    assert len([m for m in steps if own in m]) == 2 and all(m.get(own, 0) > 0 for m in steps if own in m)
    assert not {k: v for m in steps for k, v in m.items() if k.endswith("/errors") and v}
    summary = json.loads((run / "summary.json").read_text())
    assert {"accuracy_before_rl", "accuracy_after_rl"} <= set(summary)
