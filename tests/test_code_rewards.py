"""The code_tests reward: extraction, stdio cases, function-call cases, and programs that cheat.

Tests that run programs take the ``sandbox`` fixture (tests/conftest.py): where no program can run they
fail with the reason, or skip when RLWHF_SANDBOX_TESTS=skip; the others run everywhere."""

from __future__ import annotations

import pytest

import rewards
from rewards import sandbox as sandbox_module
from rewards.code import code_tests
from rewards.code_harness import TEST_TIMEOUT_S, extract_code, parse_function_tests, score_code

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-5, 7) == 2", "assert add(10, 32) == 42"]


def block(src: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{src}\n```\n"


# ------------------------------------------------------------------------------------- extraction


def test_extract_code_takes_the_last_closed_python_block():
    text = "```python\nfirst()\n```\ntext\n```py\nsecond()\n```\n```bash\nls\n```\n```python\nunclosed("
    assert extract_code(text) == "second()\n"


def test_extract_code_accepts_untagged_blocks_and_returns_none_without_one():
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("print(1)") is None


def test_code_tests_is_registered_under_its_name():
    assert rewards.get("code_tests") is code_tests


# ------------------------------------------------------------------------------------------- stdio

STDIO = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10"}, {"input": "-1 1", "output": "0"}]


def test_stdio_correct_program_scores_one_and_ignores_trailing_whitespace(sandbox):
    sol = block("a, b = map(int, input().split())\nprint(a + b, end='   \\n\\n')")
    assert code_tests([sol], prompts=[""], tests=[STDIO]) == [1.0]


def test_stdio_partial_credit_is_the_fraction_of_cases_passed(sandbox):
    sol = block("a, b = map(int, input().split())\nprint(abs(a) + b)")  # wrong on the negative case
    assert code_tests([sol], prompts=[""], tests=[STDIO]) == [pytest.approx(2 / 3)]


def test_stdio_crash_after_correct_output_fails_the_case(sandbox):
    sol = block("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)")
    assert code_tests([sol], prompts=[""], tests=[STDIO]) == [0.0]


def test_stdio_hanging_case_fails_alone(sandbox):
    # the default limit (2 s), not a shorter one: the cases that end must end in time on a busy machine too
    sol = "a, b = map(int, input().split())\nif a == 5:\n    while True: pass\nprint(a + b)"
    assert score_code(block(sol), STDIO) == pytest.approx(2 / 3)


def test_per_sample_timeout_column_bounds_a_hanging_batch(sandbox, monkeypatch):
    real_run, runs = sandbox_module.run, []

    def recorded(*args, **kw):  # the real run, remembering each call's limit and outcome
        res = real_run(*args, **kw)
        runs.append((kw["timeout_s"], res.status))
        return res

    monkeypatch.setattr(sandbox_module, "run", recorded)
    hang = block("while True: pass")
    scores = code_tests([hang] * 4, prompts=[""] * 4, tests=[STDIO] * 4, test_timeout_s=[0.2, None, 0.2, 0.2])
    assert scores == [0.0] * 4
    # each of the 12 runs stopped at its completion's limit (None: the default), not at a fixed one
    assert sorted(runs) == sorted([(0.2, "timeout")] * 9 + [(TEST_TIMEOUT_S, "timeout")] * 3)


def test_stdio_program_sees_only_its_input_not_the_expected_output(sandbox):
    sol = "import os, sys\ndata = sys.stdin.read()\nprint(repr(data), os.listdir('.'), os.listdir('/tmp'))"
    res = sandbox_module.run(extract_code(block(sol)), stdin="1 2\n")
    assert res.stdout == "'1 2\\n' [] []\n"


def test_apps_style_inputs_outputs_dict_and_json_text_are_accepted(sandbox):
    sol = block("print(int(input()) * 2)")
    apps = {"inputs": ["1\n", "4\n"], "outputs": ["2\n", "8\n"]}
    assert score_code(sol, apps) == 1.0
    assert score_code(sol, '[{"input": "3", "output": "6"}]') == 1.0


# ------------------------------------------------------------------------------- function calls


def test_function_tests_correct_partial_and_missing_code(sandbox):
    good = block("def add(a, b):\n    return a + b")
    off = block("def add(a, b):\n    return a + b if a > 0 else -1")
    scores = code_tests([good, off, "I don't know."], prompts=[""] * 3, tests=[ADD_TESTS] * 3)
    assert scores == [1.0, pytest.approx(2 / 3), 0.0]


def test_no_tests_means_the_reward_does_not_apply():
    assert code_tests([block("print(1)")] * 2, prompts=["", ""], tests=[None, []]) == [None, None]


def test_function_tests_with_setup_imports_and_conversions(sandbox):
    tests = "import math\nassert math.isclose(area(2), 12.566, rel_tol=1e-3)\nassert list(evens(5)) == [0, 2, 4]"
    sol = block(
        "import math\ndef area(r):\n    return math.pi * r * r\ndef evens(n):\n    return (i for i in range(n) if i % 2 == 0)"
    )
    assert score_code(sol, tests) == 1.0


def test_function_test_that_raises_or_hangs_fails(sandbox):
    sol = block("def add(a, b):\n    if a == 1:\n        raise ValueError\n    return a + b")
    assert score_code(sol, ADD_TESTS) == pytest.approx(2 / 3)
    assert score_code(block("def add(a, b):\n    while True: pass"), ADD_TESTS, timeout_s=0.5) == 0.0


def test_unusable_test_specs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least one assert"):
        parse_function_tests("x = 1")
    with pytest.raises(ValueError, match="calls the solution"):
        parse_function_tests(["x = add(1, 2)", "assert x == 3"])
    with pytest.raises(ValueError, match="'input' and 'output'"):
        score_code(block("print(1)"), [{"stdin": "1"}])
    with pytest.raises(ValueError, match="2 completions but 1"):
        code_tests(["a", "b"], prompts=["", ""], tests=[ADD_TESTS])


# --------------------------------------------------------------------------------------- cheaters

CHEATS = {
    "exits-0-early": "import os\nos._exit(0)",
    "sys-exit-0": "import sys\nsys.exit(0)",
    "always-equal": "class A:\n    def __eq__(self, other): return True\n    __ne__ = lambda s, o: False\n"
    "def add(a, b):\n    return A()",
    "int-subclass": "class I(int):\n    def __eq__(self, other): return True\ndef add(a, b):\n    return I(0)",
    "patched-builtins": "import builtins\nbuiltins.AssertionError = type('E', (BaseException,), {})\n"
    "builtins.print = lambda *a, **k: None\nbuiltins.isinstance = lambda *a: True\n"
    "def add(a, b):\n    return 0",
    "prints-pass-and-fake-verdict": "print('All tests passed!')\n"
    "print('\\x00rlwhf-verdict', '[true, true, true]')\n"
    "def add(a, b):\n    return 0",
    "patched-json-encoder": "import json\njson.dumps = lambda *a, **k: '[\"bool\", true]'\n"
    "def add(a, b):\n    return 0",
    "kills-its-own-process-on-call": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)",
}


# Correct solutions that change their own interpreter (as fast-IO templates and careless code do):
# the harness that runs after them in their process must use none of what they changed.
CHANGES_ITS_INTERPRETER = {
    "rebinds-print-repr-eval-exec": "import builtins\nbuiltins.print = builtins.repr = builtins.eval = builtins.exec = None",
    "rebinds-the-builtins-a-harness-uses": "import builtins\nfor name in ('enumerate', 'type', 'hex', 'compile', 'str', 'list', "
    "'int', 'isinstance', 'BaseException', 'Exception', 'ValueError', 'TypeError'):\n"
    "    setattr(builtins, name, None)",
    "patches-json": "import json\njson.dumps = json.loads = None",
    "rebinds-os-and-sys": "import os, sys\nos.write = os.dup = os._exit = sys.exit = None",
    "replaces-sys-stdout": "import io, sys\nsys.stdout = io.StringIO()",
    "closes-its-stdout": "import os\nos.close(1)",
    "prints-a-line-without-its-end": "print('thinking', end='')",
    "lowers-its-rlimits": "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))",
    "fast-io-input": "import builtins, sys\nbuiltins.input = lambda: sys.stdin.readline().rstrip()",
}


@pytest.mark.parametrize("prelude", list(CHANGES_ITS_INTERPRETER.values()), ids=list(CHANGES_ITS_INTERPRETER))
def test_function_tests_pass_a_correct_solution_that_changes_its_interpreter(sandbox, prelude):
    assert score_code(block(prelude + "\ndef add(a, b):\n    return a + b"), ADD_TESTS) == 1.0


@pytest.mark.parametrize("cheat", list(CHEATS), ids=list(CHEATS))
def test_programs_cannot_fake_a_pass_on_function_tests(sandbox, cheat):
    assert score_code(block(CHEATS[cheat]), ADD_TESTS) == 0.0


def test_program_cannot_find_the_expected_values_in_its_process(sandbox):
    # a cheater that searches its memory and caller frames for the assert's expected value
    sol = """
import gc, re, sys
def add(a, b):
    seen = [o for o in gc.get_objects() if isinstance(o, str) and "==" in o]
    frame = sys._getframe(1)
    while frame is not None:
        seen += [repr(v) for v in frame.f_locals.values()]
        frame = frame.f_back
    for text in seen:
        m = re.search(r"== (\\d+)", text)
        if m:
            return int(m.group(1))
    return -1
"""
    assert score_code(block(sol), ["assert add(2, 2) == 77", "assert add(3, 3) == 78"]) == 0.0


def test_batch_of_mixed_completions_is_scored_in_order(sandbox):
    good = block("def add(a, b):\n    return a + b")
    batch = [good, block(CHEATS["always-equal"]), good, "no code", block(CHEATS["exits-0-early"])] * 2
    assert code_tests(batch, prompts=[""] * len(batch), tests=[ADD_TESTS] * len(batch)) == [1.0, 0.0, 1.0, 0.0, 0.0] * 2
