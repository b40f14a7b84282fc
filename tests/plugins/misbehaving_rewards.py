"""Rewards that misbehave, for the reward-isolation tests (named as 'misbehaving_rewards:fn')."""

import os
import time


def raises(completions, **_):
    raise RuntimeError("this reward always fails")


def hangs(completions, **_):
    time.sleep(3600)
    return [1.0] * len(completions)


def exits(completions, **_):
    os._exit(3)


def wrong_length(completions, **_):
    return [1.0]


def length(completions, **_):
    return [float(len(c)) for c in completions]


def echo_answer(completions, *, answer, **_):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def nan(completions, **_):
    return [float("nan")] * len(completions)


def inf(completions, **_):
    return [float("inf")] * len(completions)


def text(completions, **_):
    return ["1.0"] * len(completions)


def numpy_floats(completions, **_):
    import numpy as np

    return [np.float32(0.5) for _ in completions]
