"""reasoning-gym as a task source and a reward: seeded rows, no held-out question in training, mixing
weights, the answer extractors, and the task's own verifier paying exact matches."""

import json

import pytest

import rewards
from rewards.gym import extract_answer, reasoning_gym_accuracy
from rlwhf.config import ConfigError, GymDatasetSpec, check_references, load_recipe
from rlwhf.data.gym import make_gym_rows
from rlwhf.data.source import load_task

PRODUCTS = GymDatasetSpec(name="products", config={"min_digits": 1, "max_digits": 2})


def test_rows_are_seeded_and_no_held_out_question_is_a_training_question():
    train, test = make_gym_rows([PRODUCTS], 300, 60, seed=0)
    again, _ = make_gym_rows([PRODUCTS], 300, 60, seed=0)
    other, _ = make_gym_rows([PRODUCTS], 300, 60, seed=1)
    assert train == again and train != other
    assert len(train) == 300 and len(test) == 60
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}
    assert len({r["prompt"] for r in test}) == 60
    # Half the questions are 1-digit products (100 exist), half 2-digit ones: the held-out set keeps
    # that mix although training draws most of the small products too.
    one_digit = sum(len(r["prompt"].split(": ")[1].split(" * ")[0]) == 1 for r in test)
    assert 15 <= one_digit <= 45
    small, _ = make_gym_rows([GymDatasetSpec(name="products", config={"max_digits": 1})], 200, 40, seed=0)
    assert len(small) == 200 and len({r["prompt"] for r in small}) <= 60  # repeats, none held out
    with pytest.raises(ValueError, match="too few"):
        make_gym_rows([GymDatasetSpec(name="products", config={"max_digits": 1})], 10, 150, seed=0)
    row = train[0]
    assert set(row) == {"prompt", "answer", "gym_dataset", "gym_metadata"}
    assert row["gym_dataset"] == "products" and json.loads(row["gym_metadata"])["source_dataset"] == "products"
    a, b = row["prompt"].split(": ")[1].split(".")[0].split(" * ")
    assert int(row["answer"]) == int(a) * int(b) and max(len(a), len(b)) <= 2  # the config reached the task


def test_several_tasks_mix_by_weight():
    specs = [
        GymDatasetSpec(name="products", weight=3.0, config={"min_digits": 1, "max_digits": 2}),
        GymDatasetSpec(name="chain_sum", weight=1.0),
    ]
    train, test = make_gym_rows(specs, 800, 40, seed=0)
    share = sum(r["gym_dataset"] == "products" for r in train) / len(train)
    assert 0.68 < share < 0.82  # 3:1 -> 0.75
    assert {r["gym_dataset"] for r in test} == {"products", "chain_sum"}


def test_a_recipe_loads_the_task_and_refuses_unknown_names_and_a_missing_list():
    recipe = load_recipe(
        None,
        [
            "data.task=reasoning_gym",
            "data.gym=[{name: chain_sum}]",
            "data.num_train=50",
            "data.num_test=10",
            "rewards.funcs=[{name: reasoning_gym}]",
            "rewards.accuracy=reasoning_gym",
        ],
    )
    task = load_task(recipe.data, recipe.run.seed)
    assert len(task.train) == 50 and len(task.test) == 10
    check_references(recipe)
    with pytest.raises(ConfigError, match="data.gym.*products"):
        check_references(
            recipe.model_copy(update={"data": recipe.data.model_copy(update={"gym": [GymDatasetSpec(name="product")]})})
        )
    with pytest.raises(ConfigError, match="needs data.gym"):
        load_recipe(None, ["data.task=reasoning_gym"])


@pytest.mark.parametrize(
    "how,text,expected",
    [
        ("tags", "<think>7*6 is 42</think><answer> 42 </answer>", "42"),
        ("boxed", "so it is \\boxed{12} and not \\boxed{13}", "13"),
        ("phrase", "We add them.\nThe final answer is 214.", "214"),
        ("last_line", "work\n\n41 * 52 = 2132.\n", "2132"),
        ("auto", "The answer is **99**.", "99"),
        ("auto", "<answer>cab</answer> then The final answer is 3", "cab"),
        ("auto", "12<|im_end|>garbage after the turn", "12"),
        ("tags", "no tags here", None),
        ("auto", "", None),
    ],
)
def test_the_extractors_find_the_answer(how, text, expected):
    assert extract_answer(text, how) == expected


