"""A reward module whose ``warm_up()`` never finishes, for the reward runner's warm-up limit test."""

import time


def warm_up() -> None:
    time.sleep(3600)


def never_warm(completions, **_):
    return [1.0] * len(completions)
