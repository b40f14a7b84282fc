"""Sandboxed execution of untrusted Python programs: the sandbox's API.

``run(code, stdin, timeout_s, memory_mb)`` runs a program in a pre-forked, pre-imported worker
interpreter and returns an ``ExecResult``. ``rewards.code_harness`` runs a completion's code against
its tests with it, and ``rewards.code`` is the ``code_tests`` reward built on that.

What every program gets at the namespace levels (``namespaces-root`` when the host is root;
``namespaces-user`` through an unprivileged user namespace otherwise):

* processes: pid 1 of its own pid namespace. It sees no host process and cannot signal or trace
  the host, the pool's workers or other programs. When it ends, or is ended, the kernel kills
  every process it made, so no child, grandchild or daemon survives ``run`` returning.
  ``RLIMIT_NPROC`` caps processes and threads at ``max_procs``, so fork loops stop there.
* files: a root file system of its own: read-only binds of ``/usr``, ``/bin``, ``/lib*``,
  ``/sbin``, the interpreter's standard library and ``/dev/{null,zero,urandom,random}``, and
  fresh tmpfs on ``/work`` (working directory, ``$HOME``, ``$TMPDIR``) and ``/tmp``, each
  ``file_mb`` in size, which vanish with the run. No project, home, ``/etc``, ``/proc``, ``/sys``
  or other run's directory is reachable. ``RLIMIT_FSIZE`` caps any one file.
* network: a network namespace with only a loopback that is down: no connection to anything,
  the host's loopback included.
* privileges: an unprivileged uid (``namespaces-root``) or a user namespace whose capabilities
  are dropped; ``no_new_privs``; a seccomp filter that refuses new user namespaces (so no
  capabilities can be regained), ptrace, BPF, perf, keyrings, kernel modules, kexec, userfaultfd,
  io_uring and the new mount API (mount and other namespaces the kernel refuses for lack of
  capabilities).
* secrets: an environment of ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG`` only. The workers start
  with an empty environment and never hold a program's code, stdin (memfds the program process
  reads itself) or output (pipes the host reads), so no program, forked from a worker, can find
  another run's data in its memory.
* limits: wall clock ``timeout_s`` (enforced by the worker) and an output cap per stream (by the
  host), both from outside the sandbox; CPU time ``timeout_s + 1`` s and address space
  ``memory_mb`` (on top of the interpreter) as rlimits. Past the output cap the program is killed
  and its output truncated.

A program's result is what reached its stdout and stderr pipes (read by the host) and how its
process ended (read by the worker). What a program changes in its own interpreter (builtins,
``sys.stdout``, ``os._exit``, its descriptors or rlimits) changes nothing else: the code the sandbox
runs after it in its process uses only what was bound before it ran.

What it does not cover: it is not a virtual machine. The program shares the host's kernel, and
the system calls the filter allows (most of them) are attack surface: a kernel vulnerability is an
escape. Limits are rlimits, not cgroups: ``max_procs`` processes may each use ``memory_mb``, and
concurrent programs share the host's cores. The files under ``/usr`` are readable. Only Python is
supported, with the host interpreter's standard library (no site-packages).

When no namespace can be made (not root and unprivileged user namespaces disabled), ``run``
refuses every program with status ``blocked``. ``RLWHF_SANDBOX=rlimits-unsafe`` accepts weak
isolation instead: rlimits, a process group, a fresh temporary directory, a minimal
environment and a seccomp filter that also refuses internet sockets; but the program can read the
host's world-readable files and signal the user's other processes. ``RLWHF_SANDBOX=none``
refuses every program.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import threading

from rewards._sandbox import pool as _pool
from rewards._sandbox.worker import EXIT_MEMORY

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 256
DEFAULT_FILE_MB = 16
DEFAULT_MAX_PROCS = 16
DEFAULT_OUTPUT_BYTES = 1 << 20
STATUSES = ("ok", "error", "timeout", "memory", "blocked")


@dataclasses.dataclass
class ExecResult:
    """The outcome of one program.

    ``status``: ``ok`` (exit code 0), ``error`` (non-zero exit, killed by a signal, or output past
    the cap), ``timeout`` (wall or CPU limit), ``memory`` (allocation past ``memory_mb``),
    ``blocked`` (the sandbox refused to run it). ``exit_code`` is None when the program did not
    exit by itself; ``truncated`` is True when output was cut at the cap.
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0
    signal: int | None = None
    truncated: bool = False
    level: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------------
# Isolation level: detected once per process, by running a probe program
# ---------------------------------------------------------------------------------------------

_lock = threading.Lock()
_state: dict = {"pid": None, "pool": None, "level": None, "why": ""}


def _candidates() -> list[str]:
    choice = os.environ.get("RLWHF_SANDBOX", "auto")
    if choice == "none":
        return []
    if choice == "rlimits-unsafe":
        return ["rlimits-unsafe"]
    if choice in ("namespaces-root", "namespaces-user"):
        return [choice]
    if choice != "auto":
        raise ValueError(
            f"RLWHF_SANDBOX={choice!r} is not a sandbox level; expected one of "
            "auto, namespaces-root, namespaces-user, rlimits-unsafe, none"
        )
    return ["namespaces-root"] if os.geteuid() == 0 else ["namespaces-user"]


