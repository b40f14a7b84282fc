"""Recipes: one pydantic model per section, loaded from YAML, overridden from the command line.

A recipe is a YAML file whose top-level keys are the sections below. ``base: other.yaml`` (a path
relative to the recipe) inherits another recipe and overrides it key by key. Every field has a
default that works on a laptop CPU, so an empty recipe runs the tiny demo.

Errors name the key, the value and what was expected::

    recipes/x.yaml: train.steps = 'ten': expected an integer
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import rewards
from rlwhf import tools
from rlwhf.models.gguf import PACKAGE_PREFIX, is_gguf, locate
from rlwhf.models.tiny import TinyMoEConfig
from rlwhf.models.upcycle import moe_layers

# A data.dataset ending in one of these is a local file; anything else is a Hugging Face data set name.
DATA_FILE_SUFFIXES = ("json", "jsonl", "csv", "parquet")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field("tiny", description="Run name; the run directory is <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Directory that holds run directories.")
    seed: int = Field(0, description="Seed for data order, initialisation and sampling.")
    overwrite: bool = Field(False, description="Replace an existing run directory instead of refusing.")

    @property
    def dir(self) -> Path:
        return Path(self.output_dir) / self.name


class UpcycleSpec(Section):
    experts: int = Field(8, ge=2, description="Experts per layer, each starting as a copy of the dense block.")
    top_k: int = Field(2, ge=1, description="Experts each token is routed to.")
    layers: str | list[int] = Field(
        "all",
        description="Which layers become MoE: 'all' (a Mixtral), or 'every-other', 'top:N' (the last N) or a "
        "list of indices (a Qwen2-MoE whose other layers stay dense).",
    )
    router_init: Literal["normal", "zeros"] = Field("normal", description="The router's start: small random, or zero.")
    router_std: float = Field(0.02, gt=0, description="The random router's standard deviation.")
    noise: float = Field(0.0, ge=0, description="Perturb each copy by this times each weight's std (0: exact start).")
    reinit_fraction: float = Field(
        0.0, ge=0, le=1, description="Drop-upcycling: re-draw this share of each copy's hidden neurons."
    )
    seed: int = Field(0, description="Seed of the router and of any perturbation.")

    @model_validator(mode="after")
    def _check(self) -> UpcycleSpec:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must be at most experts ({self.experts})")
        return self

    @field_validator("layers")
    @classmethod
    def _layers_form(cls, layers):
        moe_layers(layers, 10**6)  # the form only: the model's number of layers is known when it is made
        return layers


class ModelConfig(Section):
    path: str = Field(
        "tiny",
        description="'tiny' builds a small Qwen3-MoE and tokenizer locally; a GGUF file, or one inside an "
        "installed package as package:PKG/file.gguf (dequantized once into a cached Hugging Face folder); "
        "otherwise a local directory or a Hub id (downloaded, so only where a network is available).",
    )
    tiny: TinyMoEConfig = Field(default_factory=TinyMoEConfig, description="Shape of the 'tiny' model.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Compute dtype of the trainer (autocast; "
        "its weights and optimizer state stay float32) and of vLLM.",
    )
    upcycle: UpcycleSpec | None = Field(
        None,
        description="Start from model.path (a dense Llama, Mistral or Qwen2 model) made into an MoE by sparse "
        "upcycling (as `rlwhf upcycle` does; cached), e.g. {experts: 4, top_k: 2} (every layer; layers: top:N, "
        "every-other or a list keeps the others dense).",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.upcycle is not None and self.path == "tiny":
            raise ValueError("upcycle: the 'tiny' model is an MoE already; upcycle a dense model (model.path)")
        return self


class GymDatasetSpec(Section):
    name: str = Field(..., description="A reasoning-gym dataset name, e.g. products, chain_sum.")
    weight: float = Field(1.0, gt=0, description="Mixing weight among data.gym's datasets.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The dataset's own settings (its difficulty), "
        "e.g. {min_digits: 1, max_digits: 2}; reasoning-gym's defaults otherwise.",
    )


def check_gym_names(specs: list[GymDatasetSpec]) -> None:
    """Refuse a dataset name reasoning-gym does not have, naming the close ones."""

    from reasoning_gym.factory import DATASETS

    for i, spec in enumerate(specs):
        if spec.name not in DATASETS:
            close = difflib.get_close_matches(spec.name, list(DATASETS), n=3)
            hint = (
                f" (did you mean {', '.join(close)}?)"
                if close
                else f"; it has {len(DATASETS)}, e.g. products, chain_sum"
            )
            raise ValueError(f"data.gym[{i}].name = {spec.name!r}: reasoning-gym has no such dataset{hint}")


class DataConfig(Section):
    task: Literal["arithmetic", "coding", "dataset", "reasoning_gym"] = Field(
        "arithmetic",
        description="Prompt source: a procedural task, 'dataset' (HF datasets), or 'reasoning_gym' "
        "(the tasks named in data.gym, generated locally).",
    )
    num_train: int = Field(4000, ge=1, description="Training prompts (procedural tasks).")
    num_test: int = Field(200, ge=1, description="Held-out prompts for accuracy.")
    min_digits: int = Field(2, ge=1, description="Arithmetic: fewest digits per operand.")
    max_digits: int = Field(3, ge=1, description="Arithmetic: most digits per operand.")
    operation: Literal["add", "multiply"] = Field(
        "add",
        description="Arithmetic: 'add' (worked column by column) or 'multiply' (worked with the python tool: recipes/tiny-tools.yaml).",
    )
    direct_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Arithmetic: share of the solver traces that give the answer without the working "
        "(column by column, or the python tool).",
    )
    dataset: str | None = Field(None, description="task=dataset: a local data file or HF dataset name.")
    subset: str | None = Field(
        None, description="task=dataset: the HF dataset's configuration name, if it has several."
    )
    split: str = Field("train", description="task=dataset: training split.")
    test_split: str | None = Field(None, description="task=dataset: held-out split (else num_test rows split off).")
    prompt_column: str = Field("prompt", description="task=dataset: column holding the prompt.")
    answer_column: str = Field("answer", description="task=dataset: column holding the gold answer.")
    gym: list[GymDatasetSpec] = Field(
        default_factory=list,
        description="task=reasoning_gym: the datasets, each "
        "{name, weight, config}; num_train rows from run.seed, num_test held-out rows "
        "from another seed, no question in both. Pay with the reasoning_gym reward.",
    )
    chat_template: Literal["auto", "none"] = Field(
        "auto",
        description="'auto': render prompts with the tokenizer's chat template when it has one; 'none': plain text.",
    )
    system_prompt: str | None = Field(None, description="A system message put before every prompt.")
    prompt_template: str = Field(
        "{prompt}",
        description="The user's message for a text prompt; {prompt} is "
        "replaced by it, e.g. '{prompt} Put your final answer within \\boxed{}.'",
    )
    overlong_prompts: Literal["drop", "error"] = Field(
        "drop",
        description="Prompts longer than rollout.max_prompt_tokens as rendered: dropped (and counted) or refused.",
    )
    bad_rows: Literal["drop", "error"] = Field(
        "drop",
        description="task=dataset: rows with a missing or empty "
        "prompt, a prompt seen in an earlier row, or (when a math reward "
        "needs it) a missing or empty gold answer: dropped (and counted) or "
        "refused with the first one's row number. `rlwhf data check` lists "
        "them all.",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) must be <= max_digits ({self.max_digits})")
        if self.task == "dataset" and not self.dataset:
            raise ValueError("task 'dataset' needs data.dataset (a file path or HF dataset name)")
        if self.task == "reasoning_gym" and not self.gym:
            raise ValueError(
                "task 'reasoning_gym' needs data.gym, a list of datasets, e.g. [{name: products, "
                "config: {min_digits: 1, max_digits: 2}}]"
            )
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"prompt_template {self.prompt_template!r} has no {{prompt}} to put the prompt in")
        return self

    @property
    def asks_for_boxed(self) -> bool:
        """Whether the prompt template or system prompt asks for the answer in ``\\boxed{}``."""
        return "\\boxed" in self.prompt_template + (self.system_prompt or "")


class SFTConfig(Section):
    enabled: bool = Field(True, description="Run a cold-start SFT on solver traces before RL.")
    steps: int = Field(280, ge=1, description="SFT optimizer steps.")
    batch_size: int = Field(32, ge=1, description="SFT examples per step.")
    learning_rate: float = Field(3e-3, gt=0, description="SFT peak learning rate (cosine schedule).")
    num_examples: int = Field(2000, ge=1, description="Solver traces used for SFT (taken from the training split).")
    router_aux_loss_coef: float | None = Field(
        None,
        ge=0,
        description="MoE models: weight of the load-balancing "
        "auxiliary loss during the SFT (default: the model config's own, "
        "0.001 for Qwen3-MoE).",
    )
    bias_update_rate: float = Field(
        0.0,
        ge=0,
        description="MoE models: balance the experts during the SFT the "
        "auxiliary-loss-free way (moe.balance aux_free's selection bias, moved this "
        "much after each SFT step against the load on the completion tokens; kept "
        "beside the SFT'd weights, where RL starts from it). 0: off.",
    )
    cache: bool = Field(
        True, description="Reuse a tiny model's SFT from <output_dir>/.sft-cache when every input matches."
    )


class RolloutConfig(Section):
    engine: Literal["vllm", "hf"] = Field(
        "vllm", description="'vllm' (vLLM's LLM engine) or 'hf' (transformers generate)."
    )
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (G).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for rollouts.")
    max_new_tokens: int = Field(64, ge=1, description="Longest completion; longer ones are truncated.")
    max_prompt_tokens: int = Field(512, ge=1, description="Longest prompt; vLLM's context is this plus max_new_tokens.")
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM on CPU: KV-cache size (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM on GPU: memory fraction.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM on GPUs: GPUs one engine spreads the model over.")
    compile: bool = Field(
        False,
        description="vLLM on CPU: run the model compiled (torch.compile) instead of eagerly: "
        "faster decoding for some seconds more start-up (docs/performance.md). On a GPU vLLM "
        "always compiles.",
    )
    tools: list[str] = Field(
        default_factory=list,
        description="Tools the model may call between turns (docs/tools.md): 'python' (runs in the "
        "sandbox), 'my_tools.py:function' or 'package.module:function'. Empty: one turn, as without tools.",
    )
    environment: str | None = Field(
        None,
        description="An environment class that answers every turn ('my_env.py:Class', or an OpenEnv "
        "environment class), instead of tools.",
    )
    environment_kwargs: dict[str, Any] = Field(default_factory=dict, description="Given to the environment class.")
    turn_stop: list[str] = Field(
        default_factory=list,
        description="Multi-turn: strings that end the model's turn besides the end of its message and a "
        "tool call (e.g. a newline, for a game played line by line).",
    )
    max_turns: int = Field(4, ge=1, description="Multi-turn: the model's turns per episode, at most.")
    max_total_tokens: int | None = Field(
        None,
        ge=1,
        description="Multi-turn: tokens per episode, the model's and the observations' (null: "
        "max_new_tokens x max_turns).",
    )
    tool_timeout_s: float = Field(5.0, gt=0, description="Multi-turn: time limit of one tool call.")
    max_observation_chars: int = Field(
        1000, ge=1, description="Multi-turn: a tool's answer is cut to this many characters."
    )

    @property
    def multi_turn(self) -> bool:
        return bool(self.tools or self.environment)

    @model_validator(mode="after")
    def _check_turns(self) -> RolloutConfig:
        if self.tools and self.environment:
            raise ValueError("tools and environment: name one (an environment can call tools of its own)")
        if self.multi_turn and self.engine != "vllm":
            raise ValueError(f"tools and environments run on rollout.engine 'vllm'; this recipe has {self.engine!r}")
        return self

    @property
    def episode_tokens(self) -> int:
        """Multi-turn: an episode's token budget (``max_total_tokens``, or ``max_new_tokens`` per turn)."""
        return self.max_total_tokens or self.max_new_tokens * self.max_turns

    @property
    def completion_tokens(self) -> int:
        """The longest completion a rollout makes: ``max_new_tokens``, or a multi-turn episode's budget."""
        return self.episode_tokens if self.multi_turn else self.max_new_tokens


