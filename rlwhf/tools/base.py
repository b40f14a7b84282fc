"""The parts of ``rlwhf.tools`` that tools and environments are made of (``rlwhf.tools`` explains them)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Protocol

# Where a turn that calls a tool ends: generation stops there (vLLM's stop strings, kept in the output).
TOOL_CALL_STOPS = ["```\n", "</tool_call>"]
_FENCED = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```\n?$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>\s*$", re.DOTALL)


class ToolFailed(Exception):
    """A tool's failure that the model should read: ``status`` is counted (``error``, ``timeout``,
    ``refused``, ...), the message is the observation."""

    def __init__(self, message: str, status: str = "error"):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Tool:
    name: str
    fn: Callable[..., str]
    description: str = ""
    parameters: dict = dataclasses.field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float | None = None  # this tool's own time limit (None: rollout.tool_timeout_s)

    def schema(self) -> dict:
        """The tool as a chat template's ``tools=`` entry (OpenAI's function shape)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


_registry: dict[str, Tool] = {}


def tool(
    name: str | None = None,
    *,
    description: str | None = None,
    parameters: dict | None = None,
    timeout_s: float | None = None,
):
    """Register the decorated function as a tool (its name, the first line of its docstring and a
    schema read from its signature unless given); ``timeout_s``: its own time limit per call."""

    def register(fn):
        made = as_tool(fn, name=name, description=description, parameters=parameters)
        made.timeout_s = timeout_s
        _registry[made.name] = made
        fn.rlwhf_tool = made
        return fn

    return register


def as_tool(fn, *, name: str | None = None, description: str | None = None, parameters: dict | None = None) -> Tool:
    """``fn`` as a ``Tool``: one made by ``@tool`` as it was registered, else described from its
    signature (every keyword parameter a string unless annotated ``int``, ``float`` or ``bool``)."""
    made = getattr(fn, "rlwhf_tool", None)
    if made is not None and name is None and description is None and parameters is None:
        return made
    if parameters is None:
        kinds = {int: "integer", float: "number", bool: "boolean", "int": "integer", "float": "number"}
        properties, required = {}, []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "timeout_s":
                continue
            properties[p.name] = {"type": kinds.get(p.annotation, "string")}
            if p.default is p.empty:
                required.append(p.name)
        parameters = {"type": "object", "properties": properties, "required": required}
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return Tool(
        name or fn.__name__, fn, description if description is not None else (doc[0] if doc else ""), parameters
    )


def parse_call(turn: str) -> tuple[str, dict] | None:
    """The tool call a turn ends with, as ``(tool name, arguments)``; None when it ends with none.
    A ``<tool_call>`` whose JSON does not parse is a call of the tool ``<malformed>`` (an error the
    model is shown)."""
    fenced = _FENCED.search(turn)
    if fenced:
        return "python", {"code": fenced.group(1)}
    tagged = _TAGGED.search(turn)
    if tagged:
        try:
            call = json.loads(tagged.group(1))
            return str(call["name"]), dict(call.get("arguments") or {})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return "<malformed>", {"error": f"the tool call is not JSON with a name and arguments ({exc})"}
    return None


@dataclasses.dataclass
class Step:
    """What an environment answers to one of the model's turns."""

    observation: str | None = None  # appended to the episode (None: nothing)
    done: bool = False
    reward: float = 0.0  # added to the episode's environment reward (the ``env_reward`` column)
    role: str = "tool"  # "tool" (a tool's result) or "user" (a scripted user, a game's reply)
    tool: str | None = None  # the tool called, if any
    status: str = "ok"  # ok, error, timeout, refused, unknown_tool, flood
    seconds: float = 0.0


class Environment(Protocol):
    """One episode's state. ``stop``: strings at which a turn ends besides the end of the message."""

    stop: list[str]

    def reset(self, row: dict) -> str | None: ...

    def step(self, turn: str) -> Step: ...


def call_with_limit(fn: Callable[[], str], timeout_s: float) -> tuple[str, str]:
    """``fn()``'s text and status (``ok``, ``error`` or ``timeout``), within ``timeout_s``. A call that
    overruns is left to finish in its daemon thread, unread; a tool that can hang should run its work
    in a process it can kill (the ``python`` tool does)."""
    box: dict = {}

    def target():
        try:
            box["out"] = fn()
        except ToolFailed as exc:
            box["failed"] = (str(exc), exc.status)
        except Exception as exc:  # a tool's own bug: the model sees the error, the run goes on
            box["failed"] = (f"{type(exc).__name__}: {exc}", "error")

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"the tool did not answer within {timeout_s:g} s", "timeout"
    if "failed" in box:
        return box["failed"]
    out = box.get("out")
    return ("" if out is None else str(out)), "ok"


class ToolEnvironment:
    """``rollout.tools`` as an environment: a turn ending with a tool call gets the tool's result (at
    most ``max_chars`` characters of it; a longer one is cut and counted as ``flood``); a turn that
    ends otherwise ends the episode."""

    stop = TOOL_CALL_STOPS

    def __init__(self, tools: list[Tool], timeout_s: float = 5.0, max_chars: int = 1000):
        self.tools = {t.name: t for t in tools}
        self.timeout_s, self.max_chars = timeout_s, max_chars

    def reset(self, row: dict) -> str | None:
        return None

    def step(self, turn: str) -> Step:
        call = parse_call(turn)
        if call is None:
            # Stopped at a closing fence that closes no python block (an output block the model wrote
            # itself): not a call, and not the end of the episode either.
            done = not any(turn.endswith(s) for s in self.stop)
            return Step(None, done=done)
        name, arguments = call
        t0 = time.perf_counter()
        if name not in self.tools:
            known = ", ".join(sorted(self.tools)) or "none"
            text = arguments.get("error") if name == "<malformed>" else f"unknown tool {name!r}; the tools are: {known}"
            return Step(f"error: {text}", tool=name, status="unknown_tool", seconds=time.perf_counter() - t0)
        fn, limit = self.tools[name].fn, self.tools[name].timeout_s or self.timeout_s
        if "timeout_s" in inspect.signature(fn).parameters:
            arguments = {**arguments, "timeout_s": limit}
        text, status = call_with_limit(lambda: fn(**arguments), limit + 1.0)
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"\n... [{len(text) - self.max_chars} more characters cut]"
            status = "flood" if status == "ok" else status
        if status not in ("ok", "flood") and not text.startswith("error"):
            text = f"error: {text}" if status == "error" else f"error ({status}): {text}"
        return Step(text, tool=name, status=status, seconds=time.perf_counter() - t0)
