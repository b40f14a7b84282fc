"""Group-relative advantages: one scalar per completion, from the rewards of its prompt's group.

Rows are laid out group by group: rows ``[g * G, (g + 1) * G)`` are the G completions of prompt g.
All estimators here are outcome-level (the same advantage for every token of a completion).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlwhf.algo._options import check_option

ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_groups * group_size], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {rewards.numel()} rewards into whole groups")
    return rewards.reshape(-1, group_size)


def group_advantages(
    rewards: Tensor, group_size: int, *, estimator: str = "grpo", eps: float = 1e-6, batch_std_norm: bool = False
) -> Tensor:
    """Advantages ``[N]`` from rewards ``[N]``, N = num_groups * group_size, groups in consecutive rows.

    - ``"grpo"``: ``(r - mean_g) / (std_g + eps)``, the outcome-supervision advantage that
      DeepSeekMath (Shao et al. 2024, §4.1.2) plugs into the GRPO objective, eq. 3. ``std_g`` is the
      sample (Bessel-corrected) standard deviation of the group.
    - ``"dr_grpo"``: ``r - mean_g``. Liu et al. 2025 ("Understanding R1-Zero-Like Training", Dr. GRPO)
      drop the std division because it up-weights prompts that are nearly always or never solved.
    - ``"rloo"``: ``r_i - mean_{j != i} r_j``, the leave-one-out baseline of Ahmadian et al. 2024
      ("Back to Basics"), which keeps each sample's baseline independent of its own reward.
      Equals ``G / (G - 1) * (r - mean_g)``; needs ``group_size >= 2``.

    A group whose rewards are all equal gets exactly zero advantage with every estimator (computed
    in float64, so float32 rounding of the mean cannot leak a spurious signal).

    ``batch_std_norm`` then divides by the standard deviation over the whole batch (REINFORCE++,
    Hu 2025, global advantage normalisation). All three estimators give group-centred advantages,
    whose batch mean is already zero, so only the division remains. Returns ``rewards.dtype``
    (float32 for integer rewards).
    """
    check_option("estimator", estimator, ESTIMATORS)
    r = _grouped(rewards, group_size).double()
    centred = r - r.mean(-1, keepdim=True)
    equal = r.max(-1, keepdim=True).values == r.min(-1, keepdim=True).values
    if estimator == "grpo":
        std = r.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        adv = centred / (std + eps)
    elif estimator == "dr_grpo":
        adv = centred
    else:
        if group_size < 2:
            raise ValueError(
                "estimator 'rloo' needs group_size >= 2: the leave-one-out baseline of a single completion is undefined"
            )
        adv = centred * (group_size / (group_size - 1))
    adv = torch.where(equal, torch.zeros_like(adv), adv).reshape(-1)
    if batch_std_norm and adv.numel() > 1:
        adv = adv / (adv.std() + eps)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Bool ``[num_groups]``: True where every reward of the group is equal (no learning signal).

    DAPO (Yu et al. 2025, §3.2, dynamic sampling) drops such groups and samples more prompts.
    """
    r = _grouped(rewards, group_size)
    return r.max(-1).values == r.min(-1).values


def scale_negative(advantages: Tensor, scale: float) -> Tensor:
    """Multiply the negative advantages by ``scale`` in ``[0, 1]``; positive ones are kept.

    ``scale=1`` is the estimator unchanged; ``scale=0`` learns only from completions that beat
    their group (rejection-sampling fine-tuning with a group baseline, as RAFT++ in Xiong et al.
    2025, "A Minimalist Approach to LLM Reasoning"). Pushing down a wrong completion moves its
    probability to every other token, including wrong ones; on small or sharply fine-tuned policies
    that is the part of the update that most often destabilises training.
    """
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"negative advantage scale {scale!r}: expected a number in [0, 1]")
    return torch.where(advantages < 0, advantages * scale, advantages)
