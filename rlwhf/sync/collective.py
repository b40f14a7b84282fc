"""``sync.transport: collective``: the policy's ranks and every engine's workers form one process
group, and rank 0 broadcasts the weights into the engines through vLLM's weight-transfer API
(``weight_transfer``). A restarted engine cannot rejoin a group in place, so the group is formed
anew before the first push after a restart."""

from __future__ import annotations

from rlwhf.sync.base import WeightSync


class CollectiveSync(WeightSync):
    def __init__(self, bucket_mb: float):
        super().__init__(bucket_mb)
        self.connected_after: int | None = None  # the engines' restart count when the group was formed

    def start(self, policy, rollout) -> None:
        super().start(policy, rollout)
        self.connect(policy, rollout)

    def connect(self, policy, rollout) -> None:
        """Form the weight-transfer group of every rank and every engine."""
        policy.connect_engines(rollout.engines, rollout.recipe.rollout.tensor_parallel_size)
        self.connected_after = rollout.restarts

    def _send_weights(self, policy, rollout) -> dict:
        if self.connected_after != rollout.restarts:
            self.connect(policy, rollout)
        return {"sync/bytes": policy.send_weights()}
