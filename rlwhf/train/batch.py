"""Pack rollout groups into padded tensors the policy trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RolloutBatch:
    """Prompt+completion sequences, right-padded, with per-token tensors aligned to targets.

    Token tensors have shape ``[N, L-1]``: position ``t`` holds what predicting token ``t+1``
    needs. ``mask`` is 1 on completion tokens only.

    The driver packs the rollouts (``pack``); the trainer then adds what its update reads per
    completion (old and reference log-probs, importance weights, the loss mask, the experts to
    replay), so a minibatch or a micro-batch is one ``select`` away and carries all of it.
    """

    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor  # [N, L]
    mask: torch.Tensor  # [N, L-1] float, completion tokens
    rollout_logp: torch.Tensor  # [N, L-1] log-probs reported by the rollout engine
    advantages: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    # [N, L-1, layers, k] int16: the experts the rollout engine routed input position t to in each MoE
    # layer (-1 where it did not say); None when the engine recorded no routes.
    routes: torch.Tensor | None = None
    # Added by the trainer (PolicyTrainer.train_on), None until then:
    old_logp: torch.Tensor | None = None  # [N, L-1] the policy's before the update; None: from the update's own pass
    ref_logp: torch.Tensor | None = None  # [N, L-1] the reference model's (a KL term)
    is_weights: torch.Tensor | None = None  # [N, L-1] truncated importance-sampling weights
    loss_mask: torch.Tensor | None = None  # [N, L-1] the tokens the loss counts (mask, less algo.overlong_mask's)
    replay: torch.Tensor | None = None  # [N, L-1, layers, k] the experts every MoE layer replays

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _map(self, fn) -> RolloutBatch:
        return RolloutBatch(
            *(None if getattr(self, f) is None else fn(f, getattr(self, f)) for f in self.__dataclass_fields__)
        )

    def select(self, index) -> RolloutBatch:
        return self._map(lambda _, x: x[index])

    @property
    def lengths(self) -> list[int]:
        """Each sequence's length, prompt and completion, without padding."""
        return self.attention_mask.sum(-1).tolist()

    def trimmed(self) -> RolloutBatch:
        """The same batch without the padding columns that no sequence of it reaches."""
        width = max(1, int(self.attention_mask.sum(-1).max()))
        cut = {
            "input_ids": width,
            "attention_mask": width,
            "mask": width - 1,
            "rollout_logp": width - 1,
            "routes": width - 1,
            "old_logp": width - 1,
            "ref_logp": width - 1,
            "is_weights": width - 1,
            "loss_mask": width - 1,
            "replay": width - 1,
        }
        return self._map(lambda f, x: x[:, : cut[f]] if f in cut else x)

    def to(self, device) -> RolloutBatch:
        return self._map(lambda _, x: x.to(device))


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


def pack(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    rollout_logps: list[list[float]],
    advantages: list[float],
    truncated: list[bool],
    pad_id: int,
    routes: list | None = None,
    masks: list | None = None,
) -> RolloutBatch:
    """``routes``: per sequence, the engine's ``[positions, layers, k]`` experts for its first positions
    (``Completion.routes``), or None for every sequence when the engine recorded none. ``masks``: per
    sequence, 1 on the completion tokens the model sampled and 0 on those appended between its turns
    (``Completion.mask``), or None where every completion token is the model's."""
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
        own = masks[i] if masks is not None and masks[i] is not None else None
        mask[i, start : start + len(c)] = 1.0 if own is None else torch.tensor(own, dtype=torch.float32)
        rollout_logp[i, start : start + len(c)] = torch.tensor(lp, dtype=torch.float32)
    routed = None
    if routes is not None and all(r is not None for r in routes):
        routed = torch.full((n, length - 1, *routes[0].shape[1:]), -1, dtype=torch.int16)
        for i, r in enumerate(routes):
            r = torch.from_numpy(np.array(r[: length - 1], dtype=np.int16))  # a copy: Ray's arrays are read-only
            routed[i, : len(r)] = r
    return RolloutBatch(
        input_ids,
        attention,
        mask,
        rollout_logp,
        torch.tensor(advantages, dtype=torch.float32),
        torch.tensor(truncated),
        routed,
    )


def pack_groups(groups: list, advantages: list[float] | None = None, pad_id: int = 0) -> RolloutBatch:
    """``pack`` of rollout groups (``rlwhf.rollout.base.Group``): every completion after its group's
    prompt, with its log-probs, truncation, MoE routes and (a multi-turn episode's) mask;
    ``advantages`` one per completion, else zeros."""
    completions = [c for g in groups for c in g.completions]
    return pack(
        [g.prompt_ids for g in groups for _ in g.completions],
        [c.token_ids for c in completions],
        [c.logprobs for c in completions],
        [0.0] * len(completions) if advantages is None else advantages,
        [c.finish_reason == "length" for c in completions],
        pad_id=pad_id,
        routes=[c.routes for c in completions],
        masks=[c.mask for c in completions],
    )
