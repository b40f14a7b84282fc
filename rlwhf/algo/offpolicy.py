"""Correcting for the gap between the rollout engine's log-probs and the trainer's.

The rollout engine (vLLM: other kernels, other precision, sometimes stale weights) samples from a
policy ``pi_rollout`` that is not exactly the trainer's ``pi_old``, even at the same weights. The
policy loss assumes samples from ``pi_old``; truncated importance sampling (TIS) reweights each
token by ``pi_old / pi_rollout``, truncated at ``cap`` to bound the variance (the truncation of
IMPALA's V-trace, Espeholt et al. 2018; applied to the rollout/trainer mismatch by Yao et al. 2025,
"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").
"""

from __future__ import annotations

import math

from torch import Tensor


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, cap: float = 2.0) -> Tensor:
    """Per-token weights ``min(exp(old_logp - rollout_logp), cap)``, detached; same shape as the inputs.

    Pass them as ``policy_loss(..., is_weights=...)``. The exponent is bounded before ``exp``, so a
    huge mismatch gives ``cap``, never ``inf``. Padding positions are the caller's to mask.
    """
    if not cap > 0:
        raise ValueError(f"cap {cap!r}: expected a positive truncation level (e.g. 2.0)")
    log_w = (old_logp.detach() - rollout_logp.detach()).clamp(max=math.log(cap))
    return log_w.exp()


def logprob_mismatch(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the rollout engine's log-probs are from the trainer's, over the tokens of ``mask``.

    ``logp_diff_abs_mean``: mean ``|old_logp - rollout_logp|``; ``is_ratio_max``: largest
    ``exp(old_logp - rollout_logp)`` (before truncation). Both 0.0 / 1.0 for an empty mask.
    """
    m = mask.bool()
    diff = (old_logp.detach() - rollout_logp.detach())[m]
    if diff.numel() == 0:
        return {"logp_diff_abs_mean": 0.0, "is_ratio_max": 1.0}
    return {"logp_diff_abs_mean": float(diff.abs().mean()), "is_ratio_max": float(diff.max().exp())}