class RewardSpec(Section):
    name: str = Field(
        ...,
        description="Registered name, entry-point name, 'my_rewards.py:function' (a file) or "
        "'package.module:function'.",
    )
    weight: float = Field(1.0, description="Weight in the total reward.")
    on_error: float = Field(0.0, description="Score given when the reward raises or times out.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments given to the reward on every call."
    )


class RewardsConfig(Section):
    funcs: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="math_accuracy"), RewardSpec(name="format", weight=0.1)],
        description="Rewards scored for every completion; the total is their weighted sum.",
    )
    accuracy: str = Field("math_accuracy", description="Reward whose mean is reported as held-out accuracy.")
    timeout_s: float = Field(10.0, gt=0, description="Time limit for one reward call (one prompt group).")
    warm_up_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Time limit for a reward module's warm_up(), run "
        "once per worker; one that hangs disables that module's rewards for the run.",
    )
    num_workers: int = Field(2, ge=1, description="Reward worker processes.")
    stop_on_total_failure: bool = Field(
        True,
        description="Stop the run, showing the first error, when a reward "
        "fails on every group of a step or evaluation; false: score on_error and "
        "carry on.",
    )

    @model_validator(mode="after")
    def _check(self) -> RewardsConfig:
        names = [s.name for s in self.funcs]
        if len(set(names)) != len(names):
            raise ValueError(f"funcs: each reward may be listed once; got {names}")
        if self.accuracy not in names:
            raise ValueError(
                f"accuracy {self.accuracy!r} is not among funcs ({', '.join(names) or 'none'}): "
                "name one of them, or add it to funcs"
            )
        return self


