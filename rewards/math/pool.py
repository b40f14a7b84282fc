"""Helper processes for the sympy path: started with ``subprocess`` (not ``multiprocessing``),
so they work from any thread, Ray actor or daemonic process; each item runs under a time limit
and a helper that overruns is killed and replaced."""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait

from rewards.math.options import DEFAULTS, HELPER_MEMORY_BYTES, STARTUP_TIMEOUT_S, Options
from rewards.math.parsing import parse
from rewards.math.symbolic import _decide_sympy


def _helper_main(read_fd: int, write_fd: int, memory_bytes: int) -> None:
    """Entry point of a helper process: serve jobs until the pipe closes."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except Exception:
        pass
    sys.setrecursionlimit(5000)
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    import sympy  # noqa: F401  (imported before "ready": start-up is not charged to a call)

    try:  # sympy imports much of itself lazily on first use; do that before "ready" too
        _decide_sympy(parse("[0, 1)"), parse("0 \\le x < 1"), DEFAULTS, {"budget_s": 0.0})
        _decide_sympy(parse("\\sin^2 x"), parse("1 - \\cos^2 x"), DEFAULTS, {"budget_s": 0.0})
    except Exception:
        pass

    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            gold, trees_per_item, options, budget_s = conn_in.recv()
        except (EOFError, OSError):
            os._exit(0)
        for k, trees in enumerate(trees_per_item):
            verdict, by_probes = False, False
            for tree in trees:
                notes = {"budget_s": budget_s}
                try:
                    if _decide_sympy(gold, tree, options, notes):
                        verdict, by_probes = True, notes.get("probes", 0) > 0
                        break
                except Exception:  # MemoryError, RecursionError, sympy's own errors: not equal
                    pass
            conn_out.send(("r", k, verdict, by_probes))


class _Helper:
    """One helper process and its pipes."""

    def __init__(self, spawn):
        self.proc, self.conn_in, self.conn_out = spawn()
        self.ready = False

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for c in (self.conn_in, self.conn_out):
            try:
                c.close()
            except OSError:
                pass


class _Pool:
    """Lazily started helper processes; a job past its limit kills its helper."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.pid = os.getpid()
        self.idle: list[_Helper] = []
        self.count = 0
        self.cv = threading.Condition()
        self.spawn_requests: queue.Queue = queue.Queue()
        self.all: set[_Helper] = set()
        # Helpers are started from one long-lived thread: PR_SET_PDEATHSIG fires when the
        # *thread* that started a process exits, so it must not be a caller's short-lived thread.
        threading.Thread(target=self._spawner, name="rewards.math-spawner", daemon=True).start()

    def _spawner(self) -> None:
        while True:
            reply = self.spawn_requests.get()
            try:
                reply.put(self._popen())
            except Exception as exc:  # reported to the caller
                reply.put(exc)

    def _popen(self):
        r1, w1 = os.pipe()  # parent -> helper
        r2, w2 = os.pipe()  # helper -> parent
        # the directory holding the ``rewards`` package: rewards/math/pool.py is three levels down
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        code = "import sys; from rewards.math.pool import _helper_main; _helper_main(*map(int, sys.argv[1:]))"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code, str(r1), str(w2), str(HELPER_MEMORY_BYTES)],
                pass_fds=(r1, w2),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(r1)
            os.close(w2)
        return proc, Connection(r2, writable=False), Connection(w1, readable=False)

    def _spawn(self):
        reply: queue.Queue = queue.Queue()
        self.spawn_requests.put(reply)
        got = reply.get()
        if isinstance(got, Exception):
            raise got
        return got

    def acquire(self, want: int) -> list[_Helper]:
        """Up to ``want`` helpers (at least one), starting new ones while under ``size``."""
        with self.cv:
            while not self.idle and self.count >= self.size:
                self.cv.wait()
            got = self.idle[:want]
            del self.idle[: len(got)]
            fresh = min(want - len(got), self.size - self.count)
            self.count += fresh
        for _ in range(fresh):
            try:
                helper = _Helper(self._spawn)
                self.all.add(helper)
                got.append(helper)
            except Exception:
                with self.cv:
                    self.count -= 1
                    self.cv.notify()
        return got

    def release(self, helper: _Helper, alive: bool) -> None:
        with self.cv:
            if alive:
                self.idle.append(helper)
            else:
                helper.kill()
                self.all.discard(helper)
                self.count -= 1
            self.cv.notify()

    def replace(self, helper: _Helper) -> _Helper | None:
        helper.kill()
        self.all.discard(helper)
        try:
            fresh = _Helper(self._spawn)
        except Exception:
            with self.cv:
                self.count -= 1
                self.cv.notify()
            return None
        self.all.add(fresh)
        return fresh

    def shutdown(self) -> None:
        for helper in list(self.all):
            helper.kill()
        self.all.clear()


