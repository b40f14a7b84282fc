"""Host side of the sandbox: a lazily started, fork-safe pool of pre-imported worker interpreters.

Each worker (``worker.py``) is a separate ``python -I -S`` process with an empty environment,
reached over one Unix socket pair. A request passes the code and the stdin as two memfds; the
worker answers with the read ends of the program's stdout and stderr pipes, which the caller's
thread reads here (asking the worker to kill the program past the output cap), then with a JSON
reply (exit status, wall time, why it was ended). So the worker never holds any run's code, input
or output. One request per worker at a time; ``run`` may be called from many threads.

Lifetime: the pool starts on first use; workers are killed at interpreter exit (``atexit``); a
worker whose host dies sees its socket close and exits, killing its program; a host that forks
drops its copy of the pool in the child (``os.register_at_fork``), so a forked host never shares
workers with its parent and starts its own on first use.
"""

from __future__ import annotations

import functools
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
LEVELS = ("namespaces-root", "namespaces-user", "rlimits-unsafe")
UID_BASE = int(os.environ.get("RLWHF_SANDBOX_UID_BASE", "2100000"))  # root level: program uid = base + slot


@functools.lru_cache(maxsize=1)
def python_paths() -> tuple[str, ...]:
    """Directories the program needs to import the standard library (bound read-only)."""
    import _json  # an extension module: its directory is lib-dynload, or the stdlib itself

    paths = {os.path.dirname(os.__file__), os.path.dirname(getattr(_json, "__file__", os.__file__))}
    return tuple(sorted(p for p in paths if p and os.path.isdir(p)))


def base_executable() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


class WorkerDied(RuntimeError):
    pass


class Worker:
    def __init__(self, level: str, slot: int):
        self.level, self.slot = level, slot
        host_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = worker_sock.fileno()
        argv = [base_executable(), "-I", "-S", "-B", WORKER_SCRIPT, str(fd), level, *python_paths()]
        self.proc = subprocess.Popen(
            argv,
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
            start_new_session=True,
            cwd="/",
        )
        worker_sock.close()
        self.sock = host_sock
        self.sock.settimeout(30)
        try:
            hello = self.sock.recv(4096)
        except OSError as exc:
            hello = repr(exc).encode()
        if hello != b"R":
            self.kill()
            why = hello[1:].decode(errors="replace") if hello[:1] == b"E" else f"no greeting ({hello!r})"
            raise WorkerDied(f"sandbox worker at level {level} could not start: {why}")

    def execute(self, req: dict, code: bytes, stdin: bytes, host_timeout: float) -> tuple[dict, bytes, bytes, bool]:
        """Send one program; read its stdout and stderr here (the worker hands over the pipes and
        never reads them), asking the worker to kill it past ``req["output_bytes"]``.
        Returns (the worker's reply, stdout, stderr, truncated)."""
        code_fd = _memfd("code", code)
        stdin_fd = _memfd("stdin", stdin)
        pipes: list[int] = []
        try:
            body = json.dumps(req).encode()
            self.sock.settimeout(host_timeout)
            socket.send_fds(self.sock, [b"Q" + struct.pack("<I", len(body))], [code_fd, stdin_fd])
            self.sock.sendall(body)
            tag, pipes, _, _ = socket.recv_fds(self.sock, 1, 2)
            if tag != b"O" or len(pipes) != 2:
                raise OSError(f"sandbox worker answered {tag!r} with {len(pipes)} pipes")
            return self._collect(pipes[0], pipes[1], req["output_bytes"], host_timeout)
        except (OSError, ValueError) as exc:  # socket.timeout is an OSError
            self.kill()
            raise WorkerDied(f"sandbox worker failed: {exc!r}") from exc
        except BaseException:  # e.g. KeyboardInterrupt mid-run: the conversation is out of step
            self.kill()
            raise
        finally:
            for fd in (code_fd, stdin_fd, *pipes):
                os.close(fd)

    def _collect(self, out_r: int, err_r: int, cap: int, host_timeout: float) -> tuple[dict, bytes, bytes, bool]:
        bufs = {out_r: bytearray(), err_r: bytearray()}
        sock_fd = self.sock.fileno()
        poller = select.poll()
        for fd in (out_r, err_r, sock_fd):
            poller.register(fd, select.POLLIN)
        open_pipes, reply, raw, truncated = {out_r, err_r}, None, bytearray(), False
        deadline = time.monotonic() + host_timeout
        while open_pipes or reply is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError("sandbox worker did not finish in time")
            for fd, _ in poller.poll(max(1, int(min(remaining, 1.0) * 1000))):
                if fd == sock_fd:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise OSError("sandbox worker closed its socket")
                    raw += chunk
                    if len(raw) >= 4 and len(raw) >= 4 + struct.unpack("<I", raw[:4])[0]:
                        reply = json.loads(raw[4:])
                        poller.unregister(sock_fd)
                        deadline = min(deadline, time.monotonic() + 5)  # every writer is dead now
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    open_pipes.discard(fd)
                    continue
                buf = bufs[fd]
                if len(buf) + len(chunk) > cap:
                    buf += chunk[: cap - len(buf)]
                    if not truncated and reply is None:
                        self.sock.sendall(b"K")  # the worker kills the program
                    truncated = True
                else:
                    buf += chunk
        return reply, bytes(bufs[out_r]), bytes(bufs[err_r]), truncated

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def forget(self) -> None:
        """In a forked host: close our copy of the socket, leave the parent's worker alone."""
        try:
            self.sock.close()
        except OSError:
            pass
        self.proc.returncode = 0  # never wait for or kill a process that is not our child
        self.proc = _Gone()


class _Gone:
    returncode = 0

    def poll(self):
        return 0


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


class Pool:
    """At most ``max_workers`` workers, started on demand, handed out one caller at a time."""

    def __init__(self, level: str, max_workers: int):
        self.level, self.max_workers = level, max_workers
        self._idle: list[Worker] = []
        self._slots_free = list(range(max_workers - 1, -1, -1))
        self._all: list[Worker] = []
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self) -> Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerDied("the sandbox pool is closed")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    self._drop(worker)
                if self._slots_free:
                    slot = self._slots_free.pop()
                    break
                self._cond.wait()
        try:
            worker = Worker(self.level, slot)
        except BaseException:
            with self._cond:
                self._slots_free.append(slot)
                self._cond.notify()
            raise
        with self._cond:
            self._all.append(worker)
        return worker

    def release(self, worker: Worker) -> None:
        with self._cond:
            if worker.alive() and not self._closed:
                self._idle.append(worker)
            else:
                worker.kill()
                self._drop(worker)
            self._cond.notify()

    def _drop(self, worker: Worker) -> None:
        if worker in self._all:
            self._all.remove(worker)
            self._slots_free.append(worker.slot)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._all, self._idle = self._all, [], []
            self._cond.notify_all()
        for worker in workers:
            worker.kill()

    def forget(self) -> None:
        self._closed = True
        for worker in self._all:
            worker.forget()
        self._all, self._idle = [], []
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        return len(self._all)
