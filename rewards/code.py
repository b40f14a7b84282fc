"""Sandboxed execution of untrusted Python programs, and the code rewards built on it.

``run(code, stdin, timeout_s, memory_mb)`` runs a program in a pre-forked, pre-imported worker
interpreter and returns an ``ExecResult``; ``code_tests`` is the reward that scores completions
by the tests their last code block passes.

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

import ast
import atexit
import builtins as _builtins
import dataclasses
import json
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from rewards import reward, text_of
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


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------

TEST_TIMEOUT_S = 2.0  # per stdio case, and per phase of a function-call test set
TEST_MEMORY_MB = 256
PYTHON_TAGS = ("", "python", "py", "python3")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.#-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The body of the last closed fenced code block tagged as Python (or untagged), else None."""
    blocks = [body for tag, body in _FENCE.findall(completion) if tag.lower() in PYTHON_TAGS]
    return blocks[-1] if blocks else None


def normalize_output(text: str) -> list[str]:
    """Lines with trailing whitespace removed, trailing blank lines dropped."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


def stdio_passes(code: str, case: dict, timeout_s: float = TEST_TIMEOUT_S, memory_mb: int = TEST_MEMORY_MB) -> bool:
    """Run ``code`` on ``case["input"]``; pass when it exits 0 and prints ``case["output"]``
    (compared line by line, ignoring trailing whitespace and trailing blank lines)."""
    res = run(code, stdin=str(case["input"]), timeout_s=timeout_s, memory_mb=memory_mb)
    return res.status == "ok" and normalize_output(res.stdout) == normalize_output(str(case["output"]))


# Function-call tests: two phases, so that the verdict never comes from the program's process.
#
# Phase 1 (untrusted) runs the solution, then evaluates only the *calls into the solution* that
# the tests make (`f(3, 4)` in `assert f(3, 4) == 7`), and prints each value encoded as plain
# data (exact builtin types only). The expected values are not in this process. What the harness
# uses after the solution has run (builtins, os.write, a duplicate of fd 1) is bound before it
# runs, so a correct solution that rebinds builtins, patches json, replaces sys.stdout or closes
# fd 1 is still heard; each value goes out on a line of its own, after whatever the solution printed.
# Phase 2 (trusted) runs in a fresh sandbox with no solution code: it decodes the values and
# evaluates each assert with the calls replaced by them. Whatever the program does to itself
# (exits early, redefines assert/print/builtins, returns objects whose __eq__ is always True,
# prints "passed") changes only the values it returns, never the comparison.

_SITE = "\x00rlwhf-site"
_VERDICT = "\x00rlwhf-verdict"
# Builtins whose call around a solution call is evaluated in phase 1 too (e.g. list(gen(3))):
# they only turn the solution's value into plain data, and see no expected value.
_CONVERSIONS = {"list", "tuple", "set", "frozenset", "sorted", "dict"}

_ENCODE = """
def _rlwhf_enc(v, depth=0, type=type, hex=hex, repr=repr, ValueError=ValueError, TypeError=TypeError, bool=bool,
               int=int, float=float, complex=complex, str=str, bytes=bytes, list=list, tuple=tuple, set=set,
               frozenset=frozenset, dict=dict):
    if depth > 100:
        raise ValueError("too deep")
    t = type(v)
    if v is None: return ["none"]
    if t is bool: return ["bool", v]
    if t is int: return ["int", hex(v)]
    if t is float or t is complex: return [t.__name__, repr(v)]
    if t is str: return ["str", v]
    if t is bytes: return ["bytes", v.hex()]
    if t in (list, tuple, set, frozenset): return [t.__name__, [_rlwhf_enc(x, depth + 1) for x in v]]
    if t is dict: return ["dict", [[_rlwhf_enc(k, depth + 1), _rlwhf_enc(x, depth + 1)] for k, x in v.items()]]
    raise TypeError("not plain data: " + t.__name__)
"""

_DECODE = """
def _rlwhf_dec(e):
    tag = e[0]
    if tag == "none": return None
    if tag == "bool": return bool(e[1])
    if tag == "int": return int(e[1], 16)
    if tag == "float": return float(e[1])
    if tag == "complex": return complex(e[1])
    if tag == "str": return str(e[1])
    if tag == "bytes": return bytes.fromhex(e[1])
    if tag == "list": return [_rlwhf_dec(x) for x in e[1]]
    if tag == "tuple": return tuple(_rlwhf_dec(x) for x in e[1])
    if tag == "set": return {_rlwhf_dec(x) for x in e[1]}
    if tag == "frozenset": return frozenset(_rlwhf_dec(x) for x in e[1])
    if tag == "dict": return {_rlwhf_dec(k): _rlwhf_dec(x) for k, x in e[1]}
    raise ValueError("bad tag")
