"""Ray actors: thin adapters from Ray to the plain classes that do the work.

Each class here only forwards to a plain, Ray-free class (``RolloutEngine``, ``PolicyTrainer``,
``RewardRunner``), so the work itself is testable without Ray.

Given a ``log_path``, a worker writes everything its process prints (vLLM's and transformers'
logs, warnings, tracebacks) to that file instead of the driver's console: the console keeps the
progress bars and metrics lines, the run directory keeps the full logs (``logs/<worker>.log``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import ray

from rlwhf.faults import fault_point
from rlwhf.reward_runner import RewardRunner
from rlwhf.sync.object_store import put_in_buckets, take_buckets
from rlwhf.train.sft import cold_start_sft

# Which log file in the run directory holds each worker's output (see ``log_to``).
LOG_FILES = {
    "RolloutWorker": "rollout.log",
    "PolicyWorker": "policy.log",
    "RewardWorker": "rewards.log",
    "cold_start_sft_task": "sft.log",
}


def describe_failure(exc: BaseException, log_dir) -> str:
    """A worker's error in one line, the error itself first, then where that worker's full log is."""

    cause = getattr(exc, "cause", None)
    text = str(exc)
    if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
        headline = f"{type(cause).__name__}: {str(cause).strip()}"
    else:  # an actor that died, or failed in __init__: the remote traceback is in the message
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
        headline = errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)
    headline = headline.splitlines()[0][:400] if headline else type(exc).__name__
    where = getattr(exc, "function_name", "") or text
    worker = next((name for name in LOG_FILES if name in where), None)
    if worker is None:
        return f"a worker failed: {headline} (worker logs: {Path(log_dir)})"
    hint = (
        (
            "\n  a policy rank cannot rejoin its group mid-step: continue from the last checkpoint with "
            f"`rlwhf train --resume {Path(log_dir).parent}`"
        )
        if worker == "PolicyWorker"
        else ""
    )
    return (
        f"{worker} failed: {headline}\n  its full log (one per rank or engine when there are several): "
        f"{Path(log_dir) / LOG_FILES[worker]}{hint}"
    )


def log_to(path: str | None) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C code and child
    processes too) to the end of ``path``; nothing when ``path`` is None."""
    if path is None:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray for this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers log to files in the run directory (``log_to``); these keep the files to what matters.
    quiet = {
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TRANSFORMERS_VERBOSITY": "error",
        "RAY_DEDUP_LOGS": "1",
    }
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in quiet.items()}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=True,
            logging_level="WARNING",
        )


