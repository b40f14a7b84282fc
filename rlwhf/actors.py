"""The Ray actors of a run as the driver sees them: N policy ranks (``PolicyRanks``), M rollout
engines (``RolloutEngines``) and the reward worker (``RewardScorer``). ("Group" in rlwhf means a
prompt's completions, as in GRPO; these are sets of actors.)

- ``PolicyRanks``: N ``PolicyWorker`` actors that form one torch.distributed group and shard the
  policy (``rlwhf.train.distributed``). Every call goes to every rank (most are collectives); the
  driver reads rank 0's answer.
- ``RolloutEngines``: M engines; a batch's prompts are split into M contiguous parts, each prompt
  keeping the seed it has in the whole batch, so completions do not depend on M (vLLM).
- Weight sync between them is ``rlwhf.sync``'s: these classes only pass its calls to their actors.
- An engine or the reward worker that dies is restarted by Ray (``resources.max_restarts``); the
  class waits for it, has ``rlwhf.sync`` give an engine the current weights again
  (``on_restart``), and redoes its part of the step.
  A policy rank that dies ends the run: the rest of a collective cannot be recovered in place.

Workers that reserve CPUs or GPUs (``resources``) are held by a placement group, so a run starts
only when all of them fit.
"""

from __future__ import annotations

import dataclasses
import time

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlwhf.rollout.base import prompt_seeds
from rlwhf.workers import LOG_FILES, PolicyWorker, RewardWorker, RolloutWorker


def _actor(cls, cpus: float, gpus: float, bundles: list | None, index: int, max_restarts: int = 0):
    """``cls`` as a Ray actor with these resources, in bundle ``index`` of a placement group when
    the workers reserve anything (``bundles``)."""
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": max_restarts}
    if bundles is not None:
        pg, offset = bundles
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=offset + index
        )
    return ray.remote(cls).options(**options)


def wait_for_restart(actor, timeout_s: float = 600.0) -> None:
    """Block until ``actor``, restarted by Ray after it died, answers again (calls made while it
    restarts fail at once, and must not count as more deaths)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.ping.remote(), timeout=60)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def reserve(resources, timeout_s: float = 600.0):
    """A placement group with one bundle per policy worker, then per rollout engine, when they reserve
    CPUs or GPUs; None when they take turns on whatever the node has."""
    policy = {"CPU": resources.cpus_per_policy_worker, "GPU": resources.gpus_per_policy_worker}
    rollout = {"CPU": resources.cpus_per_rollout_engine, "GPU": resources.gpus_per_rollout_engine}
    policy, rollout = ({k: v for k, v in b.items() if v} for b in (policy, rollout))
    if not policy and not rollout:
        return None
    bundles = [policy or {"CPU": 0.001}] * resources.policy_workers + [
        rollout or {"CPU": 0.001}
    ] * resources.rollout_engines
    pg = placement_group(bundles, strategy=resources.placement.upper())
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(
            f"the cluster cannot hold the workers the recipe's resources ask for ({bundles}) within "
            f"{timeout_s:g} s: `rlwhf plan` shows what they need; lower resources.* or add nodes"
        )
    return pg


class PolicyRanks:
    def __init__(self, recipe, model_path: str, pg, log_dir, resume_from: str | None, **trainer_kwargs):
        res = recipe.resources
        n = res.policy_workers
        self.workers = [
            _actor(
                PolicyWorker,
                res.cpus_per_policy_worker,
                res.gpus_per_policy_worker,
                None if pg is None else (pg, 0),
                rank,
            ).remote(log_path=str(log_dir / (LOG_FILES["PolicyWorker"] if n == 1 else f"policy-{rank}.log")))
            for rank in range(n)
        ]
        address = ray.get(self.workers[0].address.remote()) if n > 1 else None
        ray.get(
            [
                w.setup.remote(
                    model_path,
                    recipe.algo,
                    recipe.train,
                    rank=rank,
                    world=n,
                    address=address,
                    resume_from=resume_from,
                    moe=recipe.moe,
                    **trainer_kwargs,
                )
                for rank, w in enumerate(self.workers)
            ]
        )

    def _all(self, method: str, *args):
        """Call ``method`` on every rank; rank 0's answer."""
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])[0]

    def train_on(self, batch, while_running=None) -> dict:
        """One update on every rank; ``while_running()`` is called once it is under way."""
        batch = ray.put(batch)
        refs = [w.train_on.remote(batch) for w in self.workers]
        if while_running is not None:
            while_running()
        return ray.get(refs)[0]

    def sequence_kl(self, batch) -> list[float]:
        return self._all("sequence_kl", ray.put(batch))

    # What rlwhf.sync asks of the policy's ranks.
    def weight_buckets(self, bucket_mb: float) -> tuple[list, int]:
        return self._all("weight_buckets", bucket_mb)

    def routing_bias(self):
        return self._all("routing_bias")

    def connect_engines(self, engines: list, tensor_parallel_size: int) -> None:
        address = ray.get(self.workers[0].address.remote())
        ray.get(
            [
                w.connect_engines.remote(engines, tensor_parallel_size, address if rank == 0 else None)
                for rank, w in enumerate(self.workers)
            ]
        )

    def send_weights(self) -> int:
        return self._all("send_weights")

    def save(self, path: str, extra_state: dict, extra_files: dict | None = None) -> None:
        self._all("save", path, extra_state, extra_files or {})