# ``algo.preset``: each method's published settings, a starting point that the recipe's own algo keys override.
ALGO_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage": "grpo", "loss_agg": "seq_mean_token_mean", "clip_low": 0.2, "clip_high": 0.2},
    "dr_grpo": {"advantage": "dr_grpo", "loss_agg": "seq_mean_token_sum_norm", "clip_low": 0.2, "clip_high": 0.2},
    "dapo": {
        "advantage": "grpo",
        "loss_agg": "token_mean",
        "clip_low": 0.2,
        "clip_high": 0.28,
        "dynamic_sampling": True,
        "overlong_penalty": True,
    },
    "gspo": {"ratio_level": "sequence", "loss_agg": "seq_mean_token_mean", "clip_low": 3e-4, "clip_high": 4e-4},
    "rloo": {"advantage": "rloo", "loss_agg": "token_mean"},
}


class AlgoConfig(Section):
    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in ALGO_PRESETS:
            return {**ALGO_PRESETS[data["preset"]], **data}
        return data

    preset: Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo"] | None = Field(
        None,
        description="Start from a method's published settings (docs/algorithms.md lists them); the recipe's "
        "own algo keys override them.",
    )
    advantage: Literal["grpo", "dr_grpo", "rloo"] = Field("grpo", description="Group baseline (GRPO, Dr. GRPO, RLOO).")
    eps: float = Field(1e-6, gt=0, description="Added to the group std before dividing.")
    negative_scale: float = Field(
        1.0, ge=0, le=1, description="Multiplies negative advantages (0: learn from winners only)."
    )
    batch_std_norm: bool = Field(False, description="Also divide advantages by the batch std (REINFORCE++).")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = Field(
        "token_mean", description="Loss aggregation: DAPO token-mean, GRPO seq-mean, Dr. GRPO constant norm."
    )
    clip_low: float = Field(0.2, ge=0, description="Lower clip epsilon of the ratio (1 - clip_low).")
    clip_high: float = Field(0.2, ge=0, description="Upper clip epsilon (DAPO clip-higher uses 0.28).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip constant c for negative advantages.")
    ratio_level: Literal["token", "sequence"] = Field("token", description="'sequence' is GSPO.")
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient; 0 loads no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator (Schulman 2020).")
    kl_in_reward: bool = Field(False, description="Fold the KL penalty into the reward instead of the loss.")
    ref_refresh_every: int = Field(0, ge=0, description="Copy the policy into the reference every N steps (0: frozen).")
    entropy_coef: float = Field(0.0, description="Entropy bonus coefficient.")
    dynamic_sampling: bool = Field(False, description="DAPO: drop zero-variance groups and sample more.")
    max_sampling_rounds: int = Field(3, ge=1, description="Most sampling rounds per step with dynamic sampling.")
    overlong_mask: bool = Field(False, description="Mask the loss of truncated completions.")
    overlong_penalty: bool = Field(False, description="DAPO soft length penalty near max_new_tokens.")
    overlong_cache: int = Field(16, ge=1, description="Length of the soft penalty zone, in tokens.")
    tis_cap: float | None = Field(None, gt=0, description="Truncated importance sampling cap (rollout vs trainer).")


