"""Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman 2020).

J. Schulman, "Approximating KL Divergence" (blog post, 2020). With ``x ~ pi`` and
``log_r = log ref(x) - log pi(x)``:

- k1 = ``-log_r``: unbiased, high variance, negative on some samples;
- k2 = ``log_r ** 2 / 2``: biased, low variance, always >= 0;
- k3 = ``exp(log_r) - 1 - log_r``: unbiased (``E[r] = 1``), low variance, always >= 0. DeepSeekMath
  (Shao et al. 2024, eq. 4) uses it for the GRPO KL penalty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlwhf.algo._options import check_option

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Elementwise KL estimate, same shape as ``logp``; ``logp`` are the sampling policy's log-probs.

    Gradients flow into whichever argument requires them (``logp`` for a KL loss term). The caller
    masks padding. For the KL between the rollout policy and the updated one, pass the rollout
    (old) log-probs as ``logp``: the samples came from it.
    """
    check_option("kl estimator", estimator, KL_ESTIMATORS)
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    return torch.expm1(log_r) - log_r
