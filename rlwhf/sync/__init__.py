"""Weight sync: the policy's new weights into the running rollout engines after every update, and
into an engine that Ray restarted. One small interface (``WeightSync``: ``start``, ``push``,
``reload``), one class per transport, and ``make_sync`` choosing by ``sync.transport``:

- ``object_store`` (``ObjectStoreSync``): rank 0 gathers the weights once into buckets of about
  ``sync.bucket_mb`` MiB in Ray's object store; every engine reads them bucket by bucket.
- ``collective`` (``CollectiveSync``): rank 0 broadcasts them into every engine through vLLM's
  weight-transfer API (``weight_transfer``: NCCL on GPUs, gloo here).

Either way the MoE selection bias of auxiliary-loss-free balancing follows the weights by the
same call (``set_routing_bias`` on every engine), and a restarted engine reloads from the object
store. The loop, the actor sets (``rlwhf.actors``) and the workers only call what is here; a new transport (NCCL without
vLLM's API, a shared filesystem) is one more class in this folder.
"""

from rlwhf.sync.base import WeightSync
from rlwhf.sync.collective import CollectiveSync
from rlwhf.sync.object_store import ObjectStoreSync


def make_sync(recipe) -> WeightSync:
    """The recipe's transport (``sync.transport``)."""
    if recipe.sync.transport == "collective":
        return CollectiveSync(recipe.sync.bucket_mb)
    return ObjectStoreSync(recipe.sync.bucket_mb)


__all__ = ["CollectiveSync", "ObjectStoreSync", "WeightSync", "make_sync"]
