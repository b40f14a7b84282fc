"""Faults, real and injected: SIGTERM as a preemption notice (the step finishes, a checkpoint is
written, the run stops), and ``RLWHF_FAULT``, with which the crash tests kill a run's processes at a
named point by SIGKILL, as when a machine goes down."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path


def fault_point(phase: str, step: int) -> None:
    """Fault injection for the crash tests: with ``RLWHF_FAULT=phase@step`` the run dies here by SIGKILL,
    the driver first, then this process (a worker's, for ``save``), as when a machine goes down.
    Phases: ``start`` (raises an error in the driver once the run directory is made), ``rollout`` (after sampling), ``update`` (while the policy trains), ``save`` (in the
    policy worker, the checkpoint's files written but not yet renamed into place); and, for a worker
    that dies alone, ``engine`` and ``reward`` (its ``step``-th call; with ``RLWHF_FAULT_MARK`` naming a
    file, only once: the restarted worker finds the file and lives)."""
    if os.environ.get("RLWHF_FAULT") != f"{phase}@{step}":
        return
    if phase == "start":  # a failure of rlwhf's own, not a crash: the error path's test
        raise RuntimeError(f"injected by RLWHF_FAULT={phase}@{step}")
    if phase in ("engine", "reward"):
        mark = os.environ.get("RLWHF_FAULT_MARK")
        if mark and os.path.exists(mark):
            return
        if mark:
            Path(mark).write_text(phase)
        os.kill(os.getpid(), signal.SIGKILL)
    driver = int(os.environ.get("RLWHF_DRIVER_PID", os.getpid()))
    if driver != os.getpid():
        os.kill(driver, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def watch_for_sigterm() -> threading.Event:
    """SIGTERM (a preemption notice) lets the current step finish, then the loop checkpoints and stops."""
    from rlwhf.run_log import say  # pandas; the trainer's processes import this module for fault_point only

    stop = threading.Event()

    def on_sigterm(signum, frame):
        say("SIGTERM: finishing this step, then writing a checkpoint and stopping")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return stop
