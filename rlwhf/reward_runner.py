"""Score completions with every reward of a recipe, in worker processes, under a time limit.

One call scores one prompt group with one reward. A call that raises, returns anything but one
finite number (or None) per completion, or outlives ``timeout_s`` scores ``on_error`` for the whole
group and is counted; a hung worker is killed and replaced. A reward module's ``warm_up()`` runs once
per worker before its first call, under ``warm_up_timeout_s``; one that hangs disables the rewards of
that module for the rest of the run (each of their calls then fails at once, saying why), instead of
costing every call the start-up time. Whether a failing reward stops the run is the loop's choice.

Workers are started with the 'spawn' method (safe inside threads, Ray actors and vLLM) on first use.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import numbers
import queue
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import rewards
from rlwhf.config import RewardSpec


def _worker_main(conn, preload: tuple[str, ...] = ()) -> None:
    cache: dict[str, object] = {}
    warmed: set[str] = set()
    for name in preload:  # import the rewards, and warm up their modules, before the first timed call
        try:
            cache[name] = fn = rewards.get(name)
            warm_up = getattr(sys.modules.get(fn.__module__), "warm_up", None)
            if callable(warm_up) and fn.__module__ not in warmed:
                warmed.add(fn.__module__)
                conn.send(("warming", fn.__module__))  # the parent times each warm_up() on its own
                warm_up()
        except Exception:  # reported by the call that needs it
            pass
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        name, completions, prompts, columns = task
        try:
            fn = cache.get(name) or cache.setdefault(name, rewards.get(name))
            conn.send(("ok", checked_scores(fn(completions, prompts=prompts, **columns), len(completions))))
        except Exception:  # the reward's own bug: report, keep serving
            conn.send(("error", traceback.format_exc(limit=5)))


def checked_scores(scores, expected: int) -> list[float | None]:
    """A reward's return value as floats: one per completion, each a finite real number or None."""
    try:
        scores = list(scores)
    except TypeError:
        raise ValueError(f"returned {type(scores).__name__}; expected a list of {expected} numbers") from None
    if len(scores) != expected:
        raise ValueError(f"returned {len(scores)} scores for {expected} completions")
    clean = []
    for i, s in enumerate(scores):
        if s is not None and not (isinstance(s, numbers.Real) and math.isfinite(s)):
            raise ValueError(f"returned {s!r} for completion {i}; expected a finite number or None")
        clean.append(None if s is None else float(s))
    return clean


class WarmUpHung(RuntimeError):
    """A reward module's ``warm_up()`` did not finish within its time limit."""

    def __init__(self, module: str, seconds: float):
        super().__init__(f"warm_up() of module {module!r} did not finish within {seconds:g} s")
        self.module = module


class _Worker:
    STARTUP_TIMEOUT_S = 120.0  # interpreter and imports; neither is charged to a call's limit

    def __init__(self, ctx, preload, warm_up_timeout_s: float = 120.0):
        self.ctx = ctx
        self.preload = preload  # a callable: the reward names to import and warm up at start
        self.warm_up_timeout_s = warm_up_timeout_s
        self.process = None
        self.conn = None
        self.starts = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.process = self.ctx.Process(target=_worker_main, args=(child, tuple(self.preload())), daemon=True)
        self.process.start()
        self.starts += 1
        child.close()
        self.conn = parent
        warming = None
        while True:
            limit = self.warm_up_timeout_s if warming else self.STARTUP_TIMEOUT_S
            if not parent.poll(limit):
                self.kill()
                if warming:
                    raise WarmUpHung(warming, limit)
                raise RuntimeError(f"reward worker process did not start within {limit:g} s")
            kind, payload = parent.recv()
            if kind == "ready":
                return
            warming = payload

    def call(self, task, timeout_s: float):
        if self.process is None or not self.process.is_alive():
            try:
                self._start()
            except WarmUpHung:
                raise
            except (RuntimeError, OSError, EOFError) as exc:
                return ("error", str(exc))
        self.conn.send(task)
        if self.conn.poll(timeout_s):
            try:
                return self.conn.recv()
            except EOFError:  # the worker died mid-call (e.g. os._exit in the reward)
                self.kill()
                return ("error", "reward worker process died")
        self.kill()
        return ("timeout", f"no answer within {timeout_s:g} s")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join(timeout=5)
            self.conn.close()
        self.process = None

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                self.conn.send(None)
                self.process.join(timeout=2)
            except (BrokenPipeError, OSError):
                pass
        self.kill()