class RolloutEngines:
    def __init__(self, recipe, model_path: str, pg, log_dir, **engine_kwargs):
        res, self.recipe = recipe.resources, recipe
        m = res.rollout_engines
        self.restarts = 0
        self.on_restart = None  # called with an engine that Ray restarted (rlwhf.sync loads its weights)
        self.engines = [
            _actor(
                RolloutWorker,
                res.cpus_per_rollout_engine,
                res.gpus_per_rollout_engine,
                None if pg is None else (pg, res.policy_workers),
                i,
                res.max_restarts,
            ).remote(
                recipe.rollout.engine,
                model_path,
                engines=m,
                log_path=str(log_dir / (LOG_FILES["RolloutWorker"] if m == 1 else f"rollout-{i}.log")),
                **engine_kwargs,
            )
            for i in range(m)
        ]

    def generate(self, prompts: list, sampling) -> list:
        """Every prompt's completions: the prompts split into contiguous parts, one per engine, each
        prompt sampled with the seed it has in the whole batch."""
        seeds = sampling.prompt_seeds or prompt_seeds(sampling.seed, len(prompts))
        m = len(self.engines)
        bounds = [round(i * len(prompts) / m) for i in range(m + 1)]
        parts = [(i, bounds[i], bounds[i + 1]) for i in range(m) if bounds[i + 1] > bounds[i]]

        def call(i, a, b):
            part = dataclasses.replace(
                sampling, prompt_seeds=seeds[a:b], rows=sampling.rows[a:b] if sampling.rows else None
            )
            return self.engines[i].generate.remote(prompts[a:b], part)

        refs = {i: call(i, a, b) for i, a, b in parts}
        groups = []
        for i, a, b in parts:
            while True:
                try:
                    groups += ray.get(refs[i])
                    break
                except ray.exceptions.RayActorError:  # restarted by Ray: give it the current weights, ask again
                    self._recover(i)
                    refs[i] = call(i, a, b)
        return groups

    def each(self, method: str, *args) -> None:
        """Call ``method`` on every engine; one that died is restarted and brought up to date by
        ``on_restart`` instead."""
        refs = [getattr(e, method).remote(*args) for e in self.engines]
        for i, ref in enumerate(refs):
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                self._recover(i)

    def _recover(self, i: int) -> None:
        """Wait for engine ``i`` to come back from its restart, then bring it up to date (``on_restart``)."""
        self.restarts += 1
        if self.restarts > self.recipe.resources.max_restarts * len(self.engines):
            raise RuntimeError(f"rollout engines died {self.restarts} times; see their logs")
        wait_for_restart(self.engines[i])
        if self.on_restart is not None:
            self.on_restart(self.engines[i])


class RewardScorer:
    """The reward worker (its own pool of processes inside), restarted and asked again if it dies."""

    def __init__(self, recipe, log_dir):
        rc = recipe.rewards
        self.restarts, self.limit = 0, recipe.resources.max_restarts
        self.worker = _actor(RewardWorker, 0, 0, None, 0, self.limit).remote(
            rc.funcs,
            rc.timeout_s,
            rc.num_workers,
            warm_up_timeout_s=rc.warm_up_timeout_s,
            log_path=str(log_dir / LOG_FILES["RewardWorker"]),
        )

    def score(self, groups):
        while True:
            try:
                return ray.get(self.worker.score.remote(groups))
            except ray.exceptions.RayActorError:
                self.restarts += 1
                if self.restarts > self.limit:
                    raise
                wait_for_restart(self.worker)

    def close(self) -> None:
        ray.get(self.worker.close.remote())
