"""Data only: prompt sources (procedural tasks, reasoning-gym, files and HF datasets, a deterministic
resumable cursor), rows and their checks, and prompts rendered for the policy's tokenizer."""
