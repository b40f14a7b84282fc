"""Policies before training: tiny local MoE models and tokenizers, GGUF files converted to Hugging
Face folders, and configs of known architectures (for ``rlwhf plan`` without a download)."""
