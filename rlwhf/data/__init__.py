"""Prompt sources: procedural tasks and HF datasets, with a deterministic resumable cursor."""
