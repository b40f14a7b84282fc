"""Score completions with every reward of a recipe, in worker processes, under a time limit.

One call scores one prompt group with one reward. A call that raises, returns the wrong number of
scores or outlives ``timeout_s`` scores ``on_error`` for the whole group and is counted; a hung
worker is killed and replaced. Nothing a reward does stops the run.

Workers are started with the 'spawn' method (safe inside threads, Ray actors and vLLM) on first use.
"""

from __future__ import annotations

import math
import multiprocessing as mp
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
            scores = list(fn(completions, prompts=prompts, **columns))
            if len(scores) != len(completions):
                raise ValueError(f"returned {len(scores)} scores for {len(completions)} completions")
            clean = []
            for s in scores:
                if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s)):
                    raise ValueError(f"returned {s!r}; expected a finite number or None")
                clean.append(None if s is None else float(s))
            conn.send(("ok", clean))
        except Exception:  # the reward's own bug: report, keep serving
            conn.send(("error", traceback.format_exc(limit=5)))


class _Worker:
    STARTUP_TIMEOUT_S = 120.0  # start-up (interpreter, imports) is not charged to a call's limit

    def __init__(self, ctx, preload: tuple[str, ...] = ()):
        self.ctx = ctx
        self.preload = preload
        self.process = None
        self.conn = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.process = self.ctx.Process(target=_worker_main, args=(child, self.preload), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        if not (parent.poll(self.STARTUP_TIMEOUT_S) and parent.recv()[0] == "ready"):
            self.kill()
            raise RuntimeError(f"reward worker process did not start within {self.STARTUP_TIMEOUT_S:g} s")

    def call(self, task, timeout_s: float):
        if self.process is None or not self.process.is_alive():
            try:
                self._start()
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
    prompt: str
    completions: list[str]
    columns: dict = field(default_factory=dict)  # one value per group (e.g. the gold answer)


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
    def __init__(self, specs: list[RewardSpec], *, timeout_s: float = 10.0, num_workers: int = 2):
        for spec in specs:  # fail at start-up on a name that cannot resolve, not mid-run
            rewards.get(spec.name)
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("each reward may be listed once in rewards.funcs")
        self.specs = specs
        self.timeout_s = timeout_s
        ctx = mp.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(ctx, tuple(s.name for s in specs)) for _ in range(num_workers)]
        for w in self._workers:
            self._idle.put(w)
        self._pool = ThreadPoolExecutor(num_workers)
        self._lock = threading.Lock()

    def _run(self, task):
        worker = self._idle.get()
        try:
            return worker.call(task, self.timeout_s)
        finally:
            self._idle.put(worker)

    def score(self, groups: list[GroupToScore]) -> Scores:
        tasks, keys = [], []
        for spec in self.specs:
            for gi, g in enumerate(groups):
                n = len(g.completions)
                columns = {**{k: [v] * n for k, v in g.columns.items()}, **spec.kwargs}
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
