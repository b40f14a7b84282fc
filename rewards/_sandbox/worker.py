"""Sandbox worker: a pre-imported Python interpreter that forks one isolated process per program.

Started by ``rewards._sandbox.pool`` as ``python -I -S -B worker.py <fd> <level> <stdlib dirs...>``
with an empty environment and one inherited socket (file descriptor ``<fd>``) to its host.
Standard library only: this file imports nothing from the project.

At start, once, the worker (``namespaces-user``: after becoming uid 0 of its own user namespace
and pid 1 of a pid namespace that namespace owns) enters private mount and network namespaces,
builds a read-only *template root* (a tmpfs with read-only binds of ``/usr``, ``/lib*``, ``/bin``,
``/sbin``, the standard library and four ``/dev`` nodes, and empty ``/work`` and ``/tmp``),
pivots into it, and installs the seccomp filter. The host's mounts are untouched.

Per program the worker forks a *program process* that is pid 1 of a new pid namespace (it
unshares the pid namespace for that one fork and sets it back). The program process unshares
mount, IPC and UTS namespaces, mounts fresh size-limited tmpfs on ``/work`` and ``/tmp``, drops
every privilege, sets rlimits, and only then reads and runs the untrusted code. The code and
stdin arrive as memfds that only the program process reads, and the output pipes go straight to
the host, so the worker never holds any run's code, input or output for a later program, forked
from it, to find in its memory. After the program, the program process ends as the interpreter
would (threads joined, atexit functions run, streams flushed) using only what was bound when the
worker started, so nothing a program rebinds in its own interpreter changes how its run ends.

``rlimits-unsafe`` skips every namespace: a process group, rlimits, a temporary directory and a
seccomp filter that also refuses internet sockets.
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import gc
import io
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

# Modules programs commonly import, so that importing them costs nothing in the forked process.
PREIMPORT = (
    "array bisect collections copy dataclasses decimal enum fractions functools heapq itertools "
    "math operator random re statistics string textwrap typing unicodedata"
)
for _name in PREIMPORT.split():
    __import__(_name)
del _name

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 24, 36
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SYSCALLS = {
    "x86_64": {
        "pivot_root": 155,
        "capset": 126,
        "clone": 56,
        "clone3": 435,
        "socket": 41,
        "unshare": 272,
        "audit_arch": 0xC000003E,
    },
    "aarch64": {
        "pivot_root": 41,
        "capset": 91,
        "clone": 220,
        "clone3": 435,
        "socket": 198,
        "unshare": 97,
        "audit_arch": 0xC00000B7,
    },
}
SYS = SYSCALLS.get(platform.machine(), {})
# Denied by the seccomp filter (EPERM): tracing, kernel keyrings, modules, kexec, BPF, perf,
# userfaultfd, io_uring, the new mount API, file handles, swap, reboot, accounting, syslog. (mount,
# unshare and setns stay allowed: the worker needs them, and without capabilities, which no
# program has and, with user namespaces denied, cannot get, the kernel refuses them anyway.)
DENIED_SYSCALLS = {
    "x86_64": [
        101,
        310,
        311,
        312,
        321,
        298,
        323,
        250,
        248,
        249,
        246,
        320,
        175,
        313,
        176,
        303,
        304,
        425,
        426,
        427,
        428,
        429,
        430,
        431,
        432,
        433,
        442,
        167,
        168,
        169,
        163,
        179,
        103,
        153,
        172,
        173,
        134,
    ],
    "aarch64": [
        117,
        270,
        271,
        272,
        280,
        241,
        282,
        219,
        217,
        218,
        104,
        294,
        105,
        273,
        106,
        264,
        265,
        425,
        426,
        427,
        428,
        429,
        430,
        431,
        432,
        433,
        442,
        224,
        225,
        142,
        89,
        60,
        116,
        58,
    ],
}
NAMESPACE_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | 0x02000000

EXIT_MEMORY = 213  # the program process ends with this code when the program dies of MemoryError
EXIT_SETUP = 214  # isolation could not be set up; the code was never run
ROOT = "/tmp"  # the template root is mounted over /tmp inside the worker's private mount namespace only
READ_ONLY_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin")
DEVICES = ("null", "zero", "urandom", "random")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Worker start: its own namespaces, with the template root
# ----------------------------------------------------------------------------------------------


def enter_user_namespace(sock: socket.socket) -> None:
    """namespaces-user: become uid 0 of a new user namespace (mapped to our own uid), then pid 1
    of a new pid namespace it owns, so that, like a root worker, we can fork each program
    straight into a pid namespace of its own. The original process stays behind as a relay whose
    death (the host killing it) takes us, and so every program, with it."""
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER), "unshare(user namespace)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _check(libc.unshare(CLONE_NEWPID), "unshare(pid namespace)")
    pid = os.fork()
    if pid != 0:
        sock.close()
        try:
            os.waitpid(pid, 0)
        finally:
            os._exit(0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def enter(level: str, python_paths: list[str]) -> None:
    # one empty network namespace per worker: its programs run one at a time and leave nothing in it
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare(mount and network namespaces)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in [*READ_ONLY_PATHS, *python_paths]:
        if not os.path.lexists(path):
            continue
        dest = ROOT + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if not os.path.lexists(dest):
                os.symlink(os.readlink(path), dest)
            continue
        os.makedirs(dest, exist_ok=True)
        _mount(path, dest, None, MS_BIND)
        _mount(None, dest, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(ROOT + "/dev")
    for dev in DEVICES:
        dest = f"{ROOT}/dev/{dev}"
        open(dest, "w").close()
        _mount(f"/dev/{dev}", dest, None, MS_BIND)
        _mount(None, dest, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    for d in ("/work", "/tmp", "/.old"):
        os.makedirs(ROOT + d)
    _mount(None, ROOT, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if level == "namespaces-user":
        try:  # no nested user namespaces for programs (defence in depth; fine if refused)
            _write("/proc/sys/user/max_user_namespaces", "0")
        except OSError:
            pass
    # the worker itself moves into the template: from here on no host file is reachable from it,
    # and every program it forks starts there
    _check(libc.syscall(SYS["pivot_root"], ROOT.encode(), (ROOT + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")


# ----------------------------------------------------------------------------------------------
# The program process: pid 1 of its own pid namespace (or a plain child at level rlimits-unsafe)
# ----------------------------------------------------------------------------------------------


def _fresh_namespaces(req: dict) -> None:
    """New mount, IPC and UTS namespaces, with fresh size-limited tmpfs on /work and /tmp."""
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    opts = f"size={req['file_mb']}m,mode=1777"
    _mount("tmpfs", "/work", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    libc.sethostname(b"sandbox", 7)


def _drop_privileges(req: dict) -> None:
    if req["level"] == "namespaces-root":
        uid = req["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to non-root: the kernel clears every capability
    else:  # uid 0 of the worker's user namespace: drop its capabilities too
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all zero
        _check(libc.syscall(SYS["capset"], header, data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


_STATM = -1  # the worker's /proc/self/statm, opened before it left the host's file system


def _seccomp_filter(deny_inet: bool) -> bytes:
    """A classic-BPF seccomp program: allow everything except DENIED_SYSCALLS (EPERM), clone with
    any namespace flag and unshare of a user namespace (EPERM), clone3 (ENOSYS: its flags cannot
    be inspected, so libc falls back to clone), and, when ``deny_inet``, sockets of any family but
    AF_UNIX (EPERM). A system call of another architecture kills the process.

    Installed in the worker once its own namespaces are made, so that every program inherits it
    (a filter cannot be removed) and no program pays for installing it."""
    LD, JA, JEQ, JGE, JSET, RET = 0x20, 0x05, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, EPERM, ENOSYS = 0x7FFF0000, 0x80000000, 0x00050000 | 1, 0x00050000 | 38
    NR, ARCH, ARG0 = 0, 4, 16  # offsets in struct seccomp_data (ARG0: low 32 bits, little-endian)
    machine = platform.machine()
    denied = DENIED_SYSCALLS[machine]
    prog = [(LD, 0, 0, ARCH), (JEQ, 1, 0, SYS["audit_arch"]), (RET, 0, 0, KILL), (LD, 0, 0, NR)]
    if machine == "x86_64":
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]  # x32 system calls
    n = len(denied)
    prog += [(JEQ, n - i, 0, nr) for i, nr in enumerate(denied)]  # each jumps to the EPERM below
    prog += [(JA, 0, 0, 1), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, SYS["clone3"]), (RET, 0, 0, ENOSYS)]
    prog += [(JEQ, 0, 3, SYS["clone"]), (LD, 0, 0, ARG0), (JSET, 0, 1, NAMESPACE_FLAGS), (RET, 0, 0, EPERM)]
    prog += [
        (LD, 0, 0, NR),
        (JEQ, 0, 3, SYS["unshare"]),
        (LD, 0, 0, ARG0),
        (JSET, 0, 1, CLONE_NEWUSER),
        (RET, 0, 0, EPERM),
    ]
    if deny_inet:
        prog += [
            (LD, 0, 0, NR),
            (JEQ, 0, 4, SYS["socket"]),
            (LD, 0, 0, ARG0),
            (JEQ, 0, 1, socket.AF_UNIX),
            (RET, 0, 0, ALLOW),
            (RET, 0, 0, EPERM),
        ]
    prog.append((RET, 0, 0, ALLOW))
    return b"".join(struct.pack("<HBBI", *insn) for insn in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(deny_inet: bool) -> None:
    raw = _seccomp_filter(deny_inet)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(raw) // 8, ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "seccomp")  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _vm_size_bytes() -> int:
    """Address space of the worker, which a freshly forked program process shares."""
    return int(os.pread(_STATM, 64, 0).split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _program_process(req: dict, fds: dict) -> None:
    """Never returns. Isolate, then run the program with ``exec`` in a fresh ``__main__``."""
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for stream in (sys.stdout, sys.stderr):  # the worker's buffers go to its fds, not the program's
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        vm_base = _vm_size_bytes()
        code = os.pread(fds["code"], os.fstat(fds["code"]).st_size, 0)
        namespaces = req["level"].startswith("namespaces")
        if namespaces:
            _fresh_namespaces(req)
        else:
            os.setsid()
            os.chdir(req["workdir"])
        os.dup2(fds["stdin"], 0)
        os.lseek(0, 0, os.SEEK_SET)
        os.dup2(fds["out_w"], 1)
        os.dup2(fds["err_w"], 2)
        if namespaces:
            _drop_privileges(req)
            os.chdir("/work")
        elif os.geteuid() == 0:  # rlimits-unsafe as root: at least not root
            os.setgroups([])
            os.setresgid(req["uid"], req["uid"], req["uid"])
            os.setresuid(req["uid"], req["uid"], req["uid"])
        limits = {
            resource.RLIMIT_CPU: int(req["timeout_s"]) + 1,
            resource.RLIMIT_NPROC: req["max_procs"],
            resource.RLIMIT_FSIZE: req["file_mb"] << 20,
            resource.RLIMIT_NOFILE: 256,
            resource.RLIMIT_CORE: 0,
            resource.RLIMIT_MSGQUEUE: 0,
            resource.RLIMIT_MEMLOCK: 0,
        }
        for which, value in limits.items():
            resource.setrlimit(which, (value, value + 1 if which == resource.RLIMIT_CPU else value))
        home = "/work" if namespaces else req["workdir"]
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"})
        sys.argv = ["solution.py"]
    except BaseException as exc:  # isolation failed: never run the code
        try:
            os.write(fds["ctl_w"], b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            _EXIT(EXIT_SETUP)
    os.closerange(3, 1 << 16)  # the host socket, the pipes, the memfds: nothing but 0, 1, 2 stays
    resource.setrlimit(resource.RLIMIT_AS, (vm_base + (req["memory_mb"] << 20),) * 2)
    _exec_program(code)


# What the program process runs after the program, bound once when the worker starts, before any
# program: a program may rebind builtins and module functions (open, print, SystemExit, os._exit,
# sys.exit, threading._shutdown...), replace sys.stdout or its methods, close its descriptors and
# lower its rlimits; its run still ends on what it printed and how it exited. (A program that
# reaches into these frames can choose its exit status, as it can with os._exit; nothing more.)
_EXIT, _WRITE = os._exit, os.write
_EXEC, _COMPILE, _ISINSTANCE, _INT, _STR, _TYPE, _GETATTR = exec, compile, isinstance, int, str, type, getattr
_SYSTEM_EXIT, _MEMORY_ERROR, _BASE_EXCEPTION = SystemExit, MemoryError, BaseException
_JOIN_THREADS = threading._shutdown  # what the interpreter runs at exit: join the non-daemon threads
_RUN_ATEXIT, _CLEAR_ATEXIT = atexit._run_exitfuncs, atexit._clear
_TEXT_FLUSH, _BUFFER_FLUSH = io.TextIOWrapper.flush, io.BufferedWriter.flush
_SYS, _DEFAULT_EXCEPTHOOK = sys, sys.__excepthook__


def _exec_program(code: bytes) -> None:
    """Run the program in a fresh ``__main__``, then end the process as the interpreter would at
    exit (join threads, run atexit functions, flush the streams), with an exit status that says
    how the program ended: 0, its ``SystemExit`` code, 1 for an uncaught exception, EXIT_MEMORY
    for MemoryError. Never returns."""
    streams = []
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        raw = open(fd, mode + "b", closefd=False, buffering=-1)
        text = io.TextIOWrapper(
            raw, encoding="utf-8", errors="replace" if fd else "strict", line_buffering=False, write_through=fd == 2
        )
        setattr(sys, name, text)
        setattr(sys, f"__{name}__", text)
        if fd:
            streams.append((text, raw))
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    _CLEAR_ATEXIT()  # the worker's exit functions, if it has any, are not the program's
    status = 1
    try:
        try:
            _EXEC(_COMPILE(code, "solution.py", "exec"), main.__dict__)
            status = 0
        except _SYSTEM_EXIT as exc:
            status = _system_exit_status(exc)
        except _MEMORY_ERROR:
            status = EXIT_MEMORY
            _write_stderr("MemoryError: the program exceeded its memory limit\n")
        except _BASE_EXCEPTION as exc:
            status = 1
            _print_uncaught(exc)
        for at_exit in (_JOIN_THREADS, _RUN_ATEXIT):
            try:
                at_exit()
            except _BASE_EXCEPTION:
                pass
        _flush_streams(streams)
    finally:
        _EXIT(status)


def _system_exit_status(exc: BaseException) -> int:
    """The exit status the interpreter gives ``raise SystemExit(code)``: None is 0, an integer is
    itself (modulo 256), anything else is printed to stderr and is 1."""
    try:
        code = exc.code
        if code is None:
            return 0
        if _ISINSTANCE(code, _INT):
            return _INT.__and__(code, 0xFF) if -(1 << 63) <= code < (1 << 63) else 0xFF
        _write_stderr(_STR(code) + "\n")
    except _BASE_EXCEPTION:
        pass
    return 1


def _write_stderr(text: str) -> None:
    try:
        data = _STR.encode(text, "utf-8", "backslashreplace")
        while data:
            data = data[_WRITE(2, data) :]
    except _BASE_EXCEPTION:
        pass


def _print_uncaught(exc: BaseException) -> None:
    """Print the traceback as the interpreter would (``sys.excepthook``, the default one if that
    fails), without the first frame, which is this module's ``exec``."""
    try:
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None
        _BASE_EXCEPTION.with_traceback(exc, tb)
        try:
            _GETATTR(_SYS, "excepthook")(_TYPE(exc), exc, tb)
        except _BASE_EXCEPTION:
            _DEFAULT_EXCEPTHOOK(_TYPE(exc), exc, tb)
    except _BASE_EXCEPTION:
        pass