def test_the_reward_pays_the_tasks_own_verdict_exact_unless_partial_credit():
    _, rows = make_gym_rows([GymDatasetSpec(name="letter_counting")], 50, 20, seed=0)
    row = next(r for r in rows if r["answer"] == "1")
    cols = {
        "answer": [row["answer"]] * 4,
        "gym_dataset": [row["gym_dataset"]] * 4,
        "gym_metadata": [row["gym_metadata"]] * 4,
    }
    completions = ["The answer is 1.", "<answer>1</answer>", "The answer is 10.", "I do not know"]
    assert reasoning_gym_accuracy(completions, prompts=[row["prompt"]] * 4, **cols) == [1.0, 1.0, 0.0, 0.0]
    partial = reasoning_gym_accuracy(completions, prompts=[row["prompt"]] * 4, partial_credit=True, **cols)
    assert partial[:2] == [1.0, 1.0] and 0.0 < partial[2] < 1.0 and partial[3] == 0.0  # "10" contains "1"
    assert rewards.get("reasoning_gym") is reasoning_gym_accuracy
    with pytest.raises(ValueError, match="extract='xml'"):
        reasoning_gym_accuracy(
            completions[:1],
            answer=cols["answer"][:1],
            gym_dataset=cols["gym_dataset"][:1],
            gym_metadata=cols["gym_metadata"][:1],
            extract="xml",
        )


def test_data_check_and_data_show_read_a_generated_task(tmp_path):
    from typer.testing import CliRunner

    from rlwhf.cli import app
    from rlwhf.commands.check_data import check_generated_task

    recipe = tmp_path / "gym.yaml"
    recipe.write_text(
        "data:\n  task: reasoning_gym\n  num_train: 40\n  num_test: 10\n  gym:\n"
        "    - {name: products, config: {min_digits: 1, max_digits: 2}}\n"
        "rewards:\n  funcs: [{name: reasoning_gym}]\n  accuracy: reasoning_gym\n"
    )
    cfg = load_recipe(recipe)
    report = check_generated_task(cfg, "test")
    assert report.ok and report.rows == 10 and "gym_metadata" in report.columns
    assert not report.notes  # the prompts were rendered (the tiny tokenizer) and every gold scored
    short = check_generated_task(load_recipe(recipe, ["rollout.max_prompt_tokens=20"]), "train")
    assert set(short.counts()) == {"overlong_prompt"}
    distinct = len({r["prompt"] for r in load_task(load_recipe(recipe).data, 0).train})
    assert short.counts()["overlong_prompt"] == distinct  # each distinct question once; repeats are a note
    result = CliRunner().invoke(app, ["data", "check", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "reasoning_gym (products)" in result.output
    result = CliRunner().invoke(app, ["data", "show", str(recipe), "--n", "2"])
    assert result.exit_code == 0 and "40 training rows, 10 held-out rows" in result.output
    assert "gym_metadata" in result.output


def test_evaluation_reads_and_groups_reasoning_gym_answers_as_its_reward_does():
    from rlwhf.evaluation import answer_kind, completion_metrics, final_answer
    from rlwhf.rollout.base import Completion, Group
    from rlwhf.rollout.sampling import Scored

    assert answer_kind("reasoning_gym") == "gym" and final_answer("7 * 8 = 56", "gym") == "56"
    texts = ["7 * 8 = 56", "The answer is 56.", "54", "7 * 8 = 54", "It is 54"]
    group = Group("p", [1], [Completion(t, [1, 2], [0.0, 0.0], "stop") for t in texts])
    scores = [1.0, 1.0, 0.0, 0.0, 0.0]
    metrics = completion_metrics([group], Scored({"reasoning_gym": scores}, scores, {}, [], 0.0), "reasoning_gym", k=4)
    assert metrics["maj@4"] == 1.0  # 56 twice, 54 twice: the set seen first wins
    assert metrics["format_error_frac"] == 0.0 and metrics["pass@4"] == 1.0