"""


@dataclasses.dataclass
class FunctionTests:
    """Assert-style tests split into setup statements, call sites and rewritten asserts."""

    setup: list[str]
    sites: list[str]  # source of each call into the solution, in order
    asserts: list[tuple[str, list[int]]]  # (rewritten assert source, the sites it uses)


def parse_function_tests(tests: str | list[str]) -> FunctionTests:
    """Split MBPP/HumanEval-like assert statements. Non-assert statements are setup (imports,
    helper values) and must not call the solution. Raises ValueError on an unusable spec."""
    source = tests if isinstance(tests, str) else "\n".join(tests)
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"function-call tests are not valid Python: {exc}") from exc
    bound = set(dir(_builtins))
    setup, sites, asserts = [], [], []
    for stmt in module.body:
        if not isinstance(stmt, ast.Assert):
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    bound.add(node.id)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    bound.update((a.asname or a.name).split(".")[0] for a in node.names)
                elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    bound.add(node.name)
            setup.append(ast.unparse(stmt))
            continue
        used: list[int] = []

        class Rewrite(ast.NodeTransformer):
            def visit_Call(self, node):
                inner = node.args[0] if len(node.args) == 1 and not node.keywords else None
                wraps_site = (
                    isinstance(node.func, ast.Name)
                    and node.func.id in _CONVERSIONS
                    and isinstance(inner, ast.Call)
                    and _calls_solution(inner, bound)
                )
                if wraps_site or _calls_solution(node, bound):
                    sites.append(ast.unparse(node))
                    used.append(len(sites) - 1)  # noqa: B023 (the visitor runs inside this iteration)
                    index = ast.Constant(len(sites) - 1)
                    return ast.Subscript(ast.Name("_rlwhf_v", ast.Load()), index, ast.Load())
                return self.generic_visit(node)

        asserts.append((ast.unparse(ast.fix_missing_locations(Rewrite().visit(stmt))), used))
    if not asserts:
        raise ValueError(f"function-call tests need at least one assert statement, got {source[:200]!r}")
    for stmt in setup:
        for node in ast.walk(ast.parse(stmt)):
            if isinstance(node, ast.Call) and _calls_solution(node, bound):
                raise ValueError(f"setup statement {stmt!r} calls the solution; only asserts may")
    return FunctionTests(setup, sites, asserts)


def _calls_solution(node: ast.Call, bound: set[str]) -> bool:
    return isinstance(node.func, ast.Name) and node.func.id not in bound


def _phase1_program(solution: str, spec: FunctionTests) -> str:
    return "\n".join(
        [
            "import os as _rlwhf_os",
            _ENCODE,
            "def _rlwhf_phase1(solution, setup, sites, enc=_rlwhf_enc, exec=exec, eval=eval, compile=compile, repr=repr,",
            "                  enumerate=enumerate, BaseException=BaseException, write=_rlwhf_os.write, fd=_rlwhf_os.dup(1)):",
            "    g = {'__name__': 'solution', '__builtins__': __builtins__}",
            "    exec(compile(solution, 'solution.py', 'exec'), g)",
            "    for s in setup:",
            "        exec(s, g)",
            "    for i, site in enumerate(sites):",
            "        try:",
            f"            data = ('\\n' + {_SITE!r} + ' %d %s\\n' % (i, repr(enc(eval(site, g))))).encode('utf-8', 'surrogatepass')",
            "            while data:",
            "                data = data[write(fd, data):]",
            "        except BaseException:",
            "            continue",
            f"_rlwhf_phase1({solution!r}, {spec.setup!r}, {spec.sites!r})",
        ]
    )


def _site_value(text: str):
    """A value phase 1 printed (a Python literal of lists, strings and booleans), or None."""
    try:
        value = ast.literal_eval(text)
        json.dumps(value)  # it goes on to phase 2 as JSON
    except Exception:  # anything a program printed: malformed, too deep, too big
        return None
    return value


def _phase2_program(spec: FunctionTests) -> str:
    return "\n".join(
        [
            "import json, sys",
            _DECODE,
            "_rlwhf_v = {}",
            "for k, e in json.loads(sys.stdin.read()).items():",
            "    try:",
            "        _rlwhf_v[int(k)] = _rlwhf_dec(e)",
            "    except Exception:",
            "        pass",
            "g = {'_rlwhf_v': _rlwhf_v, '__name__': 'tests'}",
            f"for s in {spec.setup!r}:",
            "    exec(s, g)",
            "verdicts = []",
            f"for src, used in {spec.asserts!r}:",
            "    ok = all(k in _rlwhf_v for k in used)",
            "    if ok:",
            "        try:",
            "            exec(src, g)",
            "        except BaseException:",
            "            ok = False",
            "    verdicts.append(ok)",
            f"print({_VERDICT!r}, json.dumps(verdicts))",
        ]
    )


def function_tests_passed(
    code: str, tests: str | list[str], timeout_s: float = TEST_TIMEOUT_S, memory_mb: int = TEST_MEMORY_MB
) -> list[bool]:
    """Run assert-style tests against ``code``; one verdict per assert, decided outside the
    program's process (see the two phases above)."""
    spec = parse_function_tests(tests)
    values: dict[str, object] = {}
    if spec.sites:
        first = run(_phase1_program(code, spec), timeout_s=timeout_s, memory_mb=memory_mb)
        for line in first.stdout.split("\n"):
            if line.startswith(_SITE + " "):
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[1].isdigit():
                    value = _site_value(parts[2])
                    if value is not None:
                        values[parts[1]] = value
    second = run(_phase2_program(spec), stdin=json.dumps(values), timeout_s=timeout_s, memory_mb=memory_mb)
    for line in second.stdout.splitlines():
        if line.startswith(_VERDICT + " "):
            verdicts = json.loads(line.split(" ", 1)[1])
            if isinstance(verdicts, list) and len(verdicts) == len(spec.asserts):
                return [v is True for v in verdicts]
    return [False] * len(spec.asserts)


