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
* naming it in a recipe as ``package.module:function``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

RewardFn = Callable[..., list]

ENTRY_POINT_GROUP = "rlwhf.rewards"
# Modules holding the built-in rewards; imported on first lookup so that `import rewards` stays cheap.
BUILTIN_MODULES = ("rewards.format", "rewards.math", "rewards.code", "rewards.steps", "rewards.gym")

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


def _import_path(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownRewardError(f"reward {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownRewardError(f"reward {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def _entry_point(name: str) -> RewardFn | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    return None


def get(name: str) -> RewardFn:
    """Look a reward up by registered name, entry-point name, or ``package.module:function``."""
    if ":" in name:
        return _import_path(name)
    if name not in _registry:
        _load_builtins()
    if name in _registry:
        return _registry[name]
    fn = _entry_point(name)
    if fn is not None:
        return fn
    raise UnknownRewardError(
        f"unknown reward {name!r}; known rewards: {', '.join(available())}. A function of your own is "
        f"found by naming it as 'module:function' (the module importable by the workers, e.g. with "
        f"PYTHONPATH=.), or by an entry point in group {ENTRY_POINT_GROUP!r}; a @rewards.reward({name!r}) "
        "in your own module registers it only once that module is imported, so name it 'module:function'."
    )


def available() -> list[str]:
    """Names of every registered and entry-point reward."""
    _load_builtins()
    names = set(_registry) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)
