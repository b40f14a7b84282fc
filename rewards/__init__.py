"""Reward plugins and their registry.

A reward function follows TRL's ``reward_funcs`` convention::

    def my_reward(completions: list[str], *, prompts: list[str], **columns) -> list[float | None]

``columns`` are the dataset's other columns (``answer``, ``tests``, ...), one value per completion.
``None`` means "this reward does not apply to this sample" and is scored as 0 in the total.
As in TRL, when the data set's prompts are conversations (lists of ``{"role", "content"}``
messages), ``prompts`` are those lists and each completion is ``[{"role": "assistant", "content":
text}]``; ``text_of`` turns either shape into text, as the built-in rewards do.

Three ways to make a reward known by name:

* ``@rewards.reward("name")`` on a function in an imported module;
* an entry point in the group ``rlwhf.rewards`` (``name = "package.module:function"``);
* naming it in a recipe as ``my_rewards.py:function`` (a file; a relative path in a recipe file starts
  from the recipe's folder) or ``package.module:function`` (an importable module).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

RewardFn = Callable[..., list]

ENTRY_POINT_GROUP = "rlwhf.rewards"
# Modules holding the built-in rewards; imported on first lookup so that `import rewards` stays cheap.
BUILTIN_MODULES = ("rewards.format", "rewards.math", "rewards.code", "rewards.steps", "rewards.gym", "rewards.episode")

_registry: dict[str, RewardFn] = {}
_builtins_loaded = False


class UnknownRewardError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence.
        return str(self.args[0])


def text_of(item) -> str:
    """A prompt or completion as text: a string as it is; a conversation (TRL's shape, a list of
    ``{"role", "content"}`` messages) as the content of its last message."""
    if isinstance(item, str):
        return item
    if isinstance(item, (list, tuple)) and item and isinstance(item[-1], dict):
        return str(item[-1].get("content", ""))
    return "" if item is None else str(item)


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register the decorated function under ``name``."""

    def register(fn: RewardFn) -> RewardFn:
        existing = _registry.get(name)
        if existing is not None and _qualname(existing) != _qualname(fn):
            raise ValueError(
                f"reward name {name!r} is already registered by {_qualname(existing)}; "
                f"{_qualname(fn)} needs another name"
            )
        fn.reward_name = name  # type: ignore[attr-defined]
        _registry[name] = fn
        return fn

    return register


def _qualname(fn: RewardFn) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a dependency of the module is missing: say so
                    raise
        _builtins_loaded = True


def import_function(spec: str) -> RewardFn:
    """``module:function`` imported by name, or ``path/to/file.py:function`` loaded from the file (under a
    name of its own, so a file called ``rewards.py`` or ``math.py`` collides with nothing)."""
    module_name, _, attr = spec.rpartition(":")
    try:
        module = _load_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    except Exception as exc:  # a missing module, a syntax error, or the module's own code raising at import
        raise UnknownRewardError(f"cannot import {module_name!r}: {error_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownRewardError(f"{module_name!r} has no function {attr!r}")
    return fn


def _load_file(path: str):
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no such file (looked for beside the recipe, then in {Path.cwd()})")
    name = f"rlwhf_plugin_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it, as import does: its functions pickle by this name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def error_line(exc: BaseException) -> str:
    """A reward's error in one line: its type and first line, and where: a syntax error's file and
    line, else the innermost frame outside rlwhf's own package (the reward's code, not its caller)."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    if isinstance(exc, ModuleNotFoundError | FileNotFoundError):
        return str(exc)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}rlwhf{os.sep}" not in f.filename]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}{where}"


def _entry_point(name: str) -> RewardFn | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    return None


def get(name: str) -> RewardFn:
    """Look a reward up by registered name, entry-point name, or ``package.module:function``."""
    if ":" in name:
        return import_function(name)
    if name not in _registry:
        _load_builtins()
    if name in _registry:
        return _registry[name]
    fn = _entry_point(name)
    if fn is not None:
        return fn
    raise UnknownRewardError(
        f"unknown reward {name!r}; known rewards: {', '.join(available())}. A function of your own is "
        "named by its file, 'my_rewards.py:function' (a relative path in a recipe starts from the recipe's "
        "folder), or as 'package.module:function' when it is importable, or by an entry point in group "
        f"{ENTRY_POINT_GROUP!r}; a @rewards.reward({name!r}) in your own file registers the name only once "
        "that file is imported, so name it by its file."
    )


def available() -> list[str]:
    """Names of every registered and entry-point reward."""
    _load_builtins()
    names = set(_registry) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)
