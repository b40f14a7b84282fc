"""A small game written to OpenEnv's environment interface (openenv-core 0.3), as an OpenEnv user would
write it, with nothing of rlwhf: the player guesses a digit, the game answers higher or lower, and pays
1.0 for the right digit. ``tests/test_environments.py`` runs it unchanged through rlwhf's adapter."""

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


class GuessAction(Action):
    guess: str


class GuessObservation(Observation):
    message: str = ""


class GuessEnv(Environment[GuessAction, GuessObservation, State]):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, default_target: int = 7):
        super().__init__()
        self.default_target = default_target
        self.target = default_target
        self._state = State()

    def reset(self, seed=None, episode_id=None, **kwargs) -> GuessObservation:
        self.target = int(kwargs.get("answer", self.default_target)) % 10
        self._state = State(episode_id=episode_id, step_count=0)
        return GuessObservation(message="Guess a digit from 0 to 9.")

    def step(self, action: GuessAction, timeout_s=None, **kwargs) -> GuessObservation:
        self._state.step_count += 1
        digits = [c for c in action.guess if c.isdigit()]
        if not digits:
            return GuessObservation(message="Say a digit.", reward=0.0)
        guess = int(digits[-1])
        if guess == self.target:
            return GuessObservation(message="Right!", done=True, reward=1.0)
        return GuessObservation(message="Higher." if guess < self.target else "Lower.", reward=0.0)

    @property
    def state(self) -> State:
        return self._state
