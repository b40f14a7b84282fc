"""The interface every weight-sync transport keeps, and what they share: the routing bias sent after
the weights, and a restarted engine reloaded from the object store."""

from __future__ import annotations

import time

import ray


class WeightSync:
    """Pushes ``policy`` (a ``PolicyRanks``) into ``rollout`` (a ``RolloutEngines``)."""

    def __init__(self, bucket_mb: float):
        self.bucket_mb = bucket_mb

    def start(self, policy, rollout) -> None:
        """Called once both groups exist, before the first push; a restarted engine is reloaded by ``reload``."""
        rollout.on_restart = lambda engine: self.reload(policy, engine)

    def push(self, policy, rollout) -> dict:
        """The new weights, then the routing bias, into every engine; the step's ``time/sync`` and
        ``sync/*`` metrics."""
        t0 = time.perf_counter()
        metrics = self._send_weights(policy, rollout)
        bias = policy.routing_bias()
        if bias is not None:
            rollout.each("set_routing_bias", bias)
        return {"time/sync": time.perf_counter() - t0, **metrics}

    def _send_weights(self, policy, rollout) -> dict:
        raise NotImplementedError

    def reload(self, policy, engine) -> None:
        """An engine that Ray restarted takes the current weights and bias (through the object store,
        whatever the transport: a collective round needs every engine in its group)."""
        refs, _ = policy.weight_buckets(self.bucket_mb)
        ray.get(engine.update_weights.remote(refs))
        bias = policy.routing_bias()
        if bias is not None:
            ray.get(engine.set_routing_bias.remote(bias))
