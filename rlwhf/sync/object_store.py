"""``sync.transport: object_store``: rank 0 puts the weights in Ray's object store once, in buckets,
and every engine reads them bucket by bucket, so no process holds a second whole copy."""

from __future__ import annotations

import ray

from rlwhf.sync.base import WeightSync


class ObjectStoreSync(WeightSync):
    def _send_weights(self, policy, rollout) -> dict:
        refs, size = policy.weight_buckets(self.bucket_mb)
        rollout.each("update_weights", refs)
        return {"sync/bytes": size, "sync/buckets": len(refs)}


def put_in_buckets(weights: dict, dtype, bucket_mb: float) -> tuple[list, int]:
    """The policy side (a ``PolicyWorker``): ``weights`` (a state dict, emptied as it goes) with their
    floating-point tensors cast to ``dtype``, in buckets of about ``bucket_mb`` MiB put in the object
    store; their references and the bytes."""
    refs, bucket, size, total = [], {}, 0, 0
    for name in list(weights):
        tensor = weights.pop(name).detach()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        bucket[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_mb * 2**20 or not weights:
            refs.append(ray.put(bucket))
            total += size
            bucket, size = {}, 0
    return refs, total


def take_buckets(weights):
    """The engine side (a ``RolloutWorker``): a state dict as it is, or the buckets behind object-store
    references, fetched one at a time as the engine reads them."""
    if isinstance(weights, list) and weights and isinstance(weights[0], ray.ObjectRef):
        return (ray.get(ref) for ref in weights)
    return weights
