"""Advantages, policy losses, KL estimators: pure tensor functions, one idea per module.

See docs/readme-algo.md for which recipe keys select which published variant.
"""

from rlwhf.algo._core import logprob_mismatch, overlong_penalty, pass_at_k, truncated_is_weights
from rlwhf.algo.advantages import group_advantages, zero_variance_groups
from rlwhf.algo.kl import kl_estimate
from rlwhf.algo.losses import aggregate, entropy_from_logits, policy_loss

__all__ = ["aggregate", "entropy_from_logits", "group_advantages", "kl_estimate", "logprob_mismatch",
           "overlong_penalty", "pass_at_k", "policy_loss", "truncated_is_weights", "zero_variance_groups"]
