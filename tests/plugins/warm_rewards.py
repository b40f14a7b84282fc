"""A reward module with a slow ``warm_up()``, for the reward runner's warm-up tests."""

import time

_warmed_at: list[float] = []


def warm_up() -> None:
    time.sleep(1.5)  # longer than the tests' per-call limit: it must not be charged to a call
    _warmed_at.append(time.time())


def warmed(completions, **_):
    """How many times this process ran ``warm_up()``."""
    return [float(len(_warmed_at)) for _ in completions]
