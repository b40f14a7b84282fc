"""The clipped policy-gradient loss of the GRPO family, its token aggregation, and entropy.

Shapes: ``[B, T]`` for per-token tensors (B completions, T token positions, ``mask`` 1 on the
completion tokens that count and 0 on padding and prompt), ``[B]`` for advantages. Every
function here ignores the values at masked positions, even non-finite ones, in value and gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlwhf.algo._options import check_option
from rlwhf.algo.kl import KL_ESTIMATORS, kl_estimate

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
RATIO_LEVELS = ("token", "sequence")
MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: far outside any clip range, and finite in float32


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.bool()
    return torch.where(m, x, 0.0).sum() / m.sum().clamp(min=1)


def aggregate(
    values: Tensor,
    mask: Tensor,
    loss_agg: str = "token_mean",
    norm_constant: float | None = None,
    denominator: float | None = None,
) -> Tensor:
    """Reduce per-token ``values [B, T]`` to a scalar over the tokens where ``mask`` is set.

    - ``"token_mean"``: sum over all tokens of the batch / number of tokens. DAPO (Yu et al. 2025,
      §3.3, token-level policy gradient loss): every token weighs the same, so long completions are
      not diluted.
    - ``"seq_mean_token_mean"``: mean over completions of each completion's token mean, as in the
      GRPO objective (Shao et al. 2024, eq. 3, the ``1/|o_i|`` factor). Long completions weigh less
      per token.
    - ``"seq_mean_token_sum_norm"``: mean over completions of each completion's token sum divided by
      a constant ``norm_constant`` (Dr. GRPO, Liu et al. 2025: a length-independent normaliser
      removes GRPO's length bias). Set it to the generation budget (``max_new_tokens``); the default,
      ``T``, changes whenever the padded width changes.

    Rows with no unmasked token are not completions for the sequence modes (they count in no mean),
    so appending padding rows or columns never changes the result. An all-masked batch gives 0.

    ``denominator`` replaces what the sum is divided by (this batch's tokens for ``token_mean``, its
    completions for the sequence modes) with the count over a larger batch that this one is a part
    of: a micro-batch of a minibatch, or one rank's share of it. The parts' results then add up to
    the whole batch's, so gradients accumulated over micro-batches (and summed over ranks) equal one
    pass over the whole (see ``normaliser``).
    """
    check_option("loss_agg", loss_agg, AGGREGATIONS)
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape")
    m = mask.bool()
    masked = torch.where(m, values, 0.0)
    count = normaliser(mask, loss_agg) if denominator is None else float(denominator)
    if loss_agg == "token_mean":
        return masked.sum() / max(count, 1.0)
    if loss_agg == "seq_mean_token_mean":
        per_seq = masked.sum(-1) / m.sum(-1).clamp(min=1)
    else:
        constant = float(values.shape[-1]) if norm_constant is None else float(norm_constant)
        if constant <= 0:
            raise ValueError(f"norm_constant {norm_constant!r}: expected a positive number of tokens")
        per_seq = masked.sum(-1) / constant
    return per_seq.sum() / max(count, 1.0)


def normaliser(mask: Tensor, loss_agg: str) -> float:
    """What ``aggregate(loss_agg)`` divides by over the batch of ``mask``: its tokens (``token_mean``) or
    its completions with at least one token (the sequence modes)."""
    check_option("loss_agg", loss_agg, AGGREGATIONS)
    m = mask.bool()
    return float(m.sum() if loss_agg == "token_mean" else m.any(-1).sum())


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of ``softmax(logits)`` over the last dim: ``[..., V] -> [...]``.

    Computed from ``log_softmax`` (stable for large logits). Entries at ``-inf`` (banned tokens)
    contribute 0, in value and gradient. Half-precision logits are upcast to float32.
    """
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    logp = torch.log_softmax(x, dim=-1)
    finite_logp = logp.masked_fill(torch.isneginf(logp), 0.0)
    return -(logp.exp() * finite_logp).sum(-1)


def _ratio_spread(ratio: Tensor, mask: Tensor) -> float:
    """Mean over completions with tokens of ``max - min`` of their tokens' ratios."""
    rows = mask.any(-1)
    if not rows.any():
        return 0.0
    high = ratio.masked_fill(~mask, float("-inf")).amax(-1)
    low = ratio.masked_fill(~mask, float("inf")).amin(-1)
    return float((high - low)[rows].mean())


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ratio_level: str = "token",
    loss_agg: str = "token_mean",
    norm_constant: float | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    is_weights: Tensor | None = None,
    denominator: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss to minimise, with optional KL-to-reference and entropy terms.

    Per token, with ratio ``rho = pi(y_t) / pi_old(y_t)`` and advantage ``A`` of the completion,
    the objective is ``min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)`` (PPO's clipped
    surrogate as used by GRPO, Shao et al. 2024, eq. 3). ``clip_high > clip_low`` is DAPO's
    clip-higher (Yu et al. 2025, §3.1, e.g. 0.2 / 0.28). ``dual_clip = c > 1`` further bounds the
    objective of negative-advantage tokens below by ``c * A`` (Ye et al. 2020, "Mastering Complex
    Control in MOBA Games with Deep RL", dual-clip PPO), so a huge ratio cannot make one token's
    loss explode.

    ``ratio_level="sequence"`` is GSPO (Zheng et al. 2025, eq. 5-7): one ratio per completion,
    ``s = exp(mean_t (logp - old_logp))`` over its tokens, clipped as a whole; every token of the
    completion carries ``s`` and its gradient flows through ``s`` (GSPO uses clip ranges near
    3e-4 / 4e-4 and a per-sequence mean: ``loss_agg="seq_mean_token_mean"``).

    ``is_weights`` (detached) multiply each token's surrogate: truncated importance sampling for the
    rollout/trainer mismatch (``rlwhf.algo.truncated_is_weights``). The terms are reduced by
    ``aggregate(loss_agg)`` (the recipe's ``algo.loss_agg``); then ``+ kl_coef * KL(pi || ref)`` (estimator ``kl_estimator``,
    the same aggregation) and ``- entropy_coef * entropy``. ``denominator``: see ``aggregate``; with
    it, the loss of a micro-batch is its share of the whole minibatch's loss.

    ``advantages``, ``old_logp``, ``ref_logp`` are treated as constants. Log ratios are bounded to
    +-20 before ``exp`` so backward never meets ``inf * 0``.

    Returns ``(loss, metrics)``; metrics are floats: ``pg_loss`` (aggregated surrogate loss), ``kl``
    (masked token mean of the KL estimate, 0.0 without ``ref_logp``), ``entropy`` (masked mean of
    ``entropy``, 0.0 without it), ``clip_fraction`` (share of tokens whose gradient clipping
    removed: ``clip_fraction_low`` for ``A < 0, rho < 1 - clip_low``, ``clip_fraction_high`` for
    ``A > 0, rho > 1 + clip_high``, ``clip_fraction_dual`` for ``A < 0, rho > dual_clip``),
    ``ratio_mean``, ``ratio_max``, ``ratio_spread`` (mean over completions of the largest minus the
    smallest ratio among its tokens: exactly 0 with ``ratio_level="sequence"``, where they share one)
    and ``approx_kl`` (k3 estimate of KL(pi_old || pi), token mean).
    """
    check_option("ratio_level", ratio_level, RATIO_LEVELS)
    check_option("loss_agg", loss_agg, AGGREGATIONS)
    check_option("kl_estimator", kl_estimator, KL_ESTIMATORS)
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(
            f"clip_low {clip_low!r} / clip_high {clip_high!r}: expected 0 <= clip_low < 1 and "
            "clip_high >= 0 (the ratio is clipped to [1 - clip_low, 1 + clip_high])"
        )
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip {dual_clip!r}: expected None or a constant > 1 (Ye et al. 2020 use 3)")
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape [B, T]"
        )
    if advantages.shape not in ((logp.shape[0],), logp.shape):
        raise ValueError(
            f"advantages {tuple(advantages.shape)}: expected [B] = ({logp.shape[0]},) or {tuple(logp.shape)}"
        )

    m = mask.bool()
    adv = advantages.detach()
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    token_log_ratio = torch.where(m, logp - old_logp.detach(), 0.0)
    log_ratio = token_log_ratio
    if ratio_level == "sequence":
        seq = token_log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = seq.expand_as(logp)
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()

    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv)
    if dual_clip is not None:
        surrogate = torch.where(adv < 0, torch.maximum(surrogate, dual_clip * adv), surrogate)
    pg = -surrogate
    if is_weights is not None:
        pg = pg * torch.where(m, is_weights.detach(), 0.0)
    pg_loss = aggregate(pg, mask, loss_agg, norm_constant, denominator)
    loss = pg_loss

    kl_value = 0.0
    if ref_logp is not None:
        kl = kl_estimate(torch.where(m, logp, 0.0), torch.where(m, ref_logp.detach(), 0.0), kl_estimator)
        if kl_coef:
            loss = loss + kl_coef * aggregate(kl, mask, loss_agg, norm_constant, denominator)
        kl_value = float(_masked_mean(kl.detach(), mask))
    if entropy is not None and entropy_coef:
        loss = loss - entropy_coef * aggregate(entropy, mask, loss_agg, norm_constant, denominator)

    with torch.no_grad():
        r = ratio.detach()
        low = m & (adv < 0) & (r < 1.0 - clip_low)
        high = m & (adv > 0) & (r > 1.0 + clip_high)
        dual = m & (adv < 0) & (r > dual_clip) if dual_clip is not None else torch.zeros_like(m)
        metrics = {
            "pg_loss": float(pg_loss.detach()),
            "kl": kl_value,
            "entropy": float(_masked_mean(entropy.detach(), mask)) if entropy is not None else 0.0,
            "clip_fraction": float(_masked_mean((low | high | dual).float(), mask)),
            "clip_fraction_low": float(_masked_mean(low.float(), mask)),
            "clip_fraction_high": float(_masked_mean(high.float(), mask)),
            "clip_fraction_dual": float(_masked_mean(dual.float(), mask)),
            "ratio_mean": float(_masked_mean(r, mask)),
            "ratio_max": float(r[m].max()) if m.any() else 1.0,
            "ratio_spread": _ratio_spread(r, m),
            "approx_kl": float(_masked_mean(kl_estimate(old_logp.detach(), logp.detach(), "k3"), mask)),
        }
    return loss, metrics
