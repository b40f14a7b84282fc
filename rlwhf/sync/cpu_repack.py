"""What vLLM's CPU backend packs at load time, packed again after the weights change in place.

Both weight-sync transports need it after they load new weights (``vllm_engine`` after its
``reload_weights``, ``weight_transfer`` after vLLM's layerwise reload), so it sits below both.
"""

from __future__ import annotations


def repack_cpu_weights(model) -> int:
    """Re-pack what vLLM's CPU backend packs at load time and a reload leaves stale (vLLM 0.32).

    * MoE experts: on a weight update vLLM copies the new checkpoint-layout tensors in but keeps
      the kernel it built at start-up, whose ``process_weights_after_loading`` (the CPU prepack)
      only ran then; the kernel would read unpacked weights as packed. We run that prepack again.
    * LM head: its oneDNN handle holds a packed copy of the old weights; rebuilding it re-packs.
    """
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    repacked = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedFusedMoEMethod) and method.moe_kernel is not None:
            experts = getattr(method.moe_kernel.impl, "fused_experts", None)
            # every CPU variant (x86 AMX for bfloat16, Arm, Power, the generic one) subclasses it
            if isinstance(experts, CPUUnquantizedExperts):
                experts.process_weights_after_loading(module)
                repacked += 1
        elif isinstance(method, UnquantizedEmbeddingMethod) and hasattr(module, "cpu_linear"):
            method.process_weights_after_loading(module)
            repacked += 1
    return repacked
