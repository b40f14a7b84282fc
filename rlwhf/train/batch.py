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

    def select(self, index) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    @property
    def lengths(self) -> list[int]:
        """Each sequence's length, prompt and completion, without padding."""
        return self.attention_mask.sum(-1).tolist()

    def trimmed(self) -> RolloutBatch:
        """The same batch without the padding columns that no sequence of it reaches."""
        width = max(1, int(self.attention_mask.sum(-1).max()))
        cut = {"input_ids": width, "attention_mask": width, "mask": width - 1, "rollout_logp": width - 1}
        return RolloutBatch(*(getattr(self, f)[:, :cut[f]] if f in cut else getattr(self, f)
                              for f in self.__dataclass_fields__))

    def to(self, device) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def micro_batches(lengths: list[int], budget_tokens: int) -> list[list[int]]:
    """Indices of a batch's sequences in groups whose padded size (rows x longest) stays within
    ``budget_tokens``: longest first, so each group's sequences have similar lengths and padding
    stays small. A sequence longer than the budget gets a group of its own. ``budget_tokens`` 0 (no
    budget): one group of every index, in order."""
    if budget_tokens <= 0:
        return [list(range(len(lengths)))] if lengths else []
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


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
