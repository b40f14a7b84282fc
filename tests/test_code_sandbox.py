"""Hostile programs against rewards.sandbox.run.

Every attack is bounded so that it cannot harm this machine even if the sandbox failed: small
time and memory limits, fork loops capped by RLIMIT_NPROC, signals sent only as signal 0 (a probe
that delivers nothing), files written only under pytest's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import NAMESPACE_LEVELS, sandbox_unavailable

from rewards import sandbox as sandbox_module

REPO = Path(__file__).resolve().parents[1]
NAMESPACES = NAMESPACE_LEVELS


@pytest.fixture
def level(isolated_sandbox) -> str:
    """The namespace level in use; fails the test where there is none (see conftest.py)."""
    return isolated_sandbox


def run(src: str, **kw) -> sandbox_module.ExecResult:
    return sandbox_module.run(textwrap.dedent(src), **kw)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


# ------------------------------------------------------------------------------------------ basics


def test_program_output_and_exit_code_are_returned(level):
    res = run("import sys\nprint('hi')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (res.status, res.stdout, res.stderr.strip(), res.exit_code) == ("error", "hi\n", "err", 3)
    assert res.level == level and res.wall_s > 0


def test_stdin_reaches_the_program_and_ok_means_exit_zero(level):
    res = run("a, b = map(int, input().split())\nprint(a + b)", stdin="2 40\n")
    assert (res.status, res.stdout, res.exit_code) == ("ok", "42\n", 0)


def test_uncaught_exception_is_an_error_with_its_traceback(level):
    res = run("def f():\n    raise ValueError('boom')\nf()")
    assert res.status == "error" and res.exit_code == 1
    assert "ValueError: boom" in res.stderr


def test_syntax_error_is_an_error(level):
    res = run("def (:")
    assert (res.status, res.exit_code) == ("error", 1) and res.stderr.endswith("SyntaxError: invalid syntax\n"), res


# Correct programs that change their own interpreter before they print "42" and exit normally.
# The sandbox's code that runs in the program's process after the program must use none of it.
CHANGES_ITS_INTERPRETER = {
    "rebinds-os-exit": "import os\nos._exit = lambda status: None\nprint(42)",
    "rebinds-sys-exit": "import sys\nsys.exit = None\nprint(42)",
    "rebinds-open-print-import": "import builtins\nprint(42)\nbuiltins.open = builtins.print = builtins.__import__ = None",
    "rebinds-exception-classes": "import builtins\nprint(42)\n"
    "builtins.SystemExit = builtins.BaseException = builtins.MemoryError = KeyError",
    "rebinds-isinstance-type-str": "import builtins\nprint(42)\nbuiltins.isinstance = builtins.type = builtins.str = None",
    "rebinds-os-write-and-dup": "import os\nprint(42)\nos.write = os.dup = os.dup2 = os.close = None",
    "rebinds-threading-atexit-traceback": "import atexit, threading, traceback\nprint(42)\n"
    "threading._shutdown = atexit._run_exitfuncs = traceback.print_exc = None",
    "replaces-sys-stdout": "import io, sys\nprint(42)\nsys.stdout = io.StringIO()",
    "sets-std-streams-to-none": "import sys\nsys.stdout.write('42\\n')\nsys.stdout = sys.stderr = sys.__stdout__ = None",
    "rebinds-the-streams-flush": "import sys\nprint(42)\nsys.stdout.flush = sys.stderr.flush = None",
    "closes-fds-1-and-2": "import os\nprint(42, flush=True)\nos.close(1)\nos.close(2)",
    "lowers-its-rlimits": "import resource as r\nfor k in (r.RLIMIT_NOFILE, r.RLIMIT_NPROC, r.RLIMIT_FSIZE):\n"
    "    r.setrlimit(k, (0, 0))\nr.setrlimit(r.RLIMIT_CPU, (1, 1))\n"
    "r.setrlimit(r.RLIMIT_AS, (1 << 20, 1 << 20))\nprint(42)",
    "clears-sys-modules": "import sys\nprint(42)\nsys.modules.clear()",
    "prints-from-atexit": "import atexit, builtins\natexit.register(print, 42)\nbuiltins.print = None",
    "exits-through-its-own-stdout-object": "import sys\nclass Out:\n    def __init__(self): self.parts = []\n"
    "    def write(self, s): self.parts.append(s)\n"
    "    def flush(self): sys.__stdout__.write(''.join(self.parts)); self.parts = []\n"
    "sys.stdout = Out()\nprint(42)",
}


@pytest.mark.parametrize("src", list(CHANGES_ITS_INTERPRETER.values()), ids=list(CHANGES_ITS_INTERPRETER))
def test_what_a_program_changes_in_its_interpreter_does_not_change_its_result(level, src):
    res = run(src)
    assert (res.status, res.stdout, res.exit_code, res.stderr) == ("ok", "42\n", 0, ""), res


def test_exit_status_and_traceback_stay_the_programs_own_when_it_rebinds_builtins(level):
    res = run("import builtins, sys\nbuiltins.SystemExit = builtins.BaseException = KeyError\nprint(42)\nsys.exit(3)")
    assert (res.status, res.stdout, res.exit_code, res.stderr) == ("error", "42\n", 3, ""), res
    res = run("import builtins\nbuiltins.print = builtins.str = None\nraise SystemExit('bye')")
    assert (res.status, res.exit_code, res.stderr) == ("error", 1, "bye\n"), res
    res = run(
        "import builtins, sys, traceback\nbuiltins.print = traceback.print_exc = None\n"
        "sys.excepthook = None\nraise ValueError('boom')"
    )
    assert (res.status, res.exit_code) == ("error", 1), res
    # the traceback is the program's own: it starts in solution.py, never in the sandbox's code
    assert res.stderr.startswith("Traceback") and res.stderr.endswith("ValueError: boom\n"), res.stderr
    assert 'File "solution.py", line 4' in res.stderr and "worker.py" not in res.stderr, res.stderr


# -------------------------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    "src",
    [
        "while True: pass",
        "import time\ntime.sleep(60)",
        "import os\nr, w = os.pipe()\nos.read(r, 1)",  # blocks forever on a pipe nobody writes
        "import threading\nthreading.Event().wait()",
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass",
    ],
    ids=["busy-loop", "sleep", "blocking-read", "thread-wait", "ignores-SIGXCPU"],
)
def test_programs_that_never_end_stop_at_the_time_limit(level, src):
    start = time.monotonic()
    res = run(src, timeout_s=0.5)
    assert res.status == "timeout" and res.exit_code is None
    assert time.monotonic() - start < 0.5 + 10  # unstopped, each would run 60 s or forever; slack for a busy machine


def test_reading_stdin_past_its_end_does_not_block(level):
    res = run("import sys\nprint(repr(sys.stdin.read()))", stdin="", timeout_s=2)
    assert (res.status, res.stdout) == ("ok", "''\n")


def test_busy_threads_stop_at_the_time_limit(level):
    """The main thread ends; four threads that spin forever keep the process alive (as the
    interpreter joins them at exit), so it can end only by being killed at the limit. They allocate
    nothing: threads that grew a list once died of MemoryError first on a fast machine, and the
    program then exited 0."""
    src = """
        import threading
        def spin():
            while True:
                pass
        for _ in range(4):
            threading.Thread(target=spin).start()
    """
    res = run(src, timeout_s=0.5)
    assert (res.status, res.exit_code) == ("timeout", None), res


# ------------------------------------------------------------------------------------------ memory


@pytest.mark.parametrize(
    "src",
    [
        "x = bytearray(512 << 20)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))",
        "s = 'x' * (1 << 30)",
    ],
    ids=["one-big-block", "many-blocks", "huge-string"],
)
def test_allocation_past_memory_mb_ends_with_status_memory(level, src):
    res = run(src, memory_mb=64, timeout_s=5)
    assert res.status == "memory", res


def test_a_limit_too_small_for_the_interpreter_fails_cleanly_and_the_pool_survives(level):
    assert run("x = [0] * 10**6", memory_mb=1).status == "memory"
    assert run("print('still here')").stdout == "still here\n"


def test_memory_within_the_limit_is_usable(level):
    res = run("x = bytearray(32 << 20)\nprint(len(x))", memory_mb=64)
    assert (res.status, res.stdout) == ("ok", f"{32 << 20}\n")


# --------------------------------------------------------------------------------------- processes


def test_fork_loop_is_capped_and_ends_at_the_time_limit(level):
    # the children sleep rather than spin, so that the loop reaches the cap long before the limit
    # however busy the machine is
    src = """
        import os, time
        n = 0
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(600)
                n += 1
            except OSError:
                print("capped at", n, flush=True)
                while True: pass
    """
    res = run(src, timeout_s=1, max_procs=8)
    assert res.status == "timeout"
    assert "capped at" in res.stdout
    assert int(res.stdout.split()[-1]) < 8


def test_no_child_grandchild_or_daemon_survives_run(level):
    marker = f"4242.{os.getpid()}{time.monotonic_ns() % 100000}"
    src = f"""
        import os, subprocess
        subprocess.Popen(["/bin/sleep", "{marker}"])               # a child
        if os.fork() == 0:                                           # a double-forked, setsid daemon
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{marker}"])
            os._exit(0)
        print("spawned", flush=True)
    """
    res = run(src, timeout_s=3)
    assert res.status == "ok" and "spawned" in res.stdout, res
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def test_program_cannot_see_or_signal_the_host_or_the_workers(level):
    sandbox_module.run("pass")
    workers = [w.proc.pid for w in sandbox_module._state["pool"]._all]
    targets = [os.getpid(), os.getppid(), *workers]  # pid 1 would be the program itself
    src = f"""
        import os
        for pid in {targets!r}:
            try:
                os.kill(pid, 0)          # signal 0 only probes; it delivers nothing
                print("visible", pid)
            except ProcessLookupError:
                pass
        try:
            os.kill(-1, 0)
            print("visible -1")
        except ProcessLookupError:
            pass
        print("pid", os.getpid())
    """
    res = run(src)
    assert res.status == "ok", res
    assert "visible" not in res.stdout
    assert res.stdout.strip() == "pid 1"


# ------------------------------------------------------------------------------------------- files


def test_starts_in_an_empty_private_directory_that_is_gone_afterwards(level):
    first = run("import os\nprint(os.getcwd(), os.listdir('.'))\nopen('left.txt', 'w').write('x')\nopen('/tmp/t', 'w')")
    assert (first.status, first.stdout) == ("ok", "/work []\n"), first
    second = run("import os\nprint(os.listdir('.'), os.listdir('/tmp'))")
    assert second.stdout == "[] []\n"


def test_host_files_are_invisible_and_unwritable(level, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    victim = tmp_path / "pwned"
    paths = [
        str(secret),
        str(tmp_path),
        str(REPO / "pyproject.toml"),
        str(REPO),
        "/etc/passwd",
        "/etc",
        "/proc/self/environ",
        str(REPO / "rewards" / "_sandbox" / "worker.py"),
        "/home",
        "/var",
        "/sys",
    ]
    src = f"""
        import os
        for p in {paths!r}:
            try:
                print("read", p, open(p).read()[:20] if os.path.isfile(p) else os.listdir(p))
            except OSError:
                pass
        for p in [{str(victim)!r}, "/usr/pwned", "/pwned", "/dev/pwned"]:
            try:
                open(p, "w").write("x")
                print("wrote", p)
            except OSError:
                pass
    """
    res = run(src)
    assert res.status == "ok", res
    assert "TOPSECRET" not in res.stdout and "read" not in res.stdout and "wrote" not in res.stdout, res.stdout
    assert not victim.exists()


def test_home_shows_at_most_the_path_to_the_standard_library(level):
    from rewards._sandbox.pool import python_paths

    home = Path.home()
    on_stdlib_path = {Path(p).relative_to(home).parts[0] for p in python_paths() if Path(p).is_relative_to(home)}
    res = run(f"import os\ntry:\n    print(sorted(os.listdir({str(home)!r})))\nexcept OSError:\n    print([])")
    assert res.status == "ok"
    assert set(eval(res.stdout)) <= on_stdlib_path, res.stdout


def test_file_size_is_capped(level):
    res = run("open('big', 'wb').write(b'x' * (8 << 20))", file_mb=2)
    assert res.status == "error" and ("File too large" in res.stderr or "No space left" in res.stderr), res


def test_interpreter_and_standard_library_stay_read_only(level):
    src = "import os, json\nd = os.path.dirname(json.__file__)\nopen(os.path.join(d, '__init__.py'), 'a').write('#')"
    res = run(src)
    assert res.status == "error" and ("Read-only" in res.stderr or "Permission" in res.stderr), res


def test_no_other_runs_input_or_output_is_left_in_a_programs_memory(level):
    """Programs are forked from the workers: if a worker held a run's stdin or stdout, a later
    program could read it from its own memory (say, another completion's correct answer)."""
    token = "RLWHF-CANARY-" + os.urandom(8).hex()
    for _ in range(2 * len(sandbox_module._state["pool"]._all or [0]) + 2):
        assert sandbox_module.run("print(input())", stdin=token).stdout.strip() == token
    scanner = r"""
import ctypes, os, re
libc = ctypes.CDLL(None, use_errno=True)
libc.sbrk.restype = ctypes.c_void_p
r, w = os.pipe()
def mapped(addr):  # writing from an unmapped address fails with EFAULT instead of crashing
    if libc.write(w, ctypes.c_void_p(addr), 1) == 1:
        os.read(r, 1)
        return True
    return False
pattern = re.compile(rb"RLWHF-CANARY-[0-9a-f]{16}")
seeds = {libc.sbrk(0), id(object()), id("x" * 5000), id(re), id(ctypes)}
pages, found = set(), set()
for seed in seeds:
    base = seed & ~0xFFF
    for page in range(base - (96 << 20), base + (32 << 20), 4096):
        if page > 0 and page not in pages and mapped(page):
            pages.add(page)
            found.update(pattern.findall(ctypes.string_at(page, 4096 + 40 if mapped(page + 4096) else 4096)))
print(len(pages), sorted(f.decode() for f in found))
"""
    planted = "RLWHF-CANARY-" + os.urandom(8).hex()  # the scanner does find what is in its memory
    control = run("import sys\nkeep = sys.stdin.read()\n" + scanner, stdin=planted, timeout_s=20, memory_mb=512)
    assert planted in control.stdout, control
    for _ in range(len(sandbox_module._state["pool"]._all)):
        res = run(scanner, timeout_s=20, memory_mb=512)
        assert res.status == "ok", res
        n_pages, found = res.stdout.split(" ", 1)
        assert int(n_pages) > 100  # the scan did read memory
        assert token not in found, "a program found another run's stdin/stdout in its memory"


# ----------------------------------------------------------------------------------------- network


def test_no_network_not_even_to_a_listener_on_host_loopback(level):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        src = f"""
            import socket
            for addr in [("127.0.0.1", {port}), ("8.8.8.8", 53), ("1.1.1.1", 443)]:
                try:
                    socket.create_connection(addr, timeout=1).close()
                    print("connected", addr)
                except OSError as e:
                    print("refused", type(e).__name__)
            try:
                socket.getaddrinfo("pypi.org", 443)
                print("resolved")
            except OSError:
                pass
        """
        res = run(src, timeout_s=5)
        server.settimeout(0.1)
        with pytest.raises(OSError):
            server.accept()
    finally:
        server.close()
    assert res.status == "ok", res
    assert "connected" not in res.stdout and "resolved" not in res.stdout


# ----------------------------------------------------------------------------------------- secrets


def test_host_environment_is_not_visible(level):
    os.environ["RLWHF_TEST_SECRET"] = "hunter2"
    try:
        res = run("import os\nprint(sorted(os.environ))\nprint(dict(os.environ))")
    finally:
        del os.environ["RLWHF_TEST_SECRET"]
    assert res.status == "ok"
    assert "hunter2" not in res.stdout and "RLWHF_TEST_SECRET" not in res.stdout
    assert res.stdout.splitlines()[0] == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


def test_program_runs_without_privileges(level):
    res = run("import os\nprint(os.getuid() != 0 or open('/proc/self/status').read())")
    # /proc is not mounted: the status check itself fails unless the uid is non-zero at the root level
    if level == "namespaces-root":
        assert res.stdout == "True\n"
    res = run("import os\nos.setuid(0)")
    assert res.status == "error" and "PermissionError" in res.stderr


def test_seccomp_denies_namespaces_mounts_and_tracing_but_not_threads_or_subprocesses(level):
    src = """
        import ctypes, subprocess, threading
        libc = ctypes.CDLL(None, use_errno=True)
        for name, call in [("unshare", lambda: libc.unshare(0x10000000)),          # CLONE_NEWUSER
                           ("mount", lambda: libc.mount(b"none", b"/work", b"tmpfs", 0, None)),
                           ("ptrace", lambda: libc.ptrace(16, 1, 0, 0)),             # PTRACE_ATTACH
                           ("bpf", lambda: libc.syscall(321, 0, 0, 0))]:
            print(name, call(), ctypes.get_errno())
        t = threading.Thread(target=print, args=("thread",))
        t.start(); t.join()
        print(subprocess.run(["/bin/echo", "child"], capture_output=True, text=True).stdout.strip())
    """
    res = run(src)
    assert res.status == "ok", res
    lines = res.stdout.splitlines()
    assert lines[:4] == ["unshare -1 1", "mount -1 1", "ptrace -1 1", "bpf -1 1"]
    assert lines[4:] == ["thread", "child"]


# ------------------------------------------------------------------------------------------ output


def test_output_past_the_cap_is_truncated_and_the_program_stopped(level):
    res = run("while True:\n    print('x' * 1000)", output_bytes=100_000, timeout_s=60)
    assert (res.status, res.truncated, res.exit_code) == ("error", True, None)  # killed at the cap, not at the limit
    assert len(res.stdout) == 100_000


def test_stderr_flood_is_capped_too(level):
    res = run("import sys\nsys.stderr.write('e' * (5 << 20))", output_bytes=1 << 16)
    assert res.truncated and len(res.stderr) < (1 << 16) + 200


def test_invalid_utf8_output_does_not_break_the_host(level):
    res = run("import sys\nsys.stdout.buffer.write(bytes(range(256)))")
    assert res.status == "ok" and len(res.stdout) == 256


# -------------------------------------------------------------------------------- concurrency, pool


def test_run_is_thread_safe_under_concurrent_calls(level):
    results: dict[int, sandbox_module.ExecResult] = {}

    def work(i):
        results[i] = sandbox_module.run(f"print({i} * 2)")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i * 2}\n" for i in range(12)}


