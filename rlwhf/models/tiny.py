"""Build a tiny MoE policy (Qwen3-MoE or DeepSeek-V3) and a character-level tokenizer locally, in HF format.

Nothing is downloaded: the tokenizer's vocabulary is the printable ASCII characters plus the
reasoning tags as single tokens, and the model is randomly initialised from a config. The result
loads with ``AutoModelForCausalLM``/``AutoTokenizer`` and with vLLM, like any Hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from rlwhf.models.tokenizer import build_tokenizer


class TinyMoEConfig(BaseModel):
    """Shape of the locally built MoE policy."""

    arch: Literal["qwen3_moe", "deepseek_v3", "qwen3"] = Field(
        "qwen3_moe",
        description="'qwen3_moe': softmax top-k routing, grouped-query attention; 'deepseek_v3': "
        "a shared expert, sigmoid routing with a per-expert correction bias, multi-head latent attention (MLA); "
        "'qwen3': dense (one MLP of expert_hidden_size per layer, no experts), e.g. a distillation student.",
    )
    hidden_size: int = Field(128, description="Model width.")
    num_layers: int = Field(4, description="Decoder layers; every one is sparse (MoE).")
    num_heads: int = Field(4, description="Attention query heads.")
    num_kv_heads: int = Field(2, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(32, description="Width of one attention head.")
    num_experts: int = Field(8, description="Routed experts per layer.")
    experts_per_token: int = Field(2, description="Experts each token is routed to (top-k).")
    expert_hidden_size: int = Field(128, description="Hidden width of one expert's MLP.")
    max_position_embeddings: int = Field(512, description="Longest sequence the model accepts.")
    shared_experts: int = Field(1, description="deepseek_v3: experts every token passes through.")
    kv_lora_rank: int = Field(
        512,
        description="deepseek_v3: width of MLA's compressed key/value latent. vLLM's CPU "
        "MLA kernel is built only for kv_lora_rank + qk_rope_head_dim = 576.",
    )
    qk_rope_head_dim: int = Field(64, description="deepseek_v3: the rotary part of each query/key head.")
    qk_nope_head_dim: int = Field(32, description="deepseek_v3: the non-rotary part of each query/key head.")
    v_head_dim: int = Field(32, description="deepseek_v3: width of each value head.")
    chat_format: Literal["plain", "chatml"] = Field(
        "plain",
        description="The tokenizer's chat template: 'plain' "
        "(a prompt renders as itself) or 'chatml' (Qwen-style turns).",
    )


def hf_config(config: TinyMoEConfig, vocab_size: int, tokenizer=None):
    """The ``Qwen3MoeConfig``, ``DeepseekV3Config`` or (dense) ``Qwen3Config`` of the tiny model of this shape."""
    from transformers import DeepseekV3Config, Qwen3Config, Qwen3MoeConfig

    tokens = dict(
        pad_token_id=tokenizer.pad_token_id if tokenizer else 0,
        bos_token_id=tokenizer.bos_token_id if tokenizer else 1,
        eos_token_id=tokenizer.eos_token_id if tokenizer else 2,
    )
    if config.arch == "deepseek_v3":
        out = DeepseekV3Config(
            vocab_size=vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            intermediate_size=config.expert_hidden_size * config.experts_per_token,
            moe_intermediate_size=config.expert_hidden_size,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            n_shared_experts=config.shared_experts,
            n_routed_experts=config.num_experts,
            num_experts_per_tok=config.experts_per_token,
            routed_scaling_factor=1.0,
            n_group=1,
            topk_group=1,
            norm_topk_prob=True,
            first_k_dense_replace=0,
            kv_lora_rank=config.kv_lora_rank,
            q_lora_rank=None,
            qk_rope_head_dim=config.qk_rope_head_dim,
            qk_nope_head_dim=config.qk_nope_head_dim,
            v_head_dim=config.v_head_dim,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=False,
            torch_dtype="float32",
            **tokens,
        )
        # What vLLM's DeepSeek model reads to give the gate its correction bias and sigmoid scores
        # (transformers' config has no such fields; DeepSeek-V3's own config.json does).
        out.topk_method, out.scoring_func = "noaux_tc", "sigmoid"
        return out
    if config.arch == "qwen3":
        return Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.expert_hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=False,
            torch_dtype="float32",
            **tokens,
        )
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
        torch_dtype="float32",
        **tokens,
    )


def build_model(config: TinyMoEConfig, vocab_size: int, tokenizer=None, seed: int = 0):
    """A randomly initialised model of the given architecture and shape."""
    import torch  # the recipe's config (rlwhf.config) imports this module: keep it light
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config(config, vocab_size, tokenizer))


def build_tiny_moe(out_dir: str | Path, config: TinyMoEConfig | None = None, seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised tiny model (MoE; dense for arch ``qwen3``) to ``out_dir`` (HF format)."""
    out_dir = Path(out_dir)
    config = config or TinyMoEConfig()
    tokenizer = build_tokenizer(config.chat_format)
    model = build_model(config, len(tokenizer), tokenizer, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if config.chat_format == "chatml":  # a turn ends at <|im_end|> too
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