_pool: _Pool | None = None
# Counters for this process (benchmarks, metrics). probe_only: items paid because numeric probes
# agreed where no symbolic rewrite proved the equality; it should stay rare.
stats = {"helper_items": 0, "timeouts": 0, "probe_only": 0}
SYMBOLIC_BUDGET = 0.4  # share of an item's time limit a helper spends on one symbolic proof
_pool_lock = threading.Lock()


def _default_workers() -> int:
    env = os.environ.get("RLWHF_MATH_WORKERS")
    if env and env.isdigit():
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # a forked child gets its own helpers
            _pool = _Pool(_default_workers())
        return _pool


@atexit.register
def shutdown() -> None:
    """Kill the helper processes (also runs at interpreter exit)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool.pid == os.getpid():
            _pool.shutdown()
        _pool = None


def warm_up() -> None:
    """Start one helper process now, so the first symbolic comparison does not wait for it."""
    pool = _get_pool()
    helpers = pool.acquire(1)
    for h in helpers:
        alive = _await_ready(h)
        pool.release(h, alive)


def _await_ready(helper: _Helper) -> bool:
    if helper.ready:
        return True
    try:
        if helper.conn_in.poll(STARTUP_TIMEOUT_S) and helper.conn_in.recv()[0] == "ready":
            helper.ready = True
            return True
    except (EOFError, OSError):
        pass
    return False


def _run_jobs(jobs: list[tuple[object, list[list]]], options: Options, timeout_s: float) -> list[list[bool]]:
    """Each job is (gold tree, [trees of one item, ...]); returns verdicts per job and item.
    Every item gets ``timeout_s`` from when its helper starts on it; one that overruns scores
    False and its helper is replaced."""
    results = [[False] * len(items) for _, items in jobs]
    pending = []  # (job index, first item, items): chunks not yet sent
    n_items = sum(len(items) for _, items in jobs)
    if n_items == 0:
        return results
    stats["helper_items"] += n_items
    pool = _get_pool()
    helpers = pool.acquire(min(pool.size, n_items))
    if not helpers:
        return results
    chunk = max(1, -(-n_items // len(helpers)))
    for j, (_, items) in enumerate(jobs):
        for start in range(0, len(items), chunk):
            pending.append((j, start, items[start : start + chunk]))
    pending.reverse()
    busy: dict[_Helper, list] = {}  # helper -> [job, first, items, next index, deadline]
    idle = list(helpers)
    try:
        while pending or busy:
            while pending and idle:
                helper = idle.pop()
                if not _await_ready(helper):
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
                    elif not idle and not busy:
                        return results
                    continue
                j, first, items = pending.pop()
                try:
                    helper.conn_out.send((jobs[j][0], items, options, SYMBOLIC_BUDGET * timeout_s))
                except (OSError, ValueError):
                    pending.append((j, first, items))
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
                    continue
                busy[helper] = [j, first, items, 0, time.monotonic() + timeout_s]
            if not busy:
                break
            now = time.monotonic()
            soonest = min(state[4] for state in busy.values())
            ready = wait([h.conn_in for h in busy], timeout=max(0.0, soonest - now))
            by_conn = {h.conn_in: h for h in busy}
            for conn in ready:
                helper = by_conn[conn]
                state = busy[helper]
                try:
                    _, k, verdict, by_probes = conn.recv()
                except (EOFError, OSError):  # died (memory limit): this item is False
                    _requeue_after(state, pending)
                    del busy[helper]
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
                    continue
                results[state[0]][state[1] + k] = bool(verdict)
                stats["probe_only"] += bool(verdict and by_probes)
                state[3] = k + 1
                state[4] = time.monotonic() + timeout_s
                if state[3] == len(state[2]):
                    del busy[helper]
                    idle.append(helper)
            now = time.monotonic()
            for helper, state in list(busy.items()):
                if state[4] <= now and helper.conn_in not in ready:
                    stats["timeouts"] += 1
                    _requeue_after(state, pending)
                    del busy[helper]
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
        return results
    finally:
        for helper in idle:
            pool.release(helper, True)
        for helper in busy:  # interrupted mid-job (KeyboardInterrupt): never reuse out of step
            pool.release(helper, False)


def _requeue_after(state, pending) -> None:
    """The item in progress scored False; the rest of its chunk goes back in the queue."""
    j, first, items, done = state[:4]
    rest = items[done + 1 :]
    if rest:
        pending.append((j, first + done + 1, rest))