def _in_subprocess(src: str, env: dict | None = None, python: str = sys.executable, user: list | None = None):
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return subprocess.run(
        [*(user or []), python, "-c", textwrap.dedent(src)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workers_end_with_their_host_at_exit_and_when_killed(level):
    src = """
        import os, signal
        from rewards import sandbox as sandbox_module
        from rewards.sandbox import _state
        assert sandbox_module.run("print(1)").stdout == "1\\n"
        print(" ".join(str(w.proc.pid) for w in _state["pool"]._all), flush=True)
        if os.environ.get("DIE"):
            os.kill(os.getpid(), signal.SIGKILL)
    """
    for die in ("", "1"):
        proc = _in_subprocess(src, env={"DIE": die} if die else {})
        pids = [int(p) for p in proc.stdout.split()]
        assert pids, proc.stderr
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{p}").exists() for p in pids), f"workers {pids} outlived their host"


def test_a_forked_host_gets_its_own_workers(level):
    assert sandbox_module.run("print('parent')").stdout == "parent\n"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        try:
            out = sandbox_module.run("print('child')").stdout
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 100) == b"child\n"
    os.close(r)
    assert sandbox_module.run("print('parent again')").stdout == "parent again\n"


# -------------------------------------------------------------------------------- isolation levels


# What the namespace levels need from the kernel, tried without rewards.code: new mount, network
# and pid namespaces (and a user namespace when not root), and a tmpfs mounted inside them.
_KERNEL_PROBE = """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    flags = 0x00020000 | 0x40000000 | 0x20000000 | (0 if os.geteuid() == 0 else 0x10000000)
    if libc.unshare(flags) != 0:
        sys.exit(print("denied: unshare:", os.strerror(ctypes.get_errno())))
    if libc.mount(b"tmpfs", sys.argv[1].encode(), b"tmpfs", 0, b"size=1m") != 0:
        sys.exit(print("denied: mount:", os.strerror(ctypes.get_errno())))
    print("allowed")
"""


def test_the_sandbox_uses_namespaces_exactly_when_this_kernel_allows_them(tmp_path):
    """The namespace tests fail where the kernel has no namespaces for us (or skip, when
    RLWHF_SANDBOX_TESTS=skip says so). This test never skips: a sandbox that gave up on a machine
    that has them would otherwise pass where the namespace tests are told to skip."""
    probe = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KERNEL_PROBE), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    chosen = _in_subprocess(
        "from rewards import sandbox as sandbox_module\nprint(sandbox_module.isolation_level(), sandbox_module._get_pool()[2])",
        env={"RLWHF_SANDBOX": "auto"},
    )
    level = chosen.stdout.split()[0] if chosen.stdout else chosen.stderr
    assert (level in NAMESPACES) == (probe.stdout.strip() == "allowed"), (chosen.stdout, probe.stdout, probe.stderr)