def _flush_streams(streams: list) -> None:
    """As the interpreter does at exit: flush the program's ``sys.stdout`` and ``sys.stderr``,
    whatever they now are, then the streams it started with, through their types' own methods."""
    for name in ("stdout", "stderr"):
        try:
            stream = _GETATTR(_SYS, name, None)
            if stream is not None:
                stream.flush()
        except _BASE_EXCEPTION:
            pass
    for text, raw in streams:
        for flush, stream in ((_TEXT_FLUSH, text), (_BUFFER_FLUSH, raw)):
            try:
                flush(stream)
            except _BASE_EXCEPTION:
                pass


# ----------------------------------------------------------------------------------------------
# Starting the program process in a new pid namespace
# ----------------------------------------------------------------------------------------------

_ORIGINAL_PIDNS = -1  # fd of the worker's own pid namespace (namespaces-root)


def _spawn(req: dict, fds: dict) -> int:
    """Fork the program process: pid 1 of a new pid namespace at the namespace levels."""
    level = req["level"]
    if level.startswith("namespaces"):
        _check(libc.unshare(CLONE_NEWPID), "unshare(pid namespace)")
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:  # the next fork of the worker goes back to the worker's own pid namespace
                _check(libc.setns(_ORIGINAL_PIDNS, CLONE_NEWPID), "setns(pid namespace)")
        if pid == 0:
            _child(req, fds)
        return pid
    pid = os.fork()
    if pid == 0:
        _child(req, fds)
    return pid