def _as_test_spec(tests):
    """Accept a JSON string for either format, as datasets often store tests as text."""
    if isinstance(tests, str):
        stripped = tests.lstrip()
        if stripped.startswith(("[", "{")):
            try:
                return json.loads(tests)
            except ValueError:
                pass
    return tests


def score_code(
    completion: str,
    tests,
    timeout_s: float = TEST_TIMEOUT_S,
    memory_mb: int = TEST_MEMORY_MB,
    executor: ThreadPoolExecutor | None = None,
) -> float | None:
    """Fraction of ``tests`` that the last code block of ``completion`` passes (None: no tests).

    ``tests`` is either a list of ``{"input": str, "output": str}`` (stdin/stdout cases, one
    sandboxed run each), or assert statements as one string or a list of strings (function-call
    tests, MBPP ``test_list`` style), or either of these as a JSON string.
    """
    tests = _as_test_spec(tests)
    if tests is None or (hasattr(tests, "__len__") and len(tests) == 0):
        return None
    code = extract_code(completion)
    if code is None:
        return 0.0
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:  # APPS/TACO layout
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, list) and all(isinstance(t, dict) for t in tests):
        for t in tests:
            if "input" not in t or "output" not in t:
                raise ValueError(f"a stdio test case needs 'input' and 'output' keys, got {sorted(t)}")
        mapper = executor.map if executor is not None else map
        passed = list(mapper(lambda case: stdio_passes(code, case, timeout_s, memory_mb), tests))
    elif isinstance(tests, (str, list)):
        passed = function_tests_passed(code, tests, timeout_s, memory_mb)
    else:
        raise ValueError(
            f"tests must be a list of {{'input', 'output'}} dicts or assert statements (str or list of str), "
            f"got {type(tests).__name__}"
        )
    return sum(passed) / len(passed)


@reward("code_tests")
def code_tests(
    completions: list[str], *, prompts: list[str] | None = None, tests: list, **columns
) -> list[float | None]:
    """Fraction of tests passed by the last fenced Python block of each completion.

    ``tests[i]`` belongs to completion ``i``: a list of ``{"input", "output"}`` dicts (stdio
    cases) or assert statements (a string or list of strings; non-assert lines are setup), or
    either as JSON text. None or empty tests score None (reward does not apply); a completion
    without a code block scores 0.0. Programs run in ``rewards.code.run``'s sandbox.

    Optional columns, one value per completion (None: the default): ``test_timeout_s`` (wall
    limit per stdio case or per phase of function-call tests, default ``TEST_TIMEOUT_S``) and
    ``test_memory_mb`` (default ``TEST_MEMORY_MB``). A batch's worst case, every program hanging,
    takes about cases x ``test_timeout_s`` / workers seconds; keep the reward's time limit above it.
    """
    if len(tests) != len(completions):
        raise ValueError(f"code_tests got {len(completions)} completions but {len(tests)} test specs")
    n = len(completions)
    timeouts = columns.get("test_timeout_s") or [None] * n
    memories = columns.get("test_memory_mb") or [None] * n
    jobs = [
        (text_of(c), t, to or TEST_TIMEOUT_S, mb or TEST_MEMORY_MB)
        for c, t, to, mb in zip(completions, tests, timeouts, memories)
    ]
    workers = _max_workers()
    with ThreadPoolExecutor(max_workers=workers) as inner, ThreadPoolExecutor(max_workers=workers) as outer:
        return list(outer.map(lambda job: score_code(job[0], job[1], job[2], job[3], executor=inner), jobs))
