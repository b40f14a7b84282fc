"""Advantages, policy losses, KL estimators: pure tensor functions."""

from rlwhf.algo._core import *  # noqa: F401,F403  (interim core; replaced by the per-idea modules)
from rlwhf.algo._core import (aggregate, entropy_from_logits, group_advantages, kl_estimate, logprob_mismatch,
                              overlong_penalty, pass_at_k, policy_loss, truncated_is_weights, zero_variance_groups)
