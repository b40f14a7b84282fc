"""Advantages, policy losses, KL estimators: pure tensor functions, one idea per module.

See docs/algorithms.md for which recipe keys select which published variant.
"""

from rlwhf.algo.advantages import group_advantages, scale_negative, zero_variance_groups
from rlwhf.algo.kl import kl_estimate
from rlwhf.algo.length import mask_truncated, overlong_penalty
from rlwhf.algo.losses import aggregate, entropy_from_logits, normaliser, policy_loss
from rlwhf.algo.metrics import pass_at_k
from rlwhf.algo.offpolicy import logprob_mismatch, truncated_is_weights

__all__ = [
    "aggregate",
    "entropy_from_logits",
    "group_advantages",
    "kl_estimate",
    "logprob_mismatch",
    "mask_truncated",
    "normaliser",
    "overlong_penalty",
    "pass_at_k",
    "policy_loss",
    "scale_negative",
    "truncated_is_weights",
    "zero_variance_groups",
]
