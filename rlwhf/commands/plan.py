"""``rlwhf plan``: what a recipe needs before anything starts: the policy's size, the memory of the
trainer and of the rollout engine per device, and whether they fit.

The trainer's estimate (one policy worker, no sharding):

- weights, gradients and AdamW's two moments in float32: 4 + 4 + 8 bytes per trainable parameter
  (``model.dtype: bfloat16`` changes the compute, not these);
- the frozen reference model, when a KL term is on, in the compute dtype;
- activations kept for the backward pass of one micro-batch (``train.micro_batch_tokens`` padded
  tokens, or a whole minibatch without it): per token and layer, the tensors a decoder layer saves
  (``activation_elements``), or with ``train.gradient_checkpointing`` only each layer's input plus
  one layer's recomputed activations;
- the logits of one chunk of positions (``train.logits_chunk_mib``), with their log-softmax and
  gradient.

``benchmarks/trainer_memory.py`` measures the real peak on the CPU for several model sizes and
prints it beside this estimate. The rollout engine needs the weights in the compute dtype and a
KV cache; the plan says how much cache the whole batch would take at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plan's estimates read a recipe's attributes only (benchmarks/gpu_trainer.py has no pydantic)
    from rlwhf.config import Recipe

GIB = 2**30
NOT_FIT = "does NOT fit"  # in the plan's text wherever a device cannot hold its part: `rlwhf plan` exits 1


def load_model_config(recipe: Recipe):
    """The policy's Hugging Face config, without its weights and without a network: the tiny model's
    own, a local directory's, the Hugging Face cache's, or ``rlwhf.models.known``'s."""
    from pathlib import Path

    from transformers import AutoConfig

    from rlwhf.models.gguf import local_model_path

    path = local_model_path(recipe.model.path)
    if recipe.model.upcycle is not None:  # the MoE it will be made into, without making it
        from rlwhf.models.upcycle import upcycled_config

        return upcycled_config(AutoConfig.from_pretrained(path), recipe.model.upcycle)
    if path == "tiny":
        from rlwhf.models.tiny import build_tokenizer, hf_config

        tokenizer = build_tokenizer(recipe.model.tiny.chat_format)
        return hf_config(recipe.model.tiny, len(tokenizer), tokenizer)
    if Path(path).is_dir():
        return AutoConfig.from_pretrained(path)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError:
        pass
    from rlwhf.models.known import KNOWN_CONFIGS

    if path in KNOWN_CONFIGS:
        spec = dict(KNOWN_CONFIGS[path])
        return AutoConfig.for_model(spec.pop("model_type"), **spec)
    raise ValueError(
        f"model.path {path!r}: no local directory, no copy in the Hugging Face cache, and not one of "
        f"the known architectures ({', '.join(KNOWN_CONFIGS)}); download it or give a local path"
    )


@dataclass
class ModelSize:
    total: int  # parameters
    active: int  # parameters a token passes through (MoE: only its top-k experts)
    layers: int
    hidden: int
    vocab: int
    query_width: int  # heads x head_dim
    kv_width: int  # key/value heads x head_dim
    experts: int  # routed experts per layer (0: dense)
    experts_per_token: int
    expert_width: int  # one expert's intermediate size (or the dense MLP's)
    moe_layers: int = 0  # layers with experts; the others (a Qwen2-MoE's mlp_only_layers, ...) are dense
    dense_width: int = 0  # the dense layers' MLP intermediate size


