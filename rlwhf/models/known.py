"""Architectures of Hub models that shipped recipes and the docs' examples name, for ``rlwhf plan`` where the Hub is out of
reach: the numbers of each model's published ``config.json`` that determine its size, nothing else.
A local directory or a copy in the Hugging Face cache is always preferred to this table."""

from __future__ import annotations

KNOWN_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen3-30B-A3B-Base": dict(
        model_type="qwen3_moe",
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(  # docs/real-models.md's one-GPU example
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
}