@dataclass
class GroupToScore:
    prompt: object  # the data set's prompt: text, or a conversation (TRL's list of messages)
    completions: list  # text, or for a conversational prompt one [{"role": "assistant", ...}] each
    columns: dict = field(default_factory=dict)  # one value per group (e.g. the gold answer)
    per_completion: dict = field(default_factory=dict)  # one list per column, a value per completion


@dataclass
class Failure:
    """One reward call that scored ``on_error``: which reward, which group, why."""

    reward: str
    group: int
    status: str  # "error" (raised, exited, bad value) or "timeout"
    detail: str  # the last line of the traceback or the reason

    def __str__(self) -> str:
        return f"reward {self.reward!r} on group {self.group}: {self.status}: {self.detail}"


@dataclass
class Scores:
    per_reward: dict[str, list[float | None]]  # name -> one score per completion, groups concatenated
    total: list[float]
    errors: dict[str, int]
    timeouts: dict[str, int]
    failures: list[Failure]  # one per failed call (reward, group)


class RewardRunner:
    def __init__(
        self,
        specs: list[RewardSpec],
        *,
        timeout_s: float = 10.0,
        num_workers: int = 2,
        warm_up_timeout_s: float = 120.0,
    ):
        # fail at start-up on a name that cannot resolve, not mid-run
        self.modules = {spec.name: rewards.get(spec.name).__module__ for spec in specs}
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("each reward may be listed once in rewards.funcs")
        self.specs = specs
        self.timeout_s = timeout_s
        self.disabled: dict[str, str] = {}  # reward name -> why its calls fail at once
        ctx = mp.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(ctx, self._preload, warm_up_timeout_s) for _ in range(num_workers)]
        for w in self._workers:
            self._idle.put(w)
        self._pool = ThreadPoolExecutor(num_workers)
        self._lock = threading.Lock()

    def _preload(self) -> list[str]:
        return [s.name for s in self.specs if s.name not in self.disabled]

    def _run(self, task):
        name = task[0]
        worker = self._idle.get()
        try:
            while name not in self.disabled:
                try:
                    return worker.call(task, self.timeout_s)
                except WarmUpHung as exc:  # disable that module's rewards; the worker restarts without them
                    with self._lock:
                        for reward_name, module in self.modules.items():
                            if module == exc.module:
                                self.disabled.setdefault(reward_name, f"disabled for this run: {exc}")
            return ("error", self.disabled[name])
        finally:
            self._idle.put(worker)

    def score(self, groups: list[GroupToScore]) -> Scores:
        tasks, keys = [], []
        for spec in self.specs:
            for gi, g in enumerate(groups):
                n = len(g.completions)
                columns = {**{k: [v] * n for k, v in g.columns.items()}, **g.per_completion, **spec.kwargs}
                tasks.append((spec.name, g.completions, [g.prompt] * n, columns))
                keys.append((spec, gi))
        results = list(self._pool.map(self._run, tasks))
        per_reward = {s.name: [] for s in self.specs}
        errors = {s.name: 0 for s in self.specs}
        timeouts = {s.name: 0 for s in self.specs}
        failures = []
        by_key = {}
        for (spec, gi), (status, payload) in zip(keys, results):
            n = len(groups[gi].completions)
            if status == "ok":
                by_key[spec.name, gi] = payload
            else:
                (timeouts if status == "timeout" else errors)[spec.name] += n
                detail = payload.strip().splitlines()[-1] if payload.strip() else status
                failures.append(Failure(spec.name, gi, status, detail))
                by_key[spec.name, gi] = [spec.on_error] * n
        for spec in self.specs:
            for gi in range(len(groups)):
                per_reward[spec.name].extend(by_key[spec.name, gi])
        total = [
            sum(s.weight * (per_reward[s.name][i] or 0.0) for s in self.specs)
            for i in range(sum(len(g.completions) for g in groups))
        ]
        return Scores(per_reward, total, errors, timeouts, failures)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for w in self._workers:
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
