"""Build a tiny Qwen3-MoE policy and a character-level tokenizer locally, in HF format.

Nothing is downloaded: the tokenizer's vocabulary is the printable ASCII characters plus the
reasoning tags as single tokens, and the model is randomly initialised from a config. The result
loads with ``AutoModelForCausalLM``/``AutoTokenizer`` and with vLLM, like any Hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

from rlwhf.models.tokenizer import build_tokenizer


class TinyMoEConfig(BaseModel):
    """Shape of the locally built Qwen3-MoE policy."""

    hidden_size: int = Field(128, description="Model width.")
    num_layers: int = Field(4, description="Decoder layers; every one is sparse (MoE).")
    num_heads: int = Field(4, description="Attention query heads.")
    num_kv_heads: int = Field(2, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(32, description="Width of one attention head.")
    num_experts: int = Field(8, description="Routed experts per layer.")
    experts_per_token: int = Field(2, description="Experts each token is routed to (top-k).")
    expert_hidden_size: int = Field(128, description="Hidden width of one expert's MLP.")
    max_position_embeddings: int = Field(512, description="Longest sequence the model accepts.")
    chat_format: Literal["plain", "chatml"] = Field("plain", description="The tokenizer's chat template: 'plain' "
                                                    "(a prompt renders as itself) or 'chatml' (Qwen-style turns).")


def hf_config(config: TinyMoEConfig, vocab_size: int, tokenizer=None):
    """The ``Qwen3MoeConfig`` of the tiny model of this shape."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.expert_hidden_size * config.experts_per_token,
        moe_intermediate_size=config.expert_hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        num_experts=config.num_experts,
        num_experts_per_tok=config.experts_per_token,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer else 0,
        bos_token_id=tokenizer.bos_token_id if tokenizer else 1,
        eos_token_id=tokenizer.eos_token_id if tokenizer else 2,
        torch_dtype="float32",
    )


def build_model(config: TinyMoEConfig, vocab_size: int, tokenizer=None, seed: int = 0):
    """A randomly initialised ``Qwen3MoeForCausalLM`` of the given shape."""
    from transformers import Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(hf_config(config, vocab_size, tokenizer))


def build_tiny_moe(out_dir: str | Path, config: TinyMoEConfig | None = None, seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised tiny MoE model to ``out_dir`` (HF format)."""
    out_dir = Path(out_dir)
    config = config or TinyMoEConfig()
    tokenizer = build_tokenizer(config.chat_format)
    model = build_model(config, len(tokenizer), tokenizer, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if config.chat_format == "chatml":  # a turn ends at <|im_end|> too
        model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                                tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