def model_size(config) -> ModelSize:
    """Parameter counts from the model built on the meta device (no memory), and the shapes the
    activation estimate needs."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    experts = int(
        getattr(config, "num_experts", 0)  # Qwen-MoE
        or getattr(config, "n_routed_experts", 0)  # DeepSeek-V3
        or getattr(config, "num_local_experts", 0)  # Mixtral (and models rlwhf upcycles)
        or 0
    )
    k = int(getattr(config, "num_experts_per_tok", 0) or 0)
    expert_params = sum(
        p.numel() for name, p in model.named_parameters() if ".experts." in name and experts and p.shape[0] == experts
    )
    active = total - (expert_params - expert_params * k // experts if experts else 0)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    width = (getattr(config, "moe_intermediate_size", None) if experts else None) or config.intermediate_size
    moe_layers = {
        name.split(".layers.")[1].split(".")[0] for name, _ in model.named_parameters() if ".experts." in name
    }
    return ModelSize(
        total,
        active,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        config.num_attention_heads * head_dim,
        kv_heads * head_dim,
        experts,
        k,
        width,
        len(moe_layers) if experts else 0,
        config.intermediate_size,
    )


def activation_elements(size: ModelSize) -> int:
    """Elements a decoder layer keeps per token for its backward pass: the normalised inputs, the
    query/key/value projections before and after their norms and rotation, the attention output,
    the router's scores, and for each of the token's experts (or the dense MLP) its input, its two
    projections, the activation and the weighted output."""
    attention = 3 * size.hidden + 4 * size.query_width + 4 * size.kv_width
    if not size.experts:
        return attention + 2 * size.hidden + 4 * size.expert_width
    moe = 2 * size.hidden + size.experts + _experts_elements(size)
    dense = 2 * size.hidden + 4 * size.dense_width
    # the mean over the layers, where some stay dense
    return attention + (size.moe_layers * moe + (size.layers - size.moe_layers) * dense) // size.layers


def expert_activation_elements(size: ModelSize) -> int:
    """Of ``activation_elements``, the routed experts' part (a mean over the layers). transformers runs
    the experts in their weights' dtype, float32 here, even under bfloat16 autocast (its grouped
    matmul casts the input to the weights' dtype), so these elements take 4 bytes whatever the
    compute dtype."""
    if not size.experts:
        return 0
    return size.moe_layers * _experts_elements(size) // size.layers


def _experts_elements(size: ModelSize) -> int:
    """One MoE layer's routed experts, per token: each chosen expert's input, two projections, the
    activation and the weighted output."""
    return size.experts_per_token * (2 * size.hidden + 4 * size.expert_width)


# What a training process holds besides its tensors, measured by benchmarks/trainer_memory.py on the
# CPU (the first passes' kernel scratch and allocator caches). On a GPU the estimate is compared with
# torch.cuda.max_memory_allocated, which counts tensors only.
CPU_OVERHEAD = 0.25 * 2**30


@dataclass
class TrainerMemory:
    weights: float  # bytes
    gradients: float
    optimizer: float
    reference: float
    activations: float
    logits: float
    optimizer_step: float  # AdamW's temporaries while it steps (its moments' square roots and ratios)
    overhead: float
    micro_batch_tokens: int

    @property
    def total(self) -> float:
        """The peak of a step after the first: the states persist, and the backward pass's activations
        and the optimizer's temporaries come at different moments."""
        states = self.weights + self.gradients + self.optimizer + self.reference + self.overhead
        return states + max(self.activations + self.logits, self.optimizer_step)


