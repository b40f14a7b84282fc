"""Pack rollout groups into padded tensors the policy trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    """Prompt+completion sequences, right-padded, with per-token tensors aligned to targets.

    Token tensors have shape ``[N, L-1]``: position ``t`` holds what predicting token ``t+1``
    needs. ``mask`` is 1 on completion tokens only.
    """

    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor  # [N, L]
    mask: torch.Tensor  # [N, L-1] float, completion tokens
    rollout_logp: torch.Tensor  # [N, L-1] log-probs reported by the rollout engine
    advantages: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], rollout_logps: list[list[float]],
         advantages: list[float], truncated: list[bool], pad_id: int) -> RolloutBatch:
    n = len(prompt_ids)
    length = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros((n, length - 1))
    rollout_logp = torch.zeros((n, length - 1))
    for i, (p, c, lp) in enumerate(zip(prompt_ids, completion_ids, rollout_logps)):
        seq = p + c
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        start = len(p) - 1  # logits at position len(p)-1 predict the first completion token
        mask[i, start : start + len(c)] = 1.0
        rollout_logp[i, start : start + len(c)] = torch.tensor(lp, dtype=torch.float32)
    return RolloutBatch(input_ids, attention, mask, rollout_logp,
                        torch.tensor(advantages, dtype=torch.float32), torch.tensor(truncated))
