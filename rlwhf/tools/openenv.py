"""OpenEnv's environments in an rlwhf episode, unchanged.

An OpenEnv environment (``openenv.core.env_server.interfaces.Environment``, openenv-core 0.3) is a
class with ``reset(seed=None, episode_id=None, **kwargs) -> Observation`` and ``step(action) ->
Observation``, whose ``Action`` and ``Observation`` are pydantic models it defines (an observation
carries ``done``, ``reward`` and ``metadata`` besides its own fields). ``OpenEnvAdapter`` makes one an
``rlwhf.tools.Environment``:

- the model's turn becomes the environment's action: its action class (read from the class's
  ``Environment[Action, Observation, State]`` parameters) built with the turn's text in its one text
  field (a class with several required fields cannot be filled from text, and is refused);
- an observation becomes text: its own text field, or its own fields as JSON when it has several;
  ``done`` and ``reward`` pass through; the reset observation (when it has text) opens the episode;
- ``reset`` receives the prompt's row as keyword arguments (OpenEnv passes extra reset arguments on
  to the environment), so a task's row can configure its episode.

Nothing of openenv is imported here: the adapter reads the environment's own classes.
"""

from __future__ import annotations

import json
import typing

from rlwhf.tools.base import Step

_BASE_FIELDS = {"done", "reward", "metadata"}


def _type_arguments(cls) -> tuple:
    for klass in getattr(cls, "__mro__", ()):
        for base in getattr(klass, "__orig_bases__", ()):
            if getattr(typing.get_origin(base), "__name__", "") == "Environment":
                return typing.get_args(base)
    return ()


class OpenEnvAdapter:
    stop: list[str] = []

    def __init__(self, env):
        self.env = env
        arguments = _type_arguments(type(env))
        if not arguments:
            raise ValueError(
                f"{type(env).__name__}: an OpenEnv environment declares its action type "
                "(class MyEnv(Environment[MyAction, MyObservation, MyState]))"
            )
        self.action_cls = arguments[0]
        fields = {n: f for n, f in self.action_cls.model_fields.items() if n != "metadata"}
        text_fields = [n for n, f in fields.items() if f.annotation is str]
        required = [n for n, f in fields.items() if f.is_required()]
        if len(text_fields) != 1 or any(n not in text_fields for n in required):
            raise ValueError(
                f"{self.action_cls.__name__}: the adapter fills one text field with the model's turn; "
                f"this action has text fields {text_fields} and required fields {required}"
            )
        self.action_field = text_fields[0]

    @staticmethod
    def _text(observation) -> str | None:
        own = {n: getattr(observation, n) for n in type(observation).model_fields if n not in _BASE_FIELDS}
        texts = [v for v in own.values() if isinstance(v, str)]
        if len(own) == 1 and texts:
            return texts[0] or None
        return json.dumps(own, default=str) if own else None

    def reset(self, row: dict) -> str | None:
        return self._text(self.env.reset(**row))

    def step(self, turn: str) -> Step:
        observation = self.env.step(self.action_cls(**{self.action_field: turn}))
        return Step(
            self._text(observation),
            done=bool(observation.done),
            reward=float(observation.reward or 0.0),
            role="user",
        )
