"""Ray actors: thin adapters from Ray to the plain classes that do the work.

Each class here only forwards to a plain, Ray-free class (``RolloutEngine``, ``PolicyTrainer``,
``RewardRunner``), so the work itself is testable without Ray.
"""

from __future__ import annotations

import os

import ray


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray for this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error",
             "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "1"}
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in quiet.items()}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=True, configure_logging=True, logging_level="WARNING")


def usable_cores(shared: bool = False) -> int:
    """Cores this process may run on (its CPU affinity); half of them when ``shared``; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // 2 if shared else cores)


def claim_cores(shared: bool) -> None:
    """Give torch every usable core in this actor, half of them when ``shared``.

    Ray sets OMP_NUM_THREADS=1 in an actor started with num_cpus=0, which leaves one core idle while
    the other trains or generates. The synchronous loop's actors take turns on the cores, so each
    may use all of them; in one-step async mode the rollout engine and the trainer run at once and
    split them.
    """
    import torch

    torch.set_num_threads(usable_cores(shared))


# max_calls=1: the task's worker process exits afterwards and frees the SFT model's memory.
@ray.remote(num_cpus=0, max_calls=1)
def cold_start_sft_task(*args, **kwargs) -> int:
    """``cold_start_sft`` as a Ray task, on every usable core (see ``claim_cores``); returns the thread count."""
    import torch

    from rlwhf.train.sft import cold_start_sft

    claim_cores(False)
    cold_start_sft(*args, **kwargs)
    return torch.get_num_threads()


class RolloutWorker:
    def __init__(self, kind: str, model_path: str, *, shared_cores: bool = False, **engine_kwargs):
        from rlwhf.rollout import make_engine

        claim_cores(shared_cores)
        self.engine = make_engine(kind, model_path, **engine_kwargs)

    def generate(self, prompts, sampling):
        return self.engine.generate(prompts, sampling)

    def update_weights(self, state_dict) -> None:
        self.engine.update_weights(state_dict)


class PolicyWorker:
    def __init__(self, model_path: str, algo, train, *, resume_from: str | None = None, **trainer_kwargs):
        from rlwhf.train.policy import PolicyTrainer

        claim_cores(train.off_policy_steps > 0)  # PolicyTrainer then applies train.threads when set
        self.trainer = PolicyTrainer(model_path, algo, train, **trainer_kwargs)
        if resume_from:
            self.trainer.load_trainer_state(resume_from)

    def train_on(self, batch):
        return self.trainer.train_on(batch)

    def sequence_kl(self, batch):
        return self.trainer.sequence_kl(batch)

    def state_dict(self):
        return self.trainer.state_dict()

    def save(self, path: str, extra_state: dict) -> str:
        return str(self.trainer.save(path, extra_state))


class RewardWorker:
    def __init__(self, specs, timeout_s: float, num_workers: int):
        from rlwhf.reward_runner import RewardRunner

        self.runner = RewardRunner(specs, timeout_s=timeout_s, num_workers=num_workers)

    def score(self, groups):
        return self.runner.score(groups)

    def close(self) -> None:
        self.runner.close()


def remote(cls, num_gpus: float = 0):
    # num_cpus=0: the three actors take turns on the same cores in the synchronous loop, and a
    # laptop with two cores must be able to host all of them.
    return ray.remote(num_cpus=0, num_gpus=num_gpus)(cls)
