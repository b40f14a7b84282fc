"""Advantages, policy losses, KL estimators: pure tensor functions.

They live in ``_core`` for now; issue 5 splits them one idea per module behind these names.
"""

from rlwhf.algo._core import (aggregate, entropy_from_logits, group_advantages, kl_estimate, logprob_mismatch,
                              overlong_penalty, pass_at_k, policy_loss, truncated_is_weights, zero_variance_groups)

__all__ = ["aggregate", "entropy_from_logits", "group_advantages", "kl_estimate", "logprob_mismatch",
           "overlong_penalty", "pass_at_k", "policy_loss", "truncated_is_weights", "zero_variance_groups"]