def usable_cores(shared: bool = False, parts: int = 1) -> int:
    """Cores this process may run on (its CPU affinity), split among ``parts`` processes that run at
    once, and halved again when ``shared``; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (parts * (2 if shared else 1)))


def claim_cores(shared: bool, parts: int = 1) -> None:
    """Give torch this actor's share of the usable cores (``usable_cores``).

    Ray sets OMP_NUM_THREADS=1 in an actor started with num_cpus=0, which leaves one core idle while
    the other trains or generates. The synchronous loop's actors take turns on the cores, so each
    may use all of them; in one-step async mode the rollout engine and the trainer run at once and
    split them; N policy workers (or M engines) run at once and split them N (or M) ways.
    """
    import torch

    torch.set_num_threads(usable_cores(shared, parts))


class ProgressBoard:
    """The latest ``(step, loss)`` that a long task reports, read by the driver for its progress bar."""

    def __init__(self):
        self.latest: tuple[int, float | None] = (0, None)

    def report(self, step: int, loss: float | None) -> None:
        self.latest = (step, loss)

    def read(self) -> tuple[int, float | None]:
        return self.latest


# max_calls=1: the task's worker process exits afterwards and frees the SFT model's memory.
@ray.remote(num_cpus=0, max_calls=1)
def cold_start_sft_task(*args, log_path: str | None = None, progress=None, **kwargs) -> int:
    """``cold_start_sft`` as a Ray task, on every usable core (see ``claim_cores``); returns the thread
    count. ``progress``: a ``ProgressBoard`` actor that hears ``(step, loss)`` after each step."""
    import torch

    log_to(log_path)
    claim_cores(False)
    on_step = (lambda step, loss: progress.report.remote(step, loss)) if progress is not None else None
    cold_start_sft(*args, on_step=on_step, **kwargs)
    return torch.get_num_threads()


class RolloutWorker:
    def __init__(
        self,
        kind: str,
        model_path: str,
        *,
        shared_cores: bool = False,
        engines: int = 1,
        log_path: str | None = None,
        **engine_kwargs,
    ):
        log_to(log_path)
        from rlwhf.rollout import make_engine

        claim_cores(shared_cores, engines)
        self.engine = make_engine(kind, model_path, **engine_kwargs)
        self.calls = 0

    def ping(self) -> bool:
        return True

    def generate(self, prompts, sampling):
        self.calls += 1
        fault_point("engine", self.calls)
        return self.engine.generate(prompts, sampling)

    def update_weights(self, weights) -> None:
        """A state dict, or the object-store references of its buckets (``PolicyWorker.weight_buckets``),
        read one bucket at a time."""
        self.engine.update_weights(take_buckets(weights))

    def set_routing_bias(self, bias) -> None:
        self.engine.set_routing_bias(bias)

    # vLLM's weight-transfer API, called by the policy's rank 0 (rlwhf.sync.weight_transfer.EnginesClient)
    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.engine.shutdown_weight_transfer_engine()  # a group from before an engine restart is gone
        self.engine.init_weight_transfer_engine(init_info)

    def start_weight_update(self) -> None:
        self.engine.start_weight_update()

    def receive_weights(self, update_info: dict) -> None:
        self.engine.receive_weights(update_info)

    def finish_weight_update(self) -> None:
        self.engine.finish_weight_update()


class PolicyWorker:
    """One rank of the policy. Built in one step (``model_path`` given), or in two for a sharded
    group: created empty, then ``setup`` on every rank at once, after rank 0's ``address``."""

    def __init__(
        self, model_path: str | None = None, algo=None, train=None, *, log_path: str | None = None, **setup_kwargs
    ):
        log_to(log_path)
        if model_path is not None:
            self.setup(model_path, algo, train, **setup_kwargs)

    def address(self) -> tuple[str, int]:
        from rlwhf.train.distributed import free_address

        return free_address()

    def setup(
        self,
        model_path: str,
        algo,
        train,
        *,
        rank: int = 0,
        world: int = 1,
        address=None,
        resume_from: str | None = None,
        **trainer_kwargs,
    ) -> None:
        from rlwhf.train.distributed import init_group
        from rlwhf.train.policy import PolicyTrainer, resolve_device

        claim_cores(train.off_policy_steps > 0, world)  # PolicyTrainer then applies train.threads when set
        mesh = init_group(rank, world, *address, resolve_device(train.device)) if world > 1 else None
        self.trainer = PolicyTrainer(model_path, algo, train, mesh=mesh, **trainer_kwargs)
        if resume_from:
            self.trainer.load_trainer_state(resume_from)

    def train_on(self, batch):
        return self.trainer.train_on(batch)

    def sequence_kl(self, batch):
        return self.trainer.sequence_kl(batch)

    def weight_buckets(self, bucket_mb: float) -> tuple[list, int]:
        """The weights in the compute dtype, in buckets of about ``bucket_mb`` MiB each put in Ray's
        object store, and their bytes: rank 0's; the other ranks take part in gathering them and
        return none. The gathered state dict is read bucket by bucket, so the object store holds the
        only copy of the whole model."""
        return put_in_buckets(self.trainer.full_state_dict(), self.trainer.compute_dtype, bucket_mb)

    def routing_bias(self):
        """The MoE selection bias the engines select with (``rlwhf.sync`` sends it after the weights), or None."""
        bias = self.trainer.bias_for_engines()
        return None if bias is None else bias.detach().float().cpu()

    def connect_engines(self, engines: list, tp: int, address: tuple[str, int] | None) -> None:
        """Join the weight-transfer group with the rollout engines (every rank: rank 0 sends, the
        others take part in gathering the weights); a group from before replaced."""
        from rlwhf.sync.weight_transfer import connect  # vLLM

        if getattr(self, "transfer", None) is not None:
            self.transfer.shutdown()
        self.engines = engines
        self.transfer = connect(
            self.trainer.model,
            self.trainer.compute_dtype,
            engines,
            tp,
            rank=self.trainer.rank,
            address=address,
            device_type=self.trainer.device.type,
        )

    def send_weights(self) -> int:
        """The policy's weights into every engine through vLLM's weight-transfer API (a collective of
        every rank). Returns the bytes sent (rank 0's count)."""
        self.transfer.send_weights()
        if self.trainer.rank != 0:
            return 0
        return sum(m.dtype.itemsize * math.prod(m.shape) for m in self.transfer.source.metadata())

    def save(self, path: str, extra_state: dict, extra_files: dict[str, bytes] | None = None) -> str:
        return str(self.trainer.save(path, extra_state, extra_files))


class RewardWorker:
    def __init__(
        self,
        specs,
        timeout_s: float,
        num_workers: int,
        *,
        warm_up_timeout_s: float = 120.0,
        log_path: str | None = None,
    ):
        log_to(log_path)

        self.runner = RewardRunner(
            specs, timeout_s=timeout_s, num_workers=num_workers, warm_up_timeout_s=warm_up_timeout_s
        )
        self.calls = 0

    def ping(self) -> bool:
        return True

    def score(self, groups):
        self.calls += 1
        fault_point("reward", self.calls)
        return self.runner.score(groups)

    def close(self) -> None:
        self.runner.close()


def remote(cls, num_gpus: float = 0):
    # num_cpus=0: the three actors take turns on the same cores in the synchronous loop, and a
    # laptop with two cores must be able to host all of them.
    return ray.remote(num_cpus=0, num_gpus=num_gpus)(cls)
