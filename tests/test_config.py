from pathlib import Path

import pytest

from rlwhf.config import ConfigError, load_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_validate_and_overrides_apply_with_yaml_types():
    recipe = load_recipe(None, ["train.steps=5", "run.name=foo", "algo.dual_clip=3.0", "rollout.engine=hf"])
    assert recipe.train.steps == 5
    assert recipe.run.dir.name == "foo"
    assert recipe.algo.dual_clip == 3.0
    assert recipe.rollout.engine == "hf"


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        load_recipe(path)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.steps=ten", "train.steps = 'ten': expected an integer"),
        ("train.stepz=3", "train.stepz = 3: unknown key"),
        ("rollout.engine=tgi", "rollout.engine = 'tgi': expected 'vllm' or 'hf'"),
        ("algo.clip_low=-1", "algo.clip_low = -1: input should be greater than or equal to 0"),
        ("algo.advantage=ppo", "algo.advantage = 'ppo': expected 'grpo', 'dr_grpo' or 'rloo'"),
        ("train.minibatch_size=100000", "train.minibatch_size (100000) is larger than the completions per step"),
        ("data.min_digits=5", "min_digits (5) must be <= max_digits (3)"),
        ("rewards.accuracy=format_typo", "rewards: accuracy 'format_typo' is not among funcs (math_accuracy, format)"),
        ("rewards.funcs=[{name: format}, {name: format}]", "funcs: each reward may be listed once"),
    ],
)
def test_bad_values_are_rejected_naming_key_value_and_expectation(override, expected):
    with pytest.raises(ConfigError) as info:
        load_recipe(None, [override])
    assert expected in str(info.value)


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe(None, ["train.steps"])


def test_recipe_inherits_base_and_reports_its_own_path(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 7\n  learning_rate: 0.5\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  steps: 9\n")
    recipe = load_recipe(tmp_path / "child.yaml")
    assert (recipe.train.steps, recipe.train.learning_rate) == (9, 0.5)
    (tmp_path / "bad.yaml").write_text("base: base.yaml\nmodel:\n  dtype: float8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model.dtype = 'float8': expected 'float32' or 'bfloat16'"):
        load_recipe(tmp_path / "bad.yaml")


def test_missing_recipe_and_non_mapping_yaml_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_recipe(tmp_path / "list.yaml")


def test_docs_recipe_key_table_matches_the_config_models():
    from pathlib import Path

    from rlwhf.config import RECIPE_KEYS_END, RECIPE_KEYS_START, recipe_keys_markdown

    page = (Path(__file__).parent.parent / "docs" / "recipes.md").read_text()
    assert RECIPE_KEYS_START in page and RECIPE_KEYS_END in page, "docs/recipes.md lost its recipe-key markers"
    table = page.split(RECIPE_KEYS_START, 1)[1].split(RECIPE_KEYS_END, 1)[0]
    assert table == recipe_keys_markdown(), (
        "docs/recipes.md's key table differs from rlwhf/config.py; regenerate it from the repository root with "
        "`.venv/bin/python -m rlwhf.config`"
    )


def test_validate_resolves_rewards_and_data_files_before_anything_starts(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "rewards:\n  funcs: [{name: math_accuracy}, {name: 'no_such_module_xyz:fn'}]\n"
        "data: {task: dataset, dataset: missing.jsonl}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "validate", str(recipe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "rewards.funcs[1] = 'no_such_module_xyz:fn': cannot import 'no_such_module_xyz'" in proc.stderr
    assert "data.dataset = 'missing.jsonl': no such file" in proc.stderr


def test_the_cli_says_its_version_and_lists_its_commands():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from rlwhf.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"rlwhf {version('rlwhf')}"
    listed = CliRunner().invoke(app, ["--help"])
    assert listed.exit_code == 0
    for command in ("train", "validate", "plan", "eval", "distill", "rewards", "data", "inspect", "export"):
        assert command in listed.output


@pytest.mark.parametrize(
    "model, expected",
    [
        ("./no/such/model", "model.path = './no/such/model': no such folder"),
        ("EMPTY", "the folder has no config.json"),
    ],
)
def test_validate_refuses_a_model_folder_that_is_not_there_before_anything_starts(tmp_path, model, expected):
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    model = str(tmp_path / "empty") if model == "EMPTY" else model
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "validate", str(ROOT / "recipes" / "tiny.yaml"), f"model.path={model}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
    # A Hub id is left to the download (it is not a local path)
    from rlwhf.config import model_folder_problems

    assert model_folder_problems("HuggingFaceTB/SmolLM2-135M-Instruct") == model_folder_problems("gpt2") == []


def test_validate_catches_what_would_fail_later_before_anything_starts(tmp_path):
    """Each of these used to pass `validate` and fail minutes into a run, or never."""
    import os
    import subprocess
    import sys

    data = tmp_path / "four.jsonl"
    data.write_text("".join(f'{{"prompt": "{i}+1?", "answer": "{i + 1}"}}\n' for i in range(4)))
    (tmp_path / "a-file").write_text("")
    (tmp_path / "strict_reward.py").write_text(  # a reward that takes no keyword arguments but its own
        "def short(completions, *, prompts, limit=5):\n    return [float(len(c) < limit) for c in completions]\n"
    )
    cases = [
        (["data.task=dataset", f"data.dataset={data}"], "has 4 rows and data.num_test=200 holds them all out"),
        (
            ["rewards.funcs=[{name: math_accuracy}, {name: 'strict_reward:short', kwargs: {limit: 10, nope: 1}}]"],
            "kwargs nope are not",
        ),
        ([f"run.output_dir={tmp_path / 'a-file' / 'runs'}"], "is not a folder, so the run's folder cannot be made"),
    ]
    for overrides, expected in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "rlwhf.cli", "validate", str(ROOT / "recipes" / "tiny.yaml"), *overrides],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, (overrides, proc)
    fine = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "validate", str(ROOT / "recipes" / "tiny.yaml"), "data.num_test=2"]
        + ["data.task=dataset", f"data.dataset={data}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fine.returncode == 0, fine.stderr


def test_a_recipe_that_is_not_yaml_is_named_with_the_place_of_the_mistake(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train:\n  steps: [1,\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(recipe)
    message = str(error.value)
    assert message.startswith(f"recipe {recipe}: not valid YAML") and f'"{recipe}", line 3' in message
    assert "<unicode string>" not in message and "\n" not in message


def test_an_override_whose_text_has_a_colon_is_text_and_braces_make_a_mapping():
    from rlwhf.config import load_recipe

    recipe = load_recipe(
        None, ["data.system_prompt=You can run Python: write it in a block.", "model.tiny={num_layers: 3}"]
    )
    assert recipe.data.system_prompt == "You can run Python: write it in a block."
    assert recipe.model.tiny.num_layers == 3
