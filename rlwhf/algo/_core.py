"""Group-relative policy optimisation: the mathematics, as pure tensor functions."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(allowed)}")


def group_advantages(rewards: Tensor, group_size: int, *, estimator: str = "grpo", eps: float = 1e-6,
                     batch_std_norm: bool = False) -> Tensor:
    """Per-group baselines: GRPO (DeepSeekMath eq. 3), Dr. GRPO (no std), RLOO (leave-one-out)."""
    _check("estimator", estimator, ("grpo", "dr_grpo", "rloo"))
    r = rewards.double().view(-1, group_size)  # float64: equal rewards must give exactly zero
    mean = r.mean(-1, keepdim=True)
    if estimator == "grpo":
        std = r.std(-1, keepdim=True)
        adv = torch.where(std > 1e-9, (r - mean) / (std + eps), torch.zeros_like(r))
    elif estimator == "dr_grpo":
        adv = r - mean
    else:
        adv = (r - (r.sum(-1, keepdim=True) - r) / (group_size - 1))
    adv = adv.reshape(-1)
    if batch_std_norm:
        adv = adv / (adv.std() + eps)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    r = rewards.view(-1, group_size)
    return (r.max(-1).values - r.min(-1).values).abs() < 1e-12


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Schulman (2020) estimators of KL(pi || ref) from samples of pi."""
    _check("kl_estimator", estimator, ("k1", "k2", "k3"))
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(log_ratio) - log_ratio - 1


def aggregate(values: Tensor, mask: Tensor, mode: str = "token_mean", norm_constant: float | None = None) -> Tensor:
    _check("loss_agg", mode, ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"))
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return ((values * mask).sum(-1) / (norm_constant or values.shape[-1])).mean()


def entropy_from_logits(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1))


def policy_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None,
                ratio_level="token", aggregation="token_mean", norm_constant=None, ref_logp=None, kl_coef=0.0,
                kl_estimator="k3", entropy=None, entropy_coef=0.0, is_weights=None):
    """Clipped surrogate (PPO/GRPO), token- or sequence-level (GSPO) ratios, optional KL and entropy."""
    _check("ratio_level", ratio_level, ("token", "sequence"))
    adv = advantages.unsqueeze(-1)
    log_ratio = logp - old_logp
    if ratio_level == "sequence":
        seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = seq.expand_as(logp)  # GSPO: one length-normalised ratio per sequence
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)
    pg = -torch.min(ratio * adv, clipped * adv)
    if dual_clip is not None:
        pg = torch.where(adv < 0, torch.min(pg, -dual_clip * adv), pg)
    if is_weights is not None:
        pg = pg * is_weights
    loss = aggregate(pg, mask, aggregation, norm_constant)
    kl_value = 0.0
    if ref_logp is not None and kl_coef > 0:
        kl = kl_estimate(logp, ref_logp, kl_estimator)
        loss = loss + kl_coef * aggregate(kl, mask, aggregation, norm_constant)
        kl_value = _masked_mean(kl.detach(), mask)
    if entropy is not None and entropy_coef:
        loss = loss - entropy_coef * aggregate(entropy, mask, aggregation, norm_constant)
    with torch.no_grad():
        r = ratio.detach()
        low = ((r < 1 - clip_low) & (adv < 0)).float()
        high = ((r > 1 + clip_high) & (adv > 0)).float()
        metrics = {
            "pg_loss": float(aggregate(pg.detach(), mask, aggregation, norm_constant)), "kl": kl_value,
            "entropy": _masked_mean(entropy, mask) if entropy is not None else 0.0,
            "clip_fraction": _masked_mean(low + high, mask), "clip_fraction_low": _masked_mean(low, mask),
            "clip_fraction_high": _masked_mean(high, mask), "ratio_mean": _masked_mean(r, mask),
            "ratio_max": float(r[mask.bool()].max()) if mask.any() else 1.0,
            "approx_kl": _masked_mean(kl_estimate(logp.detach(), old_logp, "k3"), mask),
        }
    return loss, metrics


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, cap: float = 2.0) -> Tensor:
    return torch.exp(old_logp - rollout_logp).clamp(max=cap).detach()


def logprob_mismatch(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> dict[str, float]:
    diff = (old_logp - rollout_logp) * mask
    ratio = torch.exp(diff)[mask.bool()]
    return {"logp_diff_abs_mean": _masked_mean(diff.abs(), mask),
            "is_ratio_max": float(ratio.max()) if ratio.numel() else 1.0}


def overlong_penalty(lengths: Tensor, max_length: int, cache_length: int) -> Tensor:
    """DAPO soft overlong punishment: 0 until max-cache, linear to -1 at max."""
    start = max_length - cache_length
    return -((lengths.float() - start) / cache_length).clamp(0, 1)


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
