"""Sandboxed execution of untrusted Python programs, and the code rewards built on it.

``run(code, stdin, timeout_s, memory_mb)`` runs a program in a pre-forked, pre-imported worker
interpreter and returns an ``ExecResult``. Each program gets, when the kernel allows it (level
``namespaces-root`` when the host is root, ``namespaces-user`` through an unprivileged user
namespace otherwise):

* its own pid, mount, network, IPC and UTS namespaces: it sees no host process, has no network
  interface but a loopback that is down (no connection to anything, loopback included), and
  cannot signal or trace the host, the pool's workers or other programs;
* a new root file system: a size-limited tmpfs holding ``/work`` (the working directory, also
  ``$HOME`` and ``$TMPDIR``) and ``/tmp``, with ``/usr``, ``/lib*``, ``/bin``, ``/sbin``, the Python
  standard library and ``/dev/{null,zero,urandom,random}`` bound read-only; nothing else of the host
  (no project, no home, no ``/etc``, no ``/proc``, no other run's directory). The tmpfs vanishes with
  the namespace, so the directory is removed afterwards by the kernel;
* no privileges: an unprivileged uid (root level) or a user namespace whose capabilities are
  dropped, ``no_new_privs``, and rlimits on CPU time, address space (``memory_mb`` on top of the
  interpreter), processes (fork loops end at ``max_procs``), file size and open files;
* an environment of four variables (``PATH``, ``HOME``, ``TMPDIR``, ``LANG``): no host secrets;
* a wall-clock limit and an output cap enforced by the worker, outside the sandbox; on either,
  or when the program ends, its pid namespace is killed, so no child, grandchild or daemon
  survives ``run`` returning.

What it does not cover: it is not a VM. The program makes any system call the kernel offers
(there is no seccomp filter), so a kernel vulnerability, especially one reachable through user
namespaces, is an escape. CPU and memory are rlimits per process, not cgroups: a fork loop of
``max_procs`` processes can each use ``memory_mb``, and the programs of concurrent runs compete
for the host's cores. ``/usr`` is readable (it is what the interpreter runs from). Only Python is
supported, with the standard library of the host's interpreter.

When no namespace can be made (no root, unprivileged user namespaces disabled), ``run`` refuses
with status ``blocked``, unless ``RLWHF_SANDBOX=rlimits-unsafe`` asks for rlimits, a fresh
temporary directory and a process group only: that level limits time, memory, processes, output
and environment, but the program can read the host's world-readable files, use the network and
signal the host's processes. ``RLWHF_SANDBOX=none`` refuses every program.

Rewards: ``code_tests`` (registered as ``"code_tests"``) extracts the last fenced code block of a
completion and scores the fraction of its tests that pass. See ``code_tests`` for the formats.
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
                pool = _pool.Pool(level, _max_workers())
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


def _max_workers() -> int:
    return int(os.environ.get("RLWHF_SANDBOX_WORKERS", max(2, os.cpu_count() or 2)))


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
        reply, out, err = worker.execute(req, code.encode("utf-8", "surrogatepass"),
                                         stdin.encode("utf-8", "surrogatepass"), timeout_s + 30)
    finally:
        pool.release(worker)
    return _result(reply, out, err, level)


def _result(reply: dict, out: bytes, err: bytes, level: str) -> ExecResult:
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    res = ExecResult("error", stdout, stderr, reply["exit_code"], reply["wall_s"], reply["signal"], level=level)
    if reply["setup_error"]:
        res.status = "blocked"
        res.stderr = f"[sandbox] isolation could not be set up, the program was not run: {reply['setup_error']}"
    elif reply["reason"] == "timeout" or res.signal in (signal.SIGXCPU,):
        res.status = "timeout"
        res.stderr += "\n[sandbox] time limit exceeded"
    elif reply["reason"] == "output":
        res.status, res.truncated = "error", True
        res.stderr += "\n[sandbox] output limit exceeded; output truncated and program killed"
    elif res.exit_code == EXIT_MEMORY:
        res.status = "memory"
    elif res.exit_code == 0:
        res.status = "ok"
    elif res.exit_code is None and res.signal == signal.SIGKILL and "MemoryError" in stderr:
        res.status = "memory"
    return res
