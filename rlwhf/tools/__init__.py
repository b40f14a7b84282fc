"""Tools and environments: what a model calls, or talks to, between the turns of an episode.

A **tool** is a Python callable with a name, a description and a JSON schema of its keyword
arguments (``Tool``), named in a recipe's ``rollout.tools`` like a reward: a registered name
(``python`` is built in: ``rlwhf.tools.python``), ``my_tools.py:function`` (a file) or
``package.module:function``. It returns the text the model sees; raising ``ToolFailed`` (or anything
else) gives the model an error observation instead, counted in the metrics, and the run goes on.

An **environment** holds one episode's state (``Environment``): ``reset(row)`` before the model's
first turn (the row is the prompt's dataset row), then ``step(turn)`` after each of the model's turns,
answering with a ``Step``: the observation appended to the episode (or None), whether the episode is
done, and a reward. ``ToolEnvironment`` is the environment of ``rollout.tools``: a turn that ends with a
tool call gets the tool's result, a turn without one ends the episode. A game or a scripted user is an
environment of its own (``rollout.environment``); one written for OpenEnv runs through
``rlwhf.tools.openenv``.

A tool call is read from the end of a turn in either of two shapes:

- a fenced Python block, `` ```python\\n<code>\\n``` ``, which calls the ``python`` tool with ``code``;
- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the JSON shape of Hermes-style chat
  templates (Qwen2.5 and Qwen3 among them), which calls any tool by name.

Generation stops at the end of either (``TOOL_CALL_STOPS``), so the tool runs while the episode waits.
"""

from __future__ import annotations

from collections.abc import Callable

import rewards as reward_plugins
from rlwhf.tools import python as _builtin_tools  # noqa: F401  (registers the built-in tools)
from rlwhf.tools.base import (
    TOOL_CALL_STOPS,
    Environment,
    Step,
    Tool,
    ToolEnvironment,
    ToolFailed,
    _registry,
    as_tool,
    call_with_limit,
    parse_call,
    tool,
)
from rlwhf.tools.openenv import OpenEnvAdapter


def get_tool(spec: str) -> Tool:
    """A tool by registered name, ``file.py:function`` or ``package.module:function``."""
    if ":" in spec:
        try:
            return as_tool(reward_plugins.import_function(spec))
        except reward_plugins.UnknownRewardError as exc:
            raise ValueError(f"tool {spec!r}: {exc}") from None
    if spec not in _registry:
        raise ValueError(
            f"unknown tool {spec!r}; built in: {', '.join(sorted(_registry))}. A tool of your own is named "
            "by its file, 'my_tools.py:function', or as 'package.module:function'"
        )
    return _registry[spec]


def load_environment(spec: str, kwargs: dict | None = None) -> Callable[[], Environment]:
    """A factory of fresh environments for ``rollout.environment`` (``file.py:Class`` or
    ``package.module:Class``); an OpenEnv environment class is wrapped in ``rlwhf.tools.openenv``'s
    adapter."""
    try:
        cls = reward_plugins.import_function(spec)
    except reward_plugins.UnknownRewardError as exc:
        raise ValueError(f"environment {spec!r}: {exc}") from None
    kwargs = kwargs or {}
    if any(base.__module__.startswith("openenv.") for base in getattr(cls, "__mro__", ())):
        return lambda: OpenEnvAdapter(cls(**kwargs))
    return lambda: cls(**kwargs)


__all__ = [
    "TOOL_CALL_STOPS",
    "Environment",
    "Step",
    "Tool",
    "ToolEnvironment",
    "ToolFailed",
    "as_tool",
    "call_with_limit",
    "get_tool",
    "load_environment",
    "parse_call",
    "tool",
]