# Tests that run no program: they must pass where no program can run.
NEED_NO_SANDBOX = {
    "test_extract_code_takes_the_last_closed_python_block",
    "test_extract_code_accepts_untagged_blocks_and_returns_none_without_one",
    "test_code_tests_is_registered_under_its_name",
    "test_no_tests_means_the_reward_does_not_apply",
    "test_unusable_test_specs_raise_clear_errors",
    "test_same_seed_gives_the_same_tasks_and_another_seed_does_not",
    "test_tasks_cover_every_family_and_have_the_reward_columns",
    "test_unknown_family_is_rejected_with_the_known_ones_listed",
}


def _pytest_outcomes(tmp_path: Path, env: dict) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run the code-reward tests and one sandbox test in a fresh pytest; {test: (outcome, message)}."""
    xml = tmp_path / f"junit-{len(list(tmp_path.iterdir()))}.xml"
    args = [
        "tests/test_code_rewards.py",
        "tests/test_coding_tasks.py",
        "tests/test_code_sandbox.py::test_program_output_and_exit_code_are_returned",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes = {}
    for case in ElementTree.parse(xml).iter("testcase"):
        marks = [(m.tag, m.get("message", "")) for m in case if m.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = marks[0] if marks else ("passed", "")
    return proc.returncode, outcomes


def test_where_no_program_can_run_sandbox_tests_fail_with_the_reason_and_the_others_pass(tmp_path):
    """A machine without isolation (simulated by RLWHF_SANDBOX=none): every test that runs a program
    fails, naming the reason and RLWHF_SANDBOX_TESTS; with RLWHF_SANDBOX_TESTS=skip they skip, naming
    the variable. Tests that run no program pass either way. Nothing skips without being told to."""
    env = {k: v for k, v in os.environ.items() if k != "RLWHF_SANDBOX_TESTS"}
    env["RLWHF_SANDBOX"] = "none"
    rc, strict = _pytest_outcomes(tmp_path, env)
    rc_skip, told = _pytest_outcomes(tmp_path, {**env, "RLWHF_SANDBOX_TESTS": "skip"})

    passed = {name for name, (outcome, _) in strict.items() if outcome == "passed"}
    assert passed == NEED_NO_SANDBOX, strict
    failed = {name: msg for name, (outcome, msg) in strict.items() if outcome != "passed"}
    assert failed and rc != 0
    for name, (outcome, msg) in strict.items():
        if name in failed:
            assert outcome == "error" and "'none'" in msg and "RLWHF_SANDBOX=none" in msg, (name, outcome, msg)
            assert "RLWHF_SANDBOX_TESTS=skip" in msg, (name, msg)

    assert rc_skip == 0 and told.keys() == strict.keys()
    for name, (outcome, msg) in told.items():
        expected = "passed" if name in NEED_NO_SANDBOX else "skipped"
        assert outcome == expected and (expected == "passed" or "RLWHF_SANDBOX_TESTS=skip" in msg), (name, msg)


def test_refuses_when_no_isolation_is_allowed():
    proc = _in_subprocess(
        "from rewards import sandbox as sandbox_module\nr = sandbox_module.run('print(1)')\nprint(r.status, sandbox_module.isolation_level())",
        env={"RLWHF_SANDBOX": "none"},
    )
    assert proc.stdout.split() == ["blocked", "none"], proc.stderr


def test_rlimits_unsafe_level_still_limits_time_and_memory():
    src = """
        from rewards import sandbox as sandbox_module
        print(sandbox_module.run("while True: pass", timeout_s=0.5).status)
        print(sandbox_module.run("x = bytearray(512 << 20)", memory_mb=64).status)
        print(sandbox_module.run("print(input())", stdin="ok").stdout.strip(), sandbox_module.isolation_level())
        print(sandbox_module.run("import socket\\nsocket.socket()").status)  # seccomp: no inet sockets
        print(sandbox_module.run("import os\\nprint(os.getuid() != 0)").stdout.strip())
        daemon = ("import os\\nif os.fork() == 0:\\n    os.setsid()\\n"
                  "    os.execv('/bin/sleep', ['sleep', '4243.5'])")
        print(sandbox_module.run(daemon).status)
    """
    proc = _in_subprocess(src, env={"RLWHF_SANDBOX": "rlimits-unsafe"})
    assert proc.stdout.split() == ["timeout", "memory", "ok", "rlimits-unsafe", "error", "True", "ok"], proc.stderr
    assert _processes_with("4243.5") == []


def test_unprivileged_host_gets_user_namespace_isolation_that_holds(tmp_path):
    """The same attacks, from a host that is not root: uid nobody with the system's interpreter
    when the tests run as root (the venv's may sit in root's home), else this user as it is."""
    if os.geteuid() != 0:
        user, python = [], sys.executable
    elif shutil.which("setpriv") and os.path.exists("/usr/bin/python3"):
        user, python = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], "/usr/bin/python3"
    else:
        why = (
            "the tests run as root, and this machine has no setpriv binary or no /usr/bin/python3, so no host "
            "can be started as an unprivileged user here"
        )
        pytest.skip(f"NOT RUN: {why}")
    src = """
        import os, time
        from rewards import sandbox as sandbox_module
        print("level", sandbox_module.isolation_level())
        r = sandbox_module.run("import os\\nn = 0\\nwhile True:\\n    try:\\n        if os.fork() == 0:\\n"
                     "            while True: pass\\n        n += 1\\n    except OSError:\\n"
                     "        print(n, flush=True)\\n        while True: pass", timeout_s=1, max_procs=8)
        print("forkloop", r.status, int(r.stdout.split()[0]) < 8)
        r = sandbox_module.run("import os\\nif os.fork() == 0:\\n    os.setsid()\\n    os.execv('/bin/sleep', ['sleep', '42' + '44.5'])")
        time.sleep(0.3)
        marker = ("42" + "44.5").encode()  # built at run time: our own command line must not match
        alive = [p for p in os.listdir("/proc") if p.isdigit() and marker in open(f"/proc/{p}/cmdline", "rb").read()]
        print("daemon", r.status, alive == [])
        print("memory", sandbox_module.run("x = bytearray(512 << 20)", memory_mb=64).status)
        r = sandbox_module.run("import os\\nprint(os.getpid(), os.path.exists(%r), os.path.exists('/etc/passwd'), "
                     "os.path.exists(%r))" % (os.environ["REPO"], os.environ["SECRET_DIR"]))
        print("files", r.stdout.strip())
        r = sandbox_module.run("import os\\ntry:\\n    os.kill(%d, 0)\\n    print('visible')\\n"
                     "except ProcessLookupError:\\n    print('hidden')" % os.getpid())
        print("signal", r.stdout.strip())
        r = sandbox_module.run("import socket\\nsocket.create_connection(('127.0.0.1', 22), timeout=1)")
        print("network", r.status, "ConnectionRefused" not in r.stderr)
        r = sandbox_module.run("import ctypes\\nprint(ctypes.CDLL(None, use_errno=True).unshare(0x10000000))")
        print("userns", r.stdout.strip())
        print("output", sandbox_module.run("while True: print('x' * 1000)", output_bytes=10000).truncated)
        print("env", "RLWHF_SECRET" in sandbox_module.run("import os\\nprint(dict(os.environ))").stdout)
    """
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    os.chmod(tmp_path, 0o755)
    env = {"PYTHONPATH": str(REPO), "SECRET_DIR": str(secret_dir), "RLWHF_SECRET": "x", "REPO": str(REPO)}
    proc = _in_subprocess(src, python=python, user=user, env=env)
    if proc.stdout.startswith("level none"):
        sandbox_unavailable(f"an unprivileged host gets no sandbox here: {proc.stdout.strip()}")
    assert proc.stdout.splitlines() == [
        "level namespaces-user",
        "forkloop timeout True",
        "daemon ok True",
        "memory memory",
        "files 1 False False False",
        "signal hidden",
        "network error True",
        "userns -1",
        "output True",
        "env False",
    ], (proc.stdout, proc.stderr)
