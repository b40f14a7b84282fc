"""rlwhf: reinforcement learning without human feedback for reasoning models."""

__version__ = "0.1.0"