def _get_pool() -> tuple[_pool.Pool | None, str, str]:
    with _lock:
        if _state["pid"] != os.getpid():  # first use, or a forked host: start afresh
            _state.update(pid=os.getpid(), pool=None, level=None, why="")
        if _state["level"] is None:
            reasons = []
            for level in _candidates():
                pool = _pool.Pool(level, max_workers())
                try:
                    probe = _execute(pool, level, "print(6 * 7)", "", 10.0, 64, DEFAULT_FILE_MB, 4, 1024)
                except _pool.WorkerDied as exc:
                    probe = ExecResult("blocked", stderr=str(exc))
                if probe.status == "ok" and probe.stdout == "42\n":
                    _state.update(pool=pool, level=level)
                    break
                pool.close()
                reasons.append(f"{level}: {probe.stderr.strip() or probe.status}")
            else:
                why = "; ".join(reasons) or "RLWHF_SANDBOX=none"
                _state.update(level="none", why=why)
        return _state["pool"], _state["level"], _state["why"]


def max_workers() -> int:
    return int(os.environ.get("RLWHF_SANDBOX_WORKERS", max(2, os.cpu_count() or 2)))


def unavailable_reason() -> str:
    """Why no isolation level could be set up here ('' when one was)."""
    return _get_pool()[2]


def isolation_level() -> str:
    """The level ``run`` uses in this process: ``namespaces-root``, ``namespaces-user``,
    ``rlimits-unsafe`` or ``none`` (every program is refused with status ``blocked``)."""
    return _get_pool()[1]


def shutdown() -> None:
    """Kill the pool's workers now (they are started again on the next ``run``)."""
    with _lock:
        pool = _state["pool"] if _state["pid"] == os.getpid() else None
        _state.update(pid=None, pool=None, level=None, why="")
    if pool is not None:
        pool.close()


def _after_fork_in_child() -> None:
    pool = _state["pool"]
    if pool is not None:
        pool.forget()
    _state.update(pid=None, pool=None, level=None, why="")
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def run(
    code: str,
    stdin: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    *,
    file_mb: int = DEFAULT_FILE_MB,
    max_procs: int = DEFAULT_MAX_PROCS,
    output_bytes: int = DEFAULT_OUTPUT_BYTES,
) -> ExecResult:
    """Run the Python program ``code`` with ``stdin``; thread-safe, never raises on a program.

    ``timeout_s``: wall-clock limit (the CPU limit is ``timeout_s`` + 1 s); ``memory_mb``: address
    space the program may allocate; ``file_mb``: size of its writable file system and of any one
    file; ``max_procs``: processes and threads it may have at once; ``output_bytes``: cap on each
    of stdout and stderr (the program is killed when it writes past it).
    """
    if not isinstance(code, str) or not isinstance(stdin, str):
        raise TypeError(f"run() takes code and stdin as str, got {type(code).__name__} and {type(stdin).__name__}")
    if not (timeout_s > 0 and memory_mb > 0 and file_mb > 0 and max_procs > 0 and output_bytes > 0):
        raise ValueError(
            f"run() limits must be positive, got timeout_s={timeout_s}, memory_mb={memory_mb}, "
            f"file_mb={file_mb}, max_procs={max_procs}, output_bytes={output_bytes}"
        )
    pool, level, why = _get_pool()
    if pool is None:
        return ExecResult(
            "blocked",
            stderr=f"[sandbox] refused: no isolation is available on this machine ({why}). "
            "Run as root, enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
            "or user.max_user_namespaces>0), or set RLWHF_SANDBOX=rlimits-unsafe to accept weak isolation.",
            level=level,
        )
    try:
        return _execute(pool, level, code, stdin, timeout_s, memory_mb, file_mb, max_procs, output_bytes)
    except _pool.WorkerDied as exc:
        return ExecResult("error", stderr=f"[sandbox] {exc}", level=level)


def _execute(pool, level, code, stdin, timeout_s, memory_mb, file_mb, max_procs, output_bytes) -> ExecResult:
    req = {
        "level": level,
        "uid": _pool.UID_BASE,
        "timeout_s": float(timeout_s),
        "memory_mb": int(memory_mb),
        "file_mb": int(file_mb),
        "max_procs": int(max_procs),
        "output_bytes": int(output_bytes),
    }
    worker = pool.acquire()
    try:
        req["uid"] = _pool.UID_BASE + worker.slot
        reply, out, err, truncated = worker.execute(
            req, code.encode("utf-8", "surrogatepass"), stdin.encode("utf-8", "surrogatepass"), timeout_s + 30
        )
    finally:
        pool.release(worker)
    return _result(reply, out, err, truncated, level)


def _result(reply: dict, out: bytes, err: bytes, truncated: bool, level: str) -> ExecResult:
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    res = ExecResult("error", stdout, stderr, reply["exit_code"], reply["wall_s"], reply["signal"], level=level)
    if reply["setup_error"]:
        res.status = "blocked"
        res.stderr = f"[sandbox] isolation could not be set up, the program was not run: {reply['setup_error']}"
    elif reply["reason"] == "timeout" or res.signal in (signal.SIGXCPU,):
        res.status = "timeout"
        res.stderr += "\n[sandbox] time limit exceeded"
    elif truncated or reply["reason"] == "output":
        res.status, res.truncated = "error", True
        res.stderr += "\n[sandbox] output limit exceeded; output truncated and program killed"
    elif res.exit_code == EXIT_MEMORY:
        res.status = "memory"
    elif res.exit_code == 0:
        res.status = "ok"
    elif res.exit_code is None and res.signal == signal.SIGKILL and "MemoryError" in stderr:
        res.status = "memory"
    return res
