"""Rollout engines behind one protocol: vLLM (``engine: vllm``) and transformers (``engine: hf``).

``base`` holds the protocol and its data types; each engine module imports it, and only
``make_engine`` below knows the engines.
"""

from rlwhf.rollout.base import Completion, Group, RolloutEngine, SamplingSettings


def make_engine(kind: str, model_path: str, *, dtype: str = "float32", seed: int = 0,
                max_model_len: int = 512, kv_cache_gib: float = 1.0,
                gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1, record_routes: bool = False,
                prefix_caching: bool = True, compile: bool = False, weight_transfer: bool = False) -> RolloutEngine:
    """Build the engine the recipe names: ``vllm`` or ``hf`` (which runs on one device). ``record_routes``
    (vLLM): return each position's MoE experts with the completions; ``compile`` (vLLM on CPU): run
    the model compiled rather than eagerly; ``weight_transfer`` (vLLM): take weights through vLLM's
    weight-transfer API (``rlwhf.rollout.weight_transfer``)."""
    if kind == "vllm":
        from rlwhf.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                          kv_cache_gib=kv_cache_gib, gpu_memory_utilization=gpu_memory_utilization,
                          tensor_parallel_size=tensor_parallel_size, record_routes=record_routes,
                          prefix_caching=prefix_caching, compile=compile, weight_transfer=weight_transfer)
    if kind == "hf":
        if weight_transfer:
            raise ValueError("weight_transfer is vLLM's API: the hf engine takes weights by update_weights")
        from rlwhf.rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype=dtype, seed=seed)
    raise ValueError(f"rollout.engine {kind!r}: expected 'vllm' or 'hf'")


__all__ = ["Completion", "Group", "RolloutEngine", "SamplingSettings", "make_engine"]
