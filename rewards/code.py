"""The ``code_tests`` reward: the fraction of its tests that each completion's last Python block
passes, run in the sandbox (``rewards.sandbox``) by the harness (``rewards.code_harness``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rewards import reward, text_of
from rewards.code_harness import TEST_MEMORY_MB, TEST_TIMEOUT_S, score_code
from rewards.sandbox import max_workers


@reward("code_tests")
def code_tests(
    completions: list[str], *, prompts: list[str] | None = None, tests: list, **columns
) -> list[float | None]:
    """Fraction of tests passed by the last fenced Python block of each completion.

    ``tests[i]`` belongs to completion ``i``: a list of ``{"input", "output"}`` dicts (stdio
    cases) or assert statements (a string or list of strings; non-assert lines are setup), or
    either as JSON text. None or empty tests score None (reward does not apply); a completion
    without a code block scores 0.0. Programs run in ``rewards.sandbox.run``.

    Optional columns, one value per completion (None: the default): ``test_timeout_s`` (wall
    limit per stdio case or per phase of function-call tests, default ``TEST_TIMEOUT_S``) and
    ``test_memory_mb`` (default ``TEST_MEMORY_MB``). A batch's worst case, every program hanging,
    takes about cases x ``test_timeout_s`` / workers seconds; keep the reward's time limit above it.
    """
    if len(tests) != len(completions):
        raise ValueError(f"code_tests got {len(completions)} completions but {len(tests)} test specs")
    n = len(completions)
    timeouts = columns.get("test_timeout_s") or [None] * n
    memories = columns.get("test_memory_mb") or [None] * n
    jobs = [
        (text_of(c), t, to or TEST_TIMEOUT_S, mb or TEST_MEMORY_MB)
        for c, t, to, mb in zip(completions, tests, timeouts, memories)
    ]
    workers = max_workers()
    with ThreadPoolExecutor(max_workers=workers) as inner, ThreadPoolExecutor(max_workers=workers) as outer:
        return list(outer.map(lambda job: score_code(job[0], job[1], job[2], job[3], executor=inner), jobs))
