"""Rollout engines behind one protocol: vLLM (``engine: vllm``) and transformers (``engine: hf``),
and ``sampling``, where prompts become scored completions.

``base`` holds the protocol and its data types; each engine module imports it, and only
``make_engine`` below knows the engines (``engine_options`` reads their options from a recipe).
"""

from rlwhf.rollout.base import Completion, Group, RolloutEngine, SamplingSettings
from rlwhf.rollout.episodes import EpisodeOptions, EpisodeRunner


def make_engine(
    kind: str,
    model_path: str,
    *,
    dtype: str = "float32",
    seed: int = 0,
    max_model_len: int = 512,
    kv_cache_gib: float = 1.0,
    gpu_memory_utilization: float = 0.5,
    tensor_parallel_size: int = 1,
    record_routes: bool = False,
    prefix_caching: bool = True,
    compile: bool = False,
    weight_transfer: bool = False,
    episodes=None,
) -> RolloutEngine:
    """Build the engine the recipe names: ``vllm`` or ``hf`` (which runs on one device). ``record_routes``
    (vLLM): return each position's MoE experts with the completions; ``compile`` (vLLM on CPU): run
    the model compiled rather than eagerly; ``weight_transfer`` (vLLM): take weights through vLLM's
    weight-transfer API (``rlwhf.sync.weight_transfer``). ``episodes`` (``rlwhf.rollout.episodes.EpisodeOptions``):
    completions are multi-turn episodes with tools or an environment."""
    engine = _make_engine(
        kind,
        model_path,
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        kv_cache_gib=kv_cache_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        record_routes=record_routes,
        prefix_caching=prefix_caching,
        compile=compile,
        weight_transfer=weight_transfer,
    )
    if episodes is None:
        return engine
    return EpisodeRunner(engine, episodes)


def _make_engine(kind: str, model_path: str, *, weight_transfer: bool, **options) -> RolloutEngine:
    if kind == "vllm":
        from rlwhf.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, weight_transfer=weight_transfer, **options)
    if kind == "hf":
        if weight_transfer:
            raise ValueError("weight_transfer is vLLM's API: the hf engine takes weights by update_weights")
        from rlwhf.rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype=options["dtype"], seed=options["seed"])
    raise ValueError(f"rollout.engine {kind!r}: expected 'vllm' or 'hf'")


def engine_options(recipe, *, in_run: bool = True) -> dict:
    """``make_engine``'s keyword arguments from a recipe, for a run's engines and for the one a command
    (``rlwhf eval``, ``distill``, ``data filter``) builds alike. A run's vLLM engines also record
    their MoE routing where the recipe replays it (with every prompt's positions computed afresh,
    no prefix cache, for R3) and take weights through vLLM's weight-transfer API where
    ``sync.transport`` says so; a command's engine (``in_run=False``) does neither."""
    rc = recipe.rollout
    options = {
        "dtype": recipe.model.dtype,
        "seed": recipe.run.seed,
        "kv_cache_gib": rc.kv_cache_gib,
        "max_model_len": rc.max_prompt_tokens + max(rc.completion_tokens, recipe.eval.max_new_tokens),
        "gpu_memory_utilization": rc.gpu_memory_utilization,
        "tensor_parallel_size": rc.tensor_parallel_size,
        "compile": rc.compile,
    }
    if rc.multi_turn:
        options["episodes"] = EpisodeOptions(
            tools=list(rc.tools),
            environment=rc.environment,
            environment_kwargs=dict(rc.environment_kwargs),
            turn_stop=list(rc.turn_stop),
            max_turns=rc.max_turns,
            max_total_tokens=rc.episode_tokens,
            tool_timeout_s=rc.tool_timeout_s,
            max_observation_chars=rc.max_observation_chars,
        )
    if in_run and rc.engine == "vllm":
        options.update(
            record_routes=recipe.moe.rollout_routing,
            prefix_caching=recipe.moe.routing_replay != "rollout",
            weight_transfer=recipe.sync.transport == "collective",
        )
    return options


__all__ = ["Completion", "Group", "RolloutEngine", "SamplingSettings", "engine_options", "make_engine"]
