"""DAPO's treatment of completions that hit the generation limit (Yu et al. 2025, §3.4).

A completion cut at the token limit has no final answer, so a correctness reward scores it as
wrong whatever its reasoning was worth: noise in the reward. DAPO offers two remedies, usable alone
or together: drop truncated completions from the loss (overlong filtering), and a soft length
penalty that warns the policy before the limit (soft overlong punishment).
"""

from __future__ import annotations

from torch import Tensor


def overlong_penalty(lengths: Tensor, max_length: int, cache_length: int) -> Tensor:
    """DAPO soft overlong punishment (eq. 13), added to the reward: ``[B]`` lengths -> ``[B]`` float32.

    With ``L = max_length`` and ``c = cache_length``: 0 for ``len <= L - c``; ``(L - c - len) / c``
    (from 0 down to -1) for ``L - c < len <= L``; -1 beyond ``L``.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"cache_length {cache_length!r} with max_length {max_length!r}: expected 0 < cache_length <= max_length"
        )
    start = max_length - cache_length
    return -((lengths.float() - start) / cache_length).clamp(0.0, 1.0)


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """DAPO overlong filtering: ``mask [B, T]`` with the rows of truncated samples (``truncated``, bool
    ``[B]``) set to 0, so they add nothing to the loss. Returns a new tensor of ``mask``'s dtype."""
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated {tuple(truncated.shape)}: expected one flag per row of mask {tuple(mask.shape)}")
    return mask * (~truncated.bool()).unsqueeze(-1).to(mask.dtype)