def _child(req: dict, fds: dict) -> None:
    """Whatever happens in the forked child, it never returns into the worker's code."""
    try:
        _program_process(req, fds)
    finally:
        _EXIT(EXIT_SETUP)  # bound before the program ran: a rebound os._exit cannot bring it back here


# ----------------------------------------------------------------------------------------------
# The worker: one request at a time; enforces time and output caps from outside the sandbox
# ----------------------------------------------------------------------------------------------


def execute(req: dict, code_fd: int, stdin_fd: int, sock: socket.socket) -> dict:
    """Run one program; the host reads its output pipes itself, so no byte of any program's
    output (which may be another run's expected answer) ever sits in the worker's memory, from
    which later programs are forked."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    start = time.monotonic()
    workdir = None
    if req["level"] == "rlimits-unsafe":
        workdir = req["workdir"] = tempfile.mkdtemp(prefix="rlwhf-sandbox-")
        if os.geteuid() == 0:
            os.chown(workdir, req["uid"], req["uid"])
    fds = {"code": code_fd, "stdin": stdin_fd, "out_w": out_w, "err_w": err_w, "ctl_w": ctl_w}
    child = _spawn(req, fds)
    for fd in (out_w, err_w, ctl_w, code_fd, stdin_fd):
        os.close(fd)
    socket.send_fds(sock, [b"O"], [out_r, err_r])
    os.close(out_r)
    os.close(err_r)
    child_fd = os.pidfd_open(child)
    deadline = start + req["timeout_s"]
    ctl = bytearray()
    poller = select.poll()
    for fd in (ctl_r, sock.fileno(), child_fd):
        poller.register(fd, select.POLLIN)
    reason = None  # why the worker ended the program: timeout, output (the host asked), host (gone)
    child_done = False
    while not child_done and reason is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "timeout"
            break
        for fd, _ in poller.poll(max(1, min(int(remaining * 1000) + 1, 1000))):
            if fd == sock.fileno():
                reason = "output" if sock.recv(1) == b"K" else "host"
            elif fd == child_fd:
                child_done = True
                if req["level"] == "rlimits-unsafe":  # what it left behind would hold the pipes open
                    _kill(-child)
                    _kill_reparented(skip=child)
            else:
                chunk = os.read(ctl_r, 65536)
                if chunk:
                    ctl += chunk
                else:
                    poller.unregister(ctl_r)
    # the program process is pid 1 of its namespace: killing it kills every process the program made
    if not child_done:
        _kill(child)
        if req["level"] == "rlimits-unsafe":
            _kill(-child)
    _, status = os.waitpid(child, 0)
    os.close(child_fd)
    while True:  # a setup error, if any
        chunk = os.read(ctl_r, 65536)
        if not chunk:
            break
        ctl += chunk
    os.close(ctl_r)
    setup_error = ctl[1:].decode(errors="replace") if ctl[:1] == b"E" else None
    if req["level"] == "rlimits-unsafe":
        _kill(-child)
        _kill_reparented(skip=child)
    _reap_orphans()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    reply = {
        "wall_s": time.monotonic() - start,
        "reason": reason,
        "setup_error": setup_error,
        "exit_code": None,
        "signal": None,
    }
    if reason is None and status is not None:
        if os.WIFEXITED(status):
            reply["exit_code"] = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            reply["signal"] = os.WTERMSIG(status)
    return reply


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _kill_reparented(skip: int) -> None:
    """rlimits-unsafe: daemons that left the process group were reparented to us (a subreaper);
    kill them, and then theirs, until none is left."""
    me = str(os.getpid()).encode()
    for _ in range(100):
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in (os.getpid(), skip):
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                if fields[1] == me:
                    found.append(int(entry))
        if not found:
            return
        for pid in found:
            _kill(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _reap_orphans() -> None:
    """The worker is a subreaper: reap (already killed) processes reparented to it."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]] | None:
    """A request is b"Q", a 4-byte length and JSON, with the code and stdin memfds attached. A
    b"K" here is a kill request that arrived after its program had already ended: skipped."""
    while True:
        tag, fds, _, _ = socket.recv_fds(sock, 1, 4)
        if not tag:
            return None
        if tag == b"Q":
            break
        for fd in fds:
            os.close(fd)
    header = b""
    while len(header) < 4:
        more = sock.recv(4 - len(header))
        if not more:
            return None
        header += more
    (size,) = struct.unpack("<I", header)
    body = bytearray()
    while len(body) < size:
        more = sock.recv(size - len(body))
        if not more:
            return None
        body += more
    return json.loads(body), list(fds)


def main() -> None:
    global _ORIGINAL_PIDNS, _STATM
    sock = socket.socket(fileno=int(sys.argv[1]))
    level, python_paths = sys.argv[2], sys.argv[3:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if not SYS:
            raise OSError(f"unsupported machine {platform.machine()!r} (supported: x86_64, aarch64)")
        if level == "namespaces-user":
            enter_user_namespace(sock)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        _ORIGINAL_PIDNS = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        _STATM = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        if level.startswith("namespaces"):
            enter(level, python_paths)
            sys.path[:] = [p for p in sys.path if os.path.isdir(p)]  # what the template root holds
        _install_seccomp(deny_inet=not level.startswith("namespaces"))
    except BaseException as exc:
        sock.sendall(b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
        return
    gc.freeze()  # keep the collector off the pre-imported objects, so forked children share their pages
    sock.sendall(b"R")
    while True:
        got = _recv_request(sock)
        if got is None:
            return
        req, fds = got
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return
        req["level"] = level
        reply = execute(req, fds[0], fds[1], sock)
        if reply["reason"] == "host":
            return
        head = json.dumps(reply).encode()
        sock.sendall(struct.pack("<I", len(head)) + head)


if __name__ == "__main__":
    main()
