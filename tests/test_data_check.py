"""`rlwhf data check`: a data set's bad rows found by row number before a run, a cleaned copy, and
the loader dropping (and counting) or refusing the cheap ones as ``data.bad_rows`` says."""

import json

import pytest
from typer.testing import CliRunner

from rlwhf.commands.check_data import check_dataset, write_clean
from rlwhf.config import load_recipe
from rlwhf.data.rows import CHEAP_KINDS, check_rows
from rlwhf.data.source import load_task

ROWS = [
    {"prompt": "What is 2 + 3?", "answer": "5"},  # 0 good
    {"prompt": "   ", "answer": "1"},  # 1 empty_prompt
    {"prompt": "What is 2 + 3?", "answer": "5"},  # 2 duplicate_prompt of 0
    {"prompt": "Add: " + "9" * 800 + " + 1", "answer": "7"},  # 3 overlong_prompt
    {"prompt": "What is a half?", "answer": "\\frac{"},  # 4 unparseable_answer
    {"prompt": "What is 7 - 4?", "answer": None},  # 5 missing_answer
    {"prompt": "Guess.", "answer": "???"},  # 6 unparseable_answer
    {"prompt": None, "answer": "3"},  # 7 missing_prompt
    {
        "prompt": "Read two integers and print their sum.",
        "answer": "",  # 8 failing_reference
        "tests": [{"input": "3 4\n", "output": "7\n"}, {"input": "1 1\n", "output": "2\n"}],
        "solution": "```python\na, b = map(int, input().split())\nprint(a - b)\n```",
    },
    {
        "prompt": "Read a word and print it reversed.",
        "answer": "",  # 9 good (a bare program as reference)
        "tests": [{"input": "abc\n", "output": "cba\n"}],
        "solution": "print(input().strip()[::-1])",
    },
    {"prompt": "What is 10 * 10?", "answer": "100"},  # 10 good
    {"prompt": "", "answer": "2"},  # 11 empty_prompt
]
EXPECTED = {
    "empty_prompt": [1, 11],
    "duplicate_prompt": [2],
    "overlong_prompt": [3],
    "unparseable_answer": [4, 6],
    "missing_answer": [5],
    "missing_prompt": [7],
    "failing_reference": [8],
}
GOOD = [0, 9, 10]


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def by_kind(problems) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in problems:
        out.setdefault(p.kind, []).append(p.row)
    return out


def cli(*args):
    from rlwhf.cli import app

    return CliRunner().invoke(app, ["data", "check", *map(str, args)])


def test_every_kind_of_bad_row_is_found_by_its_row_number_and_the_clean_copy_keeps_the_rest(
    bad_file, tmp_path, sandbox
):
    report, table = check_dataset(str(bad_file), load_recipe())
    assert by_kind(report.problems) == EXPECTED
    assert report.rows == len(ROWS) and report.counts()["empty_prompt"] == 2
    duplicate = next(p for p in report.problems if p.kind == "duplicate_prompt")
    assert duplicate.first == 0 and "row 0" in duplicate.reason
    assert "passes 0% of its tests" in next(p.reason for p in report.problems if p.kind == "failing_reference")
    for out in (tmp_path / "clean.jsonl", tmp_path / "clean.parquet"):
        assert write_clean(table, report, out) == len(GOOD)
        clean, _ = check_dataset(str(out), load_recipe())
        assert clean.ok and clean.rows == len(GOOD), clean.problems
    kept = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in kept] == [ROWS[i]["prompt"] for i in GOOD]
    assert set(kept[0]) == {"prompt", "answer", "tests", "solution"}  # the file's own columns


def test_the_cli_exits_1_listing_row_numbers_writes_the_report_and_a_clean_file_passes(bad_file, tmp_path):
    result = cli(bad_file, "--no-code", "--json", tmp_path / "report.json", "--clean", tmp_path / "clean.jsonl")
    assert result.exit_code == 1, result.output
    assert "0-based" in result.output and "row 2: same prompt as row 0" in result.output
    assert "row 3: 809 tokens as rendered, more than rollout.max_prompt_tokens=512" in result.output
    assert "failing_reference: not checked (--no-code)" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    expected = {k: v for k, v in EXPECTED.items() if k != "failing_reference"}
    rows: dict[str, list[int]] = {}
    for p in report["problems"]:
        rows.setdefault(p["kind"], []).append(p["row"])
    assert rows == expected
    assert report["counts"] == {k: len(v) for k, v in expected.items()}
    result = cli(tmp_path / "clean.jsonl", "--no-code")  # row 8 is kept without the code check
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output and "4 rows" in result.output
    result = cli(tmp_path / "absent.jsonl")
    assert result.exit_code == 2 and "absent.jsonl: no such file" in result.output


def test_a_missing_column_is_reported_for_the_whole_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "1 + 1?", "answer": "2"}\n')
    report, _ = check_dataset(str(path), load_recipe())
    assert [(p.row, p.kind) for p in report.problems] == [(None, "missing_column")]
    assert "columns: question, answer" in report.problems[0].reason
    report, _ = check_dataset(str(path), load_recipe(None, ["data.prompt_column=question"]))
    assert report.ok


def test_conversations_and_answers_only_where_a_math_reward_needs_them():
    rows = [
        {"prompt": [], "answer": "1"},
        {"prompt": [{"role": "user", "content": " "}], "answer": "1"},
        {"prompt": [{"role": "user", "content": "hi"}], "answer": None},
        {"prompt": [{"role": "user", "content": "hi"}], "answer": "2"},
    ]
    assert by_kind(check_rows(rows, needs_answer=True)) == {
        "empty_prompt": [0, 1],
        "missing_answer": [2],
        "duplicate_prompt": [3],
    }
    assert by_kind(check_rows(rows)) == {"empty_prompt": [0, 1], "duplicate_prompt": [3]}


def test_the_loader_drops_and_counts_bad_rows_or_refuses_them(bad_file):
    recipe = load_recipe(None, ["data.task=dataset", f"data.dataset={bad_file}", "data.num_test=2"])
    task = load_task(recipe.data, 0)
    # the cheap checks only: the over-long prompt goes at rendering, the others need the verifier or sandbox
    assert task.dropped == {"missing_prompt": 1, "empty_prompt": 2, "missing_answer": 1, "duplicate_prompt": 1}
    assert set(task.dropped) <= set(CHEAP_KINDS)
    assert len(task.train) + len(task.test) == len(ROWS) - 5
    prompts = [r["prompt"] for r in task.train + task.test]
    assert prompts.count("What is 2 + 3?") == 1 and all(p and p.strip() for p in prompts)
    # without a math reward a blank answer is no reason to drop a row
    assert "missing_answer" not in load_task(recipe.data, 0, needs_answer=False).dropped
    recipe.data.bad_rows = "error"
    with pytest.raises(ValueError, match=r"row 1: empty_prompt.*rlwhf data check"):
        load_task(recipe.data, 0)


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"question": "1+1?", "answer": "2"}\n', "has no column 'prompt'"),
        ("", "is empty: expected rows with the recipe's columns"),
        (b'{"prompt": "\xff\xfe caf\xe9", "answer": "2"}\n', "is not UTF-8 text"),
    ],
    ids=["missing-column", "empty", "not-utf8"],
)
def test_data_show_names_a_file_it_cannot_use_in_one_line(tmp_path, content, expected):
    import subprocess
    import sys

    data = tmp_path / "data.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{task: dataset, dataset: {data}, num_test: 1}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "data", "show", str(recipe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and expected in proc.stderr and str(data) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
