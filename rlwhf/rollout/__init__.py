"""Rollout engines behind one protocol: vLLM (``engine: vllm``) and transformers (``engine: hf``)."""

from rlwhf.rollout.base import Completion, Group, RolloutEngine, SamplingSettings, make_engine

__all__ = ["Completion", "Group", "RolloutEngine", "SamplingSettings", "make_engine"]
