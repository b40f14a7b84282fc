"""Build a tiny Qwen3-MoE policy and a character-level tokenizer locally, in HF format.

Nothing is downloaded: the tokenizer's vocabulary is the printable ASCII characters plus the
reasoning tags as single tokens, and the model is randomly initialised from a config. The result
loads with ``AutoModelForCausalLM``/``AutoTokenizer`` and with vLLM, like any Hub checkpoint.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from pydantic import BaseModel, Field

# Tags that carry structure in completions; one token each keeps sequences short.
STRUCTURE_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{"]
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


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


def build_tokenizer():
    """A character-level fast tokenizer with the structure tags as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(STRUCTURE_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(config: TinyMoEConfig, vocab_size: int, tokenizer=None, seed: int = 0):
    """A randomly initialised ``Qwen3MoeForCausalLM`` of the given shape."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    hf_config = Qwen3MoeConfig(
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
    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(hf_config)


def build_tiny_moe(out_dir: str | Path, config: TinyMoEConfig | None = None, seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised tiny MoE model to ``out_dir`` (HF format)."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(config or TinyMoEConfig(), len(tokenizer), tokenizer, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
