"""Policies: building tiny local MoE models and tokenizers, loading HF models, MoE hooks."""
