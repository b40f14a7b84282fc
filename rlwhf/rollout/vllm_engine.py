"""vLLM rollout engine, with in-place weight updates.

Weight sync: vLLM 0.32's workers expose ``reload_weights(weights_iterator, is_checkpoint_format)``
(reached through ``LLM.collective_rpc``). Given weights in *checkpoint* layout it re-runs each
layer's post-load processing, which is what the CPU MoE backend needs: it repacks expert weights
into its own kernel layout at load time, so loading a plain ``load_weights`` over the live model
writes into tensors that no longer have the checkpoint's shapes. ``reload_weights`` alone is not
enough on CPU either: it leaves the experts unpacked and the LM head's packed copy stale, so after
it we re-run those layers' packing (``_repack_cpu_weights``). The trainer holds transformers'
fused in-memory layout (``experts.gate_up_proj``), so we first turn its state dict back into
checkpoint layout with transformers' ``revert_weight_conversion`` on a meta-device twin of the
model (no memory, no copy of the weights).

The engine runs in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that weights
pass by reference, not through a pipe.
"""

from __future__ import annotations

import os

import torch

from rlwhf.rollout.base import Completion, Group, Prompt, SamplingSettings, WeightBuckets, as_buckets, prompt_seeds


def _prepare_environment(kv_cache_gib: float) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, max_model_len: int = 512,
                 kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1):
        _prepare_environment(kv_cache_gib)
        from transformers import AutoConfig, AutoModelForCausalLM
        from vllm import LLM

        # A context longer than the model's positions is refused by vLLM: clamp (the tiny model has 512).
        positions = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
        if positions:
            max_model_len = min(max_model_len, positions)
        kwargs = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["tensor_parallel_size"] = tensor_parallel_size
        else:
            # With chunked prefill, a request whose prompt is split across scheduler steps samples a
            # token that is thrown away, and vLLM (gpu_model_runner._bookkeeping_sync) then rewinds
            # that request's seeded generator by its Philox offset; a CPU generator has no offset and
            # raises "CPU Generator does not use offset". Every prompt is prefilled whole instead, as
            # vLLM itself does on CPUs where chunking is unsupported; a step then takes whole prompts
            # up to its token budget, which must hold the longest one.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 4096)
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=not torch.cuda.is_available(),
            # Log-probs of the distribution actually sampled from (after temperature), as the
            # trainer computes them.
            logprobs_mode="processed_logprobs",
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        with torch.device("meta"):
            self._layout_twin = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))

    def generate(self, prompts: list[Prompt], sampling: SamplingSettings) -> list[Group]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_new_tokens, seed=seed, logprobs=0)
            for seed in (sampling.prompt_seeds or prompt_seeds(sampling.seed, len(prompts)))
        ]
        inputs = [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        groups = []
        for prompt, out in zip(prompts, outputs):
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)
            group = Group(prompt=text, prompt_ids=list(out.prompt_token_ids))
            for c in out.outputs:
                ids = list(c.token_ids)
                logprobs = [entry[tok].logprob for tok, entry in zip(ids, c.logprobs)]
                group.completions.append(Completion(c.text, ids, logprobs, _finish(c.finish_reason)))
            groups.append(group)
        return groups

    def update_weights(self, buckets: WeightBuckets) -> None:
        from transformers.core_model_loading import revert_weight_conversion

        def checkpoint_layout():  # one bucket at a time, each turned into the checkpoint's names and shapes
            for bucket in as_buckets(buckets):
                yield from revert_weight_conversion(self._layout_twin, dict(bucket)).items()

        # The engine runs in this process, so vLLM can read the buckets as they arrive; several
        # workers (tensor parallel) need the whole list, sent to each.
        weights = checkpoint_layout() if self.llm.llm_engine.vllm_config.parallel_config.world_size == 1 \
            else list(checkpoint_layout())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if not torch.cuda.is_available():
            self.llm.collective_rpc(_repack_cpu_weights)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights


def _repack_cpu_weights(worker) -> int:
    """Re-pack what the CPU backend packs at load time and ``reload_weights`` leaves stale (vLLM 0.32).

    * MoE experts: on a weight update vLLM copies the new checkpoint-layout tensors in but keeps
      the kernel it built at start-up, whose ``process_weights_after_loading`` (the CPU prepack)
      only ran then; the kernel would read unpacked weights as packed. We run that prepack again.
    * LM head: its oneDNN handle holds a packed copy of the old weights; rebuilding it re-packs.
    """
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    repacked = 0
    for module in worker.model_runner.get_model().modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedFusedMoEMethod) and method.moe_kernel is not None:
            experts = getattr(method.moe_kernel.impl, "fused_experts", None)
            if experts is not None and type(experts).__name__.startswith("CPU"):
                experts.process_weights_after_loading(module)
                repacked += 1
        elif isinstance(method, UnquantizedEmbeddingMethod) and hasattr(module, "cpu_linear"):
            method.process_weights_after_loading(module)
            repacked += 1
    return repacked


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"