def trainer_memory(
    recipe: Recipe,
    size: ModelSize,
    *,
    gradient_checkpointing: bool | None = None,
    micro_batch_tokens: int | None = None,
) -> TrainerMemory:
    """Peak bytes of one policy worker for this recipe (overrides for comparisons). With
    ``resources.policy_workers`` N > 1 the weights, gradients, optimizer state and reference model
    are sharded N ways (FSDP2), plus one layer's whole weights while it is gathered."""
    train = recipe.train
    workers = getattr(getattr(recipe, "resources", None), "policy_workers", 1)
    checkpointing = train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    budget = train.micro_batch_tokens if micro_batch_tokens is None else micro_batch_tokens
    longest = recipe.rollout.max_prompt_tokens + recipe.rollout.completion_tokens
    tokens = max(budget, longest) if budget else (train.minibatch_size or 1) * longest
    compute = 2 if recipe.model.dtype == "bfloat16" else 4
    per_layer = activation_elements(size) * compute + expert_activation_elements(size) * (4 - compute)
    if checkpointing:  # each layer's input kept; one layer's activations alive while it is recomputed
        activations = tokens * (size.layers * size.hidden * compute + per_layer)
    else:
        activations = tokens * size.layers * per_layer
    chunk = max(1, train.logits_chunk_mib * 2**20 // (4 * size.vocab))
    # float32 logits, their log-softmax and gradients: 3.2-3.5x one chunk's float32 logits at the
    # peak, measured on the CPU at SmolLM2's 49k vocabulary (the entropy metric taken in blocks)
    logits = min(tokens, chunk) * size.vocab * 4 * 3.5
    reference = size.total * compute if recipe.algo.kl_coef > 0 else 0
    gathered = 4 * size.total / size.layers if workers > 1 else 0  # about one layer, gathered for its pass
    on_cpu = getattr(getattr(recipe, "resources", None), "gpus_per_policy_worker", 0) == 0
    return TrainerMemory(
        4 * size.total / workers + gathered,
        4 * size.total / workers,
        8 * size.total / workers,
        reference / workers,
        activations,
        logits,
        8 * size.total / workers,
        CPU_OVERHEAD if on_cpu else 0.0,
        tokens,
    )


@dataclass
class RolloutMemory:
    weights: float
    kv_per_token: float
    batch_tokens: int  # every sequence of a step's sampling at full length

    @property
    def kv_for_batch(self) -> float:
        return self.kv_per_token * self.batch_tokens


def rollout_memory(recipe: Recipe, size: ModelSize) -> RolloutMemory:
    """One engine's memory per GPU: tensor parallelism splits its weights and KV cache."""
    compute = 2 if recipe.model.dtype == "bfloat16" else 4
    rc = recipe.rollout
    tp = rc.tensor_parallel_size
    sequences = recipe.train.prompts_per_step * rc.group_size / recipe.resources.rollout_engines
    return RolloutMemory(
        size.total * compute / tp,
        2 * size.layers * size.kv_width * compute / tp,
        int(sequences * (rc.max_prompt_tokens + rc.completion_tokens)),
    )


def _gib(x: float) -> str:
    if x >= GIB / 10:
        return f"{x / GIB:,.1f} GiB"
    return f"{x / 2**20:,.1f} MiB" if x >= 2**20 / 10 else f"{x / 2**10:,.1f} KiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def plan_text(recipe: Recipe, gpu_memory_gib: float = 80.0) -> str:
    """The plan as ``rlwhf plan`` prints it."""
    size = model_size(load_model_config(recipe))
    mem = trainer_memory(recipe, size)
    roll = rollout_memory(recipe, size)
    res = recipe.resources
    on_gpu = res.gpus_per_policy_worker > 0
    device = f"a {gpu_memory_gib:g} GiB GPU" if on_gpu else "the CPU"
    n, m = res.policy_workers, res.rollout_engines
    sharding = f"sharded over {n} policy workers (FSDP2)" if n > 1 else "not sharded"
    lines = [
        f"policy {recipe.model.path}{' upcycled (model.upcycle)' if recipe.model.upcycle else ''}: "
        f"{_count(size.total)} parameters"
        + (
            f", {_count(size.active)} active per token ({size.experts_per_token} of {size.experts} experts)"
            if size.experts
            else ""
        ),
        "",
        f"trainer, per policy worker on {device} ({sharding}):",
        f"  weights (float32 master)       {_gib(mem.weights)}",
        f"  gradients (float32)            {_gib(mem.gradients)}",
        f"  AdamW moments (float32)        {_gib(mem.optimizer)}",
    ]
    if mem.reference:
        lines.append(f"  reference model ({recipe.model.dtype})   {_gib(mem.reference)}")
    lines += [
        f"  activations, {mem.micro_batch_tokens:,} tokens per pass {'(checkpointed)' if recipe.train.gradient_checkpointing else ''}".rstrip()
        + f": {_gib(mem.activations)}",
        f"  logits chunk                   {_gib(mem.logits)}",
        f"  AdamW step temporaries         {_gib(mem.optimizer_step)} (not at the same time as activations)",
    ]
    if mem.overhead:
        lines.append(f"  runtime (kernels, allocator)   {_gib(mem.overhead)}")
    lines.append(f"  peak                           {_gib(mem.total)}")
    other = trainer_memory(recipe, size, gradient_checkpointing=not recipe.train.gradient_checkpointing)
    lines.append(f"  (with gradient_checkpointing={not recipe.train.gradient_checkpointing}: {_gib(other.total)})")
    lines += [
        "",
        f"rollout engine, each of {m} ({recipe.rollout.engine}, {recipe.model.dtype}):",
        f"  weights                        {_gib(roll.weights)}",
        f"  KV cache for its share of the step's sequences at full length at once: {_gib(roll.kv_for_batch)} "
        f"({_gib(roll.kv_per_token)} per token"
        + (f", per GPU of {recipe.rollout.tensor_parallel_size}" if recipe.rollout.tensor_parallel_size > 1 else "")
        + ")",
    ]
    lines.append("")
    if not on_gpu:
        lines.append(
            f"placement: on the CPU (resources give no GPU); the trainer needs about {_gib(mem.total)} "
            f"of memory and the engine {_gib(roll.weights)} plus its KV cache (rollout.kv_cache_gib="
            f"{recipe.rollout.kv_cache_gib:g})."
        )
        return "\n".join(lines)
    budget = gpu_memory_gib * GIB
    shared = res.gpus_per_policy_worker + res.gpus_per_rollout_engine <= 1 and res.gpus_per_rollout_engine > 0
    policy_budget = budget * (1 - recipe.rollout.gpu_memory_utilization) if shared else budget
    verdict = "fits" if mem.total <= policy_budget else NOT_FIT
    lines.append(
        f"placement: {n} policy worker(s) on {res.gpus_per_policy_worker:g} GPU each, {m} rollout "
        f"engine(s) on {res.gpus_per_rollout_engine:g} GPU each"
        + (" (sharing GPUs, in turns)" if shared else "")
        + f": {math.ceil(n * res.gpus_per_policy_worker + m * res.gpus_per_rollout_engine)} GPUs in all"
    )
    lines.append(f"trainer: {_gib(mem.total)} against {_gib(policy_budget)} available: {verdict}")
    if mem.total > policy_budget:
        total_states = 16 * size.total + (
            size.total * (2 if recipe.model.dtype == "bfloat16" else 4) if recipe.algo.kl_coef > 0 else 0
        )
        devices = math.ceil(total_states / policy_budget)
        lines.append(
            f"  the weights, gradients and optimizer state alone take {_gib(total_states)} in all: shard "
            f"the policy over at least {devices} such GPUs (resources.policy_workers >= {devices})"
        )
    engine_budget = budget * recipe.rollout.gpu_memory_utilization
    cache = engine_budget - roll.weights
    if cache <= 0:
        lines.append(
            f"rollout engine: the weights ({_gib(roll.weights)}) exceed rollout.gpu_memory_utilization x "
            f"GPU = {_gib(engine_budget)}: {NOT_FIT}; it needs tensor parallelism over several GPUs"
        )
    else:
        at_once = int(
            cache // (roll.kv_per_token * (recipe.rollout.max_prompt_tokens + recipe.rollout.completion_tokens))
        )
        lines.append(
            f"rollout engine: {_gib(cache)} left for the KV cache, {at_once:,} full-length sequences at "
            f"once (vLLM queues the rest)"
        )
    return "\n".join(lines)
