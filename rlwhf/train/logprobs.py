"""Per-token log-probs (and entropy) of a batch under a causal LM, without its whole logits tensor.

A forward pass's logits are ``[N, L, V]``: at a real recipe's size (hundreds of completions of
thousands of tokens, a 150k vocabulary) that is terabytes in float32. Here the decoder runs once,
and the LM head, the float32 log-softmax and the entropy run over chunks of positions, at most
``chunk_tokens`` rows of ``V`` logits at a time. With gradients on, each chunk is recomputed in the
backward pass (activation checkpointing) instead of being kept, so the peak is one chunk's logits.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rlwhf.algo import entropy_from_logits

ENTROPY_BLOCK_BYTES = 64 * 2**20  # float32 logits per block of the entropy metric


def _head_and_decoder(model):
    """The LM head and the decoder stack of an HF causal LM, where its logits are a plain linear map of
    the last hidden states; None for models that scale or cap their logits afterwards."""
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(head, torch.nn.Linear) or decoder is None or decoder is model:
        return None
    return head, decoder


def _entropy(logits: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Each position's entropy; as a metric only (``with_grad`` False) outside the autograd graph,
    which would otherwise keep about three more logits-sized tensors alive until the backward pass."""
    if with_grad:
        return entropy_from_logits(logits)
    with torch.no_grad():  # a few rows at a time: its temporaries are four logits-sized tensors
        flat = logits.detach().reshape(-1, logits.shape[-1])
        rows = max(1, ENTROPY_BLOCK_BYTES // (4 * flat.shape[1]))
        parts = [entropy_from_logits(flat[i : i + rows]) for i in range(0, len(flat), rows)]
        return torch.cat(parts).reshape(logits.shape[:-1])


def _chunk_logprobs(head, hidden, targets, temperature: float, with_entropy: bool, entropy_grad: bool = True):
    logits = head(hidden).float()
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if with_entropy:
        return logp, _entropy(logits, entropy_grad)
    return logp, torch.zeros_like(logp)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
    chunk_tokens: int = 0,
    num_chunks: int | None = None,
    entropy_grad: bool = True,
):
    """Log-prob of each next token, ``[N, L-1]`` (position ``t`` scores token ``t+1``), and optionally
    each position's entropy (else None), both float32.

    ``chunk_tokens`` > 0 bounds the logits held at once to about that many positions' worth (a
    batch whose ``N * (L-1)`` is smaller runs in one piece, exactly like the plain forward pass).
    Models whose logits are not a plain linear head (soft-capped, scaled) always run in one piece.

    ``num_chunks`` instead runs the decoder, then the head exactly that many times (some chunks
    empty when there are fewer positions): a sharded model's ranks must call each sharded module
    equally often, whatever their batch's shape. ``entropy_grad`` False: the entropy is a metric, with
    no gradient (an entropy bonus needs it True).
    """
    targets = input_ids[:, 1:]
    n, positions = targets.shape
    if num_chunks is not None:
        parts = _head_and_decoder(model)
        if parts is None:
            raise ValueError(f"{type(model).__name__}: num_chunks needs a model with a plain linear LM head")
    else:
        parts = _head_and_decoder(model) if chunk_tokens and n * positions > chunk_tokens else None
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        if temperature > 0:
            logits = logits / temperature
        logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (logp, _entropy(logits, entropy_grad)) if with_entropy else (logp, None)
    head, decoder = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask)[0][:, :-1]
    width = max(1, -(-positions // num_chunks)) if num_chunks else max(1, chunk_tokens // n)
    starts = [i * width for i in range(num_chunks)] if num_chunks else range(0, positions, width)
    logps, entropies = [], []
    for start in starts:
        args = (
            head,
            hidden[:, start : start + width],
            targets[:, start : start + width],
            temperature,
            with_entropy,
            entropy_grad,
        )
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(*args)
        logps.append(logp)
        entropies.append(entropy)
    logp = torch.cat(logps, 1)
    return (logp, torch.cat(entropies, 1)) if with_entropy else (logp, None)