class TrainConfig(Section):
    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict) and "freeze_router" in data:
            raise ValueError("train.freeze_router is now moe.freeze_router (it finds routers by module type)")
        return data

    steps: int = Field(120, ge=0, description="GRPO steps.")
    prompts_per_step: int = Field(32, ge=1, description="Prompts per step (B); B * group_size completions.")
    off_policy_steps: int = Field(0, ge=0, le=1, description="1: sample step t+1 while training on step t (async).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's rollouts.")
    minibatch_size: int | None = Field(
        None,
        ge=1,
        description="Completions per optimizer step (null: the step's completions, prompts_per_step * "
        "group_size, split into updates_per_step); when set, it wins over updates_per_step.",
    )
    updates_per_step: int = Field(
        1,
        ge=1,
        description="Optimizer steps per RL step when minibatch_size is null: the step's completions "
        "split into this many minibatches, whatever prompts_per_step is.",
    )
    single_pass: bool = Field(
        True,
        description="When a step is one update on all its completions (ppo_epochs 1, "
        "minibatch_size at least the batch), take the old log-probs from the update's own "
        "forward instead of a separate pass (the ratio is 1 either way).",
    )
    learning_rate: float = Field(8e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(5, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    save_every: int = Field(20, ge=0, description="Checkpoint every N steps (0: only at the end).")
    eval_every: int = Field(40, ge=0, description="Held-out accuracy every N steps (0: before and after only).")
    threads: int = Field(0, ge=0, description="torch threads in the policy worker (0: every core; half in async mode).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the policy trains: 'auto' is the GPU when its worker has one (see resources), else the CPU.",
    )
    micro_batch_tokens: int = Field(
        0,
        ge=0,
        description="Padded tokens per forward/backward pass; a minibatch's "
        "gradients accumulate over its micro-batches (0: the whole minibatch at once).",
    )
    logits_chunk_mib: int = Field(
        1024,
        ge=1,
        description="Largest float32 logits block held at once when "
        "scoring tokens; longer micro-batches are scored in chunks of positions.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward "
        "pass instead of keeping them (less memory, about a third more compute).",
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning rate after the warm-up, over the run's optimizer steps."
    )
    lr_min_ratio: float = Field(
        0.0, ge=0, le=1, description="Where linear and cosine decay end, as a fraction of learning_rate."
    )


class MoEConfig(Section):
    routing_replay: Literal["none", "trainer", "rollout"] = Field(
        "none",
        description="Routing replay: 'trainer' reuses the experts the old-log-prob pass chose in every "
        "update pass of the step (R2); 'rollout' reuses the experts the vLLM engine chose while sampling (R3). "
        "Gate weights always come from the current router.",
    )
    balance: Literal["none", "aux_free", "aux_loss"] = Field(
        "none",
        description="Expert balancing during RL: 'aux_free' is DeepSeek-V3's per-expert selection bias "
        "nudged after each optimizer step against the observed load (trainer and rollout engine select with it); "
        "'aux_loss' adds the switch-style load-balancing loss.",
    )
    bias_update_rate: float = Field(
        1e-3,
        ge=0,
        description="aux_free: how far each expert's bias moves per "
        "training step (in softmax score), spread evenly over the step's optimizer "
        "steps.",
    )
    aux_loss_coef: float = Field(1e-2, ge=0, description="aux_loss: weight of the load-balancing loss.")
    z_loss_coef: float = Field(
        0.0, ge=0, description="Router z-loss weight (mean squared log-sum-exp of the router logits; 0: off)."
    )
    freeze_router: bool = Field(
        False,
        description="Keep every MoE router's weights fixed during RL (routers are "
        "found by module type; a model without one is refused).",
    )
    rollout_routing: bool = Field(
        True,
        description="Record the experts the vLLM engine routes each token to, for "
        "the rollout-side load and the trainer/rollout routing agreement (needed by "
        "routing_replay=rollout).",
    )
    start_skew: float = Field(
        0.0,
        ge=0,
        description="Experiments: start RL from a deliberately imbalanced router, "
        "a selection bias of this much (in softmax score) on the first top-k experts of every "
        "layer, kept beside the starting policy and applied by the trainer and the rollout "
        "engines like aux_free's bias (which then moves it; with balance none it stays). "
        "Softmax-routed models (Qwen3-MoE) only.",
    )


class EvalConfig(Section):
    num_prompts: int = Field(200, ge=1, description="Held-out prompts scored (greedy decoding).")
    max_new_tokens: int = Field(64, ge=1, description="Longest completion at evaluation.")
    samples: int = Field(
        4,
        ge=0,
        description="Also sample this many completions per held-out prompt at the "
        "rollout temperature and report their mean accuracy, the quantity RL optimises (0: greedy only).",
    )
    k: int = Field(
        4,
        ge=1,
        description="pass@k (unbiased, from all the samples) and maj@k (majority answer of the "
        "first k samples) are reported at this k; at most eval.samples.",
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.samples and self.k > self.samples:
            raise ValueError(
                f"k ({self.k}) must be at most samples ({self.samples}): pass@k and maj@k take k of "
                "each prompt's samples"
            )
        return self


def _small_dense_student() -> TinyMoEConfig:
    return TinyMoEConfig(
        arch="qwen3", hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=32, expert_hidden_size=256
    )


class DistillConfig(Section):
    """``rlwhf distill``: rejection-sampling distillation of a teacher into a student."""

    teacher: str = Field(
        "runs/tiny",
        description="The teacher: a run directory (its last checkpoint), a checkpoint "
        "or a model folder in Hugging Face format.",
    )
    num_prompts: int = Field(1000, ge=1, description="Training prompts the teacher answers.")
    samples: int = Field(4, ge=1, description="Completions the teacher samples per prompt (k), at rollout.temperature.")
    keep_per_prompt: int = Field(1, ge=1, description="Most verified completions kept per prompt (m).")
    select: Literal["shortest", "random"] = Field(
        "shortest", description="Which verified completions are kept when a prompt has more than keep_per_prompt."
    )
    student: TinyMoEConfig = Field(
        default_factory=_small_dense_student, description="Shape of the student built locally (arch 'qwen3' is dense)."
    )
    student_path: str | None = Field(None, description="Start from this model folder instead of building a student.")
    steps: int = Field(400, ge=1, description="The student's SFT optimizer steps.")
    batch_size: int = Field(32, ge=1, description="The student's SFT examples per step.")
    learning_rate: float = Field(3e-3, gt=0, description="The student's SFT peak learning rate (cosine schedule).")
    seed: int | None = Field(
        None,
        description="Seed of the student's initialisation and SFT data order (default: "
        "run.seed); the teacher's samples and the data do not depend on it.",
    )
    baseline: bool = Field(
        True,
        description="Also train the same student, same steps, on the solver's traces of the "
        "same prompts (needs a 'solution' column), and score it beside the distilled one.",
    )


class TrackingConfig(Section):
    wandb: bool = Field(False, description="Log to Weights & Biases (offline unless WANDB_MODE says otherwise).")
    wandb_project: str = Field("rlwhf", description="wandb project.")
    traces: bool = Field(True, description="Write every completion to traces/ (Parquet).")
    console_every: int = Field(
        10,
        ge=1,
        description="Print a metrics line every N steps (and for the last step and any step without an update).",
    )


class ResourcesConfig(Section):
    policy_workers: int = Field(
        1,
        ge=1,
        description="Policy workers (N): one torch.distributed group that shards "
        "the policy with FSDP2 (1: the whole policy in one process).",
    )
    rollout_engines: int = Field(1, ge=1, description="Rollout engines (M): a step's prompts are split across them.")
    gpus_per_policy_worker: float = Field(
        0.0,
        ge=0,
        description="GPUs Ray gives each policy worker; the trainer "
        "uses one when it sees one (train.device). 0.5 here and for the rollout "
        "engine shares one GPU between them, in turns.",
    )
    gpus_per_rollout_engine: float = Field(
        0.0,
        ge=0,
        description="GPUs Ray gives each rollout engine (vLLM needs one on a GPU machine; 0 runs it on the CPU).",
    )
    cpus_per_policy_worker: float = Field(
        0.0,
        ge=0,
        description="CPUs Ray reserves for each policy worker (0: the workers take turns on the machine's cores).",
    )
    cpus_per_rollout_engine: float = Field(0.0, ge=0, description="CPUs Ray reserves for each rollout engine.")
    placement: Literal["pack", "spread"] = Field(
        "pack",
        description="How the placement group of the workers that "
        "reserve CPUs or GPUs lays them on nodes: 'pack' fills a node first.",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Times a rollout or reward worker that dies is restarted (its work redone) before the run stops.",
    )


class SyncConfig(Section):
    transport: Literal["object_store", "collective"] = Field(
        "object_store",
        description="How the policy's weights reach the rollout engines after each update: "
        "'object_store' (rank 0 puts them in Ray's object store in buckets, every engine reads them) or "
        "'collective' (vLLM's weight-transfer API: rank 0 broadcasts them tensor by tensor to every engine's "
        "workers, over NCCL on GPUs, gloo on CPUs; vLLM engines only).",
    )
    bucket_mb: float = Field(
        256.0,
        gt=0,
        description="Weight sync over the object store: the policy's weights go "
        "to the rollout engines in buckets of about this many MiB.",
    )


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster to join; default: RAY_ADDRESS, else a local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all).")


class Recipe(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        completions = self.train.prompts_per_step * self.rollout.group_size
        if self.train.minibatch_size is None:
            self.train.minibatch_size = max(1, completions // self.train.updates_per_step)
        if self.train.minibatch_size > completions:
            raise ValueError(
                f"train.minibatch_size ({self.train.minibatch_size}) is larger than the completions per "
                f"step (train.prompts_per_step * rollout.group_size = {completions}): lower it too, or set "
                "it to null and say train.updates_per_step instead"
            )
        self._match_format_reward_to_prompt()
        if self.moe.routing_replay == "rollout" and (self.rollout.engine != "vllm" or not self.moe.rollout_routing):
            raise ValueError(
                "moe.routing_replay 'rollout' replays the experts the vLLM engine chose: it needs "
                "rollout.engine vllm and moe.rollout_routing true"
            )
        if self.sync.transport == "collective" and self.rollout.engine != "vllm":
            raise ValueError(
                f"sync.transport 'collective' is vLLM's weight-transfer API: it needs rollout.engine "
                f"vllm, not {self.rollout.engine!r}"
            )
        return self

    def _match_format_reward_to_prompt(self) -> None:
        """The ``format`` reward pays for the answer format the prompt asks for: ``\\boxed{}`` when the
        prompt template or system prompt asks for it, else think/answer tags (unless its kwargs say)."""
        for spec in self.rewards.funcs:
            if spec.name == "format" and self.data.asks_for_boxed and "style" not in spec.kwargs:
                spec.kwargs["style"] = "boxed"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A recipe that cannot be used; the message says where and why."""


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    if path.resolve() in chain:
        raise ConfigError(f"recipe {path}: 'base' chain loops back on itself")
    try:
        with path.open(encoding="utf-8") as f:  # read from the file, so that YAML's messages name it
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path}: not UTF-8 text ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of sections, got {type(data).__name__}")
    _anchor_paths(data, path.parent)
    _expand_preset(data.get("algo"))
    base = data.pop("base", None)
    if base is not None:
        data = _merge(_read_yaml(_base_path(path, base), chain + (path.resolve(),)), data)
    return data


SHIPPED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _base_path(recipe: Path, base: str) -> Path:
    """``base:`` starts from the recipe's folder; a shipped recipe's name (``base: tiny.yaml``) also
    resolves when the recipe was copied elsewhere."""
    beside = recipe.parent / base
    shipped = SHIPPED_RECIPES / base
    return shipped if not beside.is_file() and shipped.is_file() else beside


def _anchored(value, folder: Path):
    """A relative path a recipe file names, made to start from the recipe's folder when it is there: as
    a path from the working directory (as a Ray job's working_dir needs) when it lies below it, else
    absolute. Anything else (a Hub id, a registered name, a path that is not there) is left as written."""
    if not isinstance(value, str) or not value or value == "tiny" or Path(value).expanduser().is_absolute():
        return value
    target = folder / value
    if not target.exists():
        return value
    target = target.resolve()
    cwd = Path.cwd().resolve()
    return str(target.relative_to(cwd)) if target.is_relative_to(cwd) else str(target)


def _anchored_reward(name, folder: Path):
    """``file.py:function`` anchored like a path; other reward names as written."""
    if not isinstance(name, str) or ".py:" not in name:
        return name
    file, _, function = name.rpartition(":")
    return f"{_anchored(file, folder)}:{function}"


def _expand_preset(algo) -> None:
    """``algo.preset`` filled in where it is written, so that it overrides what a base recipe set, and
    the keys written beside it (or after it on the command line) override it."""
    if isinstance(algo, dict) and algo.get("preset") in ALGO_PRESETS:
        for key, value in ALGO_PRESETS[algo["preset"]].items():
            algo.setdefault(key, value)


def _anchor_paths(data: dict, folder: Path) -> None:
    """Relative paths in one recipe file start from that file's folder (``rlwhf.config._anchored``):
    the model folder or .gguf file, the data file, reward files, the distillation teacher and student."""
    for section, keys in (("model", ("path",)), ("data", ("dataset",)), ("distill", ("teacher", "student_path"))):
        node = data.get(section)
        if isinstance(node, dict):
            for key in keys:
                if key in node:
                    node[key] = _anchored(node[key], folder)
    rewards = data.get("rewards")
    if isinstance(rewards, dict):
        if isinstance(rewards.get("funcs"), list):
            for spec in rewards["funcs"]:
                if isinstance(spec, dict) and "name" in spec:
                    spec["name"] = _anchored_reward(spec["name"], folder)
        if "accuracy" in rewards:
            rewards["accuracy"] = _anchored_reward(rewards["accuracy"], folder)
    rollout = data.get("rollout")
    if isinstance(rollout, dict):
        if isinstance(rollout.get("tools"), list):
            rollout["tools"] = [_anchored_reward(name, folder) for name in rollout["tools"]]
        if "environment" in rollout:
            rollout["environment"] = _anchored_reward(rollout["environment"], folder)


def apply_override(data: dict, override: str) -> dict:
    """Apply one ``dotted.key=value`` override; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. train.steps=5")
    try:
        value: Any = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # text with a colon in it ("You can: ..."), not a mapping (written {key: value})
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return data


def _describe(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    expected = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "extra_forbidden": "no such key",
        "missing": "a value (required)",
    }.get(kind)
    if kind == "literal_error":
        return "expected " + msg.removeprefix("Input should be ")
    if kind == "extra_forbidden":
        return "unknown key"
    msg = msg.removeprefix("Value error, ")
    return f"expected {expected}" if expected else msg[0].lower() + msg[1:]


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(recipe)"
        value = error.get("input")
        shown = "" if isinstance(value, dict) or error["type"] == "missing" else f" = {value!r}"
        lines.append(f"{source}: {key}{shown}: {_describe(error)}")
    return "\n".join(lines)


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe (or the defaults when ``path`` is None), apply overrides, validate."""
    data = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        if override.partition("=")[0].strip() == "algo.preset":  # a preset replaces the algo keys before it
            data = apply_override(data, override)
            preset = ALGO_PRESETS.get(data["algo"]["preset"], {})
            data["algo"] = {**data["algo"], **preset}
            continue
        data = apply_override(data, override)
    source = str(path) if path is not None else "defaults"
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def model_folder_problems(path: str) -> list[str]:
    """A ``model.path`` that names a local folder (it exists, or reads as a path rather than a Hub id
    such as ``org/name``) must be a Hugging Face model folder; a Hub id is left to the download."""
    folder = Path(path).expanduser()
    local = folder.exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path
    if not local:
        return []
    if not folder.is_dir():
        return [
            f"model.path = {path!r}: no such folder (looked for beside the recipe, then in {Path.cwd()}); expected a Hugging "
            "Face model folder, a .gguf file, package:PKG/file.gguf, 'tiny', or a Hub id such as "
            "HuggingFaceTB/SmolLM2-135M-Instruct"
        ]
    if not (folder / "config.json").is_file():
        return [
            f"model.path = {path!r}: the folder has no config.json; expected a Hugging Face model folder "
            "(what save_pretrained writes: config.json, the weights, the tokenizer)"
        ]
    return _unloadable(path, folder)


def _unloadable(path: str, folder: Path) -> list[str]:
    """A local model folder's config and tokenizer, loaded as a run will load them (no weights)."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for what, load in (("config.json", AutoConfig.from_pretrained), ("tokenizer", AutoTokenizer.from_pretrained)):
        try:
            load(str(folder))
        except Exception as exc:
            first = str(exc).strip().splitlines()
            return [
                f"model.path = {path!r}: its {what} cannot be loaded ({type(exc).__name__}: "
                f"{first[0] if first else ''}); expected a Hugging Face model folder"
            ]
    return []


def model_path_problems(path: str) -> list[str]:
    """``model.path`` checked without loading anything: a .gguf file or ``package:`` file is there, a
    local model folder has its config.json; 'tiny' and a Hub id pass."""

    if is_gguf(path) or path.startswith(PACKAGE_PREFIX):
        try:
            locate(path)
        except (OSError, ValueError) as exc:
            return [str(exc)]
        return []
    return [] if path == "tiny" else model_folder_problems(path)


def _unknown_kwargs(where: str, fn, kwargs: dict) -> list[str]:
    """The recipe's constant keyword arguments that the reward function cannot take."""

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C function: nothing to read
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    unknown = sorted(set(kwargs) - set(params))
    if not unknown:
        return []
    takes = ", ".join(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
    return [f"{where}: kwargs {', '.join(unknown)} are not parameters of the function (it takes: {takes})"]


def _output_dir_problems(output_dir: str) -> list[str]:
    """``run.output_dir`` must be creatable: its nearest existing folder writable."""

    folder = Path(output_dir).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return [
            f"run.output_dir = {output_dir!r}: {existing} is not a folder, so the run's folder cannot be made there"
        ]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [
            f"run.output_dir = {output_dir!r}: {existing} is not writable, so the run's folder cannot be made there"
        ]
    return []


def _count_rows(path: Path) -> int | None:
    """Rows of a local data file, counted cheaply (JSON lines and CSV by line, Parquet from its footer);
    None where that is not cheap (a JSON array)."""
    suffix = path.suffix.lstrip(".")
    try:
        if suffix == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        with path.open("rb") as f:
            if suffix == "json" and f.read(4096).lstrip()[:1] == b"[":
                return None
            f.seek(0)
            lines = sum(1 for line in f if line.strip())
        return lines - 1 if suffix == "csv" else lines
    except OSError:
        return None


def check_references(recipe: Recipe) -> None:
    """What a recipe names outside itself, checked before anything starts: every reward resolves
    (registered, entry point, or an importable ``module:function``) and takes the recipe's kwargs,
    the model's file or folder is there, the output folder can be made, and a local data file exists
    with more rows than the held-out set takes; every tool and the environment resolve."""
    problems = []
    for i, name in enumerate(recipe.rollout.tools):
        try:
            tools.get_tool(name)
        except ValueError as exc:
            problems.append(f"rollout.tools[{i}] = {name!r}: {exc}")
    if recipe.rollout.environment:
        try:
            tools.load_environment(recipe.rollout.environment, recipe.rollout.environment_kwargs)
        except ValueError as exc:
            problems.append(f"rollout.environment = {recipe.rollout.environment!r}: {exc}")
    for i, spec in enumerate(recipe.rewards.funcs):
        try:
            fn = rewards.get(spec.name)
        except KeyError as exc:
            problems.append(f"rewards.funcs[{i}] = {spec.name!r}: {exc}")
            continue
        problems += _unknown_kwargs(f"rewards.funcs[{i}] = {spec.name!r}", fn, spec.kwargs)
    problems += _output_dir_problems(recipe.run.output_dir)
    problems += model_path_problems(recipe.model.path)
    if recipe.data.task == "reasoning_gym":
        try:
            check_gym_names(recipe.data.gym)
        except ValueError as exc:
            problems.append(str(exc))
    dataset = recipe.data.dataset
    if recipe.data.task == "dataset" and dataset and dataset.rsplit(".", 1)[-1] in DATA_FILE_SUFFIXES:
        if not Path(dataset).is_file():
            problems.append(
                f"data.dataset = {dataset!r}: no such file (looked for beside the recipe, then in {Path.cwd()})"
            )
        elif recipe.data.test_split is None:
            rows = _count_rows(Path(dataset))
            if rows is not None and rows <= recipe.data.num_test:
                problems.append(
                    f"data.dataset = {dataset!r} has {rows} rows and data.num_test={recipe.data.num_test} holds "
                    "them all out for evaluation, leaving none to train on: lower data.num_test or give "
                    "data.test_split"
                )
    if problems:
        raise ConfigError("\n".join(problems))


def recipe_keys_markdown() -> str:
    """The table of recipe keys in docs/recipes.md, generated from the models' fields.

    ``<`` in a description is written as ``&lt;``, so that ``<name>`` shows as text, not as an HTML tag.
    """
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, field in Recipe.model_fields.items():
        model = field.annotation
        for name, f in model.model_fields.items():
            default = f.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                shown = "(nested: " + ", ".join(type(default).model_fields) + ")"
            elif isinstance(default, list):
                shown = ", ".join(getattr(d, "name", str(d)) for d in default)
            else:
                shown = "null" if default is None else str(default)
            meaning = (f.description or "").replace("<", "&lt;")
            lines.append(f"| `{section}.{name}` | `{shown}` | {meaning} |")
    return "\n".join(lines)


RECIPE_KEYS_START, RECIPE_KEYS_END = "<!-- recipe keys: start -->\n", "\n<!-- recipe keys: end -->"


def write_recipe_keys(page: Path = Path("docs/recipes.md")) -> None:
    """Rewrite the key table between the markers of ``page`` from the models (``python -m rlwhf.config``)."""
    text = page.read_text()
    head, _, rest = text.partition(RECIPE_KEYS_START)
    _, _, tail = rest.partition(RECIPE_KEYS_END)
    page.write_text(head + RECIPE_KEYS_START + recipe_keys_markdown() + RECIPE_KEYS_END + tail)


if __name__ == "__main__":
    write_recipe_keys()
