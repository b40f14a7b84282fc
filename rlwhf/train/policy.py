"""The policy trainer: log-probs under the current policy and clipped policy-gradient updates.

A plain class; ``rlwhf.workers`` wraps it in a Ray actor. It owns the model, the optimizer, the
optional frozen reference model and checkpoints (HF ``save_pretrained`` + optimizer + RNG).

Memory is bounded by ``train.micro_batch_tokens``: every pass (the old and reference log-probs,
each minibatch's forward and backward) runs over micro-batches of about that many padded tokens,
gradients accumulate over a minibatch's micro-batches, and every loss aggregation divides by the
whole minibatch's tokens or completions, so the update equals one pass over the minibatch. The
weights and optimizer state stay in float32 (master weights); ``model.dtype: bfloat16`` runs the
passes under autocast in bfloat16.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rlwhf.algo import (
    kl_estimate,
    logprob_mismatch,
    mask_truncated,
    normaliser,
    policy_loss,
    truncated_is_weights,
)
from rlwhf.train import distributed
from rlwhf.train.batch import RolloutBatch
from rlwhf.train.logprobs import token_logprobs

if TYPE_CHECKING:  # the trainer reads attributes only, so it runs where pydantic is not installed
    from rlwhf.config import AlgoConfig, TrainConfig


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA when this process sees a GPU (Ray shows an actor the GPUs
    its recipe's resources gave it), else the CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but this process sees no GPU (on Ray, give the policy "
                           "workers GPUs in the recipe's resources)")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def lr_multiplier(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """The learning rate's factor at optimizer step ``step`` (0-based): a linear warm-up over
    ``warmup`` steps, then ``constant``, or a ``linear`` / ``cosine`` decay to ``min_ratio`` at
    ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


class ExpertLoad:
    """Counts how often each routed expert is among a token's top-k, per MoE layer, while active.

    Hooks every router whose forward returns ``(..., top_k_indices)`` (Qwen3-MoE's ``mlp.gate``) and
    counts only the positions ``mask`` selects: the ones that produced completion tokens.
    """

    def __init__(self, model):
        self.routers = [m for name, m in model.named_modules()
                        if name.endswith("mlp.gate") and hasattr(m, "num_experts") and hasattr(m, "top_k")]
        self.counts = [torch.zeros(m.num_experts) for m in self.routers]
        self._positions: torch.Tensor | None = None

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            chosen = output[-1].reshape(-1, module.top_k)[self._positions.to(output[-1].device)]
            self.counts[layer] += torch.bincount(chosen.flatten(), minlength=module.num_experts).float().cpu()
        return hook

    def measure(self, fn, mask: torch.Tensor):
        """Run ``fn()`` counting routes at ``mask [N, L-1]`` positions; returns ``fn()``'s result."""
        self._positions = torch.nn.functional.pad(mask, (0, 1)).flatten().bool()
        handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]
        try:
            return fn()
        finally:
            for h in handles:
                h.remove()

    def metrics(self) -> dict[str, float]:
        """``moe/load/L{layer}/E{expert}`` (each layer's shares sum to 1) and ``moe/load/max_over_mean``."""
        out, imbalance = {}, []
        for layer, counts in enumerate(self.counts):
            share = counts / counts.sum().clamp(min=1)
            out.update({f"moe/load/L{layer}/E{e}": float(v) for e, v in enumerate(share)})
            imbalance.append(float(share.max() / share.mean().clamp(min=1e-12)))
        if imbalance:
            out["moe/load/max_over_mean"] = float(np.mean(imbalance))
        return out


def trainable_params(model):
    return [p for p in model.parameters() if p.requires_grad]


# How each metric of policy_loss combines over a minibatch's micro-batches: the loss terms are
# already shares of the minibatch's (they divide by its count), maxima take the largest, and the
# means over tokens or completions are weighted by each micro-batch's tokens or completions.
_SUMMED, _LARGEST, _PER_COMPLETION = {"pg_loss", "loss"}, {"ratio_max"}, {"ratio_spread"}


def combine_micro_batch_metrics(parts: list[tuple[dict, float, float]]) -> dict[str, float]:
    """One minibatch's metrics from its micro-batches' ``(metrics, tokens, completions)``."""
    tokens = sum(t for _, t, _ in parts) or 1.0
    completions = sum(c for _, _, c in parts) or 1.0
    out = {}
    for key in parts[0][0]:
        values = [(m[key], t, c) for m, t, c in parts]
        if key in _SUMMED:
            out[key] = sum(v for v, _, _ in values)
        elif key in _LARGEST:
            out[key] = max(v for v, _, _ in values)
        elif key in _PER_COMPLETION:
            out[key] = sum(v * c for v, _, c in values) / completions
        else:
            out[key] = sum(v * t for v, t, _ in values) / tokens
    return out


class PolicyTrainer:
    def __init__(self, model_path: str, algo: AlgoConfig, train: TrainConfig, *, temperature: float,
                 max_new_tokens: int, seed: int = 0, dtype: str = "float32", completions_per_step: int | None = None,
                 mesh=None):
        """``mesh``: a 1-D device mesh over the policy's ranks (``rlwhf.train.distributed``) to shard
        the policy over; None trains it whole in this process."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if train.threads:
            torch.set_num_threads(train.threads)
        torch.manual_seed(seed)
        self.algo, self.train_cfg, self.temperature = algo, train, temperature
        self.max_new_tokens = max_new_tokens  # Dr. GRPO's constant normaliser: the generation budget
        self.device = resolve_device(train.device)
        self.compute_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # Master weights in float32 whatever the compute dtype: bf16 weights round most small updates away.
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(self.device)
        self.model.config.output_router_logits = False
        self.model.config.use_cache = False  # the trainer never decodes; a KV cache would only cost memory
        if train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.reference = None
        if algo.kl_coef > 0:  # kl_coef == 0 loads no reference model at all; it never trains, so compute dtype
            self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.compute_dtype)
            self.reference.to(self.device).eval().requires_grad_(False)
            self.reference.config.output_router_logits = False
        if train.freeze_router:
            for name, param in self.model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    param.requires_grad_(False)
        self.mesh, self.rank, self.world, self.chunkable = mesh, 0, 1, True
        if mesh is not None:
            self.rank, self.world = mesh.get_local_rank(), mesh.size()
            self.chunkable = distributed.shard(self.model, mesh)
            if self.reference is not None:
                distributed.shard(self.reference, mesh)
        self.optimizer = torch.optim.AdamW(trainable_params(self.model), lr=train.learning_rate,
                                           weight_decay=train.weight_decay,
                                           betas=(0.9, 0.99), eps=train.adam_eps)
        per_step = math.ceil((completions_per_step or train.minibatch_size) / train.minibatch_size)
        total = train.steps * train.ppo_epochs * per_step  # with dynamic sampling, at most this many
        warmup = max(1, train.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_multiplier(
            s, warmup, total, train.lr_schedule, train.lr_min_ratio))
        self.step = 0

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def _logprobs(self, model, batch: RolloutBatch, with_entropy: bool = False, widest: int = 0):
        """``token_logprobs`` of a batch already trimmed and on the device, in the compute dtype. When
        sharded, the head runs as many times on every rank: enough chunks for ``widest`` tokens."""
        chunk = max(1, self.train_cfg.logits_chunk_mib * 2**20 // (4 * model.config.vocab_size))
        chunks = max(1, -(-widest // chunk)) if self.mesh is not None and self.chunkable else None
        with self._autocast():
            return token_logprobs(model, batch.input_ids, batch.attention_mask, self.temperature, with_entropy,
                                  chunk_tokens=chunk if self.chunkable else 0, num_chunks=chunks)

    # -- weights ---------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's float32 weights on the CPU: gathered from every rank onto rank 0 when
        sharded (a collective: every rank calls it; the others get an empty dict)."""
        if self.mesh is None:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights for the rollout engine: on the CPU, in the compute dtype (rank 0's; see
        ``full_state_dict``)."""
        return {k: v.detach().to("cpu", self.compute_dtype if v.is_floating_point() else v.dtype, copy=True)
                for k, v in self.full_state_dict().items()}

    def refresh_reference(self) -> None:
        if self.reference is not None:
            self.reference.load_state_dict(self.model.state_dict())

    # -- one GRPO update ---------------------------------------------------------------------
    def _micro_batches(self, batch: RolloutBatch) -> list[tuple[list[int] | None, int]]:
        """This rank's passes over ``batch``: micro-batches, ``None`` for an empty pass, each with the
        widest pass of any rank at that point (see ``distributed.rank_micro_batches``)."""
        return distributed.rank_micro_batches(batch.lengths, self.train_cfg.micro_batch_tokens, self.world, self.rank)

    def _empty_pass(self, model, widest: int, backward: bool) -> None:
        """A forward (and backward) of one token whose loss is zero: the collectives of a sharded
        model's pass, for a rank that has no rows left in this one."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        logp, _ = self._logprobs(model, RolloutBatch(ids, torch.ones_like(ids), *[torch.zeros(1, 1)] * 2,
                                                     torch.zeros(1), torch.zeros(1, dtype=torch.bool)), widest=widest)
        if backward:
            (logp.sum() * 0.0).backward()

    @torch.no_grad()
    def score(self, model, batch: RolloutBatch, load: ExpertLoad | None = None) -> torch.Tensor:
        """Log-probs ``[N, L-1]`` (on the CPU) of a whole batch under ``model``, micro-batch by
        micro-batch; when sharded, each rank scores its share and the shares are summed."""
        out = torch.zeros(batch.mask.shape)
        for micro, widest in self._micro_batches(batch):
            if micro is None:
                self._empty_pass(model, widest, backward=False)
                continue
            part = batch.select(micro).trimmed().to(self.device)
            if load is None:
                logp, _ = self._logprobs(model, part, widest=widest)
            else:
                logp, _ = load.measure(lambda p=part, w=widest: self._logprobs(model, p, widest=w), part.mask)
            out[micro, :logp.shape[1]] = logp.float().cpu()
        return distributed.all_reduce_sum(out)

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates over one step's rollouts; returns mean metrics."""
        load = ExpertLoad(self.model)
        self.model.eval()
        old_logp = self.score(self.model, batch, load)
        ref_logp = self.score(self.reference, batch) if self.reference is not None else None
        self.model.train()
        metrics: dict[str, list[float]] = {}
        for key, value in logprob_mismatch(old_logp, batch.rollout_logp, batch.mask).items():
            metrics.setdefault(f"rollout/{key}", []).append(value)
        is_weights = (truncated_is_weights(old_logp, batch.rollout_logp, self.algo.tis_cap)
                      if self.algo.tis_cap else None)
        mask = mask_truncated(batch.mask, batch.truncated) if self.algo.overlong_mask else batch.mask
        size = self.train_cfg.minibatch_size
        for _ in range(self.train_cfg.ppo_epochs):
            order = torch.randperm(len(batch))
            for start in range(0, len(batch), size):
                idx = order[start:start + size]
                stats = self._update(batch.select(idx), old_logp[idx], None if ref_logp is None else ref_logp[idx],
                                     mask[idx], None if is_weights is None else is_weights[idx])
                for key, value in stats.items():
                    metrics.setdefault(key, []).append(float(value))
        self.step += 1
        if self.algo.ref_refresh_every and self.step % self.algo.ref_refresh_every == 0:
            self.refresh_reference()
        out = {k: float(np.mean(v)) for k, v in metrics.items()}
        out["lr"] = self.scheduler.get_last_lr()[0]
        for counts in load.counts:
            distributed.all_reduce_sum(counts)
        out.update(load.metrics())
        return out

    def _update(self, minibatch: RolloutBatch, old_logp, ref_logp, mask, is_weights) -> dict[str, float]:
        """One optimizer step on a minibatch: gradients accumulated over its micro-batches, each loss
        divided by the whole minibatch's tokens or completions (``normaliser``)."""
        algo = self.algo
        denominator = normaliser(mask, algo.loss_agg)
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        for micro, widest in self._micro_batches(minibatch):
            if micro is None:
                self._empty_pass(self.model, widest, backward=True)
                continue
            part = minibatch.select(micro).trimmed().to(self.device)
            width = part.mask.shape[1]

            def cut(x, micro=micro, width=width):
                return None if x is None else x[micro, :width].to(self.device)

            logp, entropy = self._logprobs(self.model, part, with_entropy=True, widest=widest)
            part_mask = cut(mask)
            loss, stats = policy_loss(
                logp, cut(old_logp), part.advantages, part_mask,
                clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
                ratio_level=algo.ratio_level, aggregation=algo.loss_agg, norm_constant=float(self.max_new_tokens),
                ref_logp=None if algo.kl_in_reward else cut(ref_logp),
                kl_coef=0.0 if algo.kl_in_reward else algo.kl_coef, kl_estimator=algo.kl_estimator,
                entropy=entropy, entropy_coef=algo.entropy_coef, is_weights=cut(is_weights),
                denominator=denominator)
            loss.backward()
            stats["loss"] = float(loss.detach())
            parts.append((stats, float(part_mask.sum()), float(part_mask.bool().any(-1).sum())))
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_params(self.model), self.train_cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor when sharded: the norm over every rank's shard
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        parts = [p for rank_parts in distributed.all_objects(parts) for p in rank_parts]
        return {**combine_micro_batch_metrics(parts), "grad_norm": float(grad_norm)}

    def sequence_kl(self, batch: RolloutBatch) -> list[float]:
        """Summed per-token KL estimate to the reference, per completion (``algo.kl_in_reward``)."""
        if self.reference is None:
            return [0.0] * len(batch)
        ref = self.score(self.reference, batch)
        logp = self.score(self.model, batch)
        return (kl_estimate(logp, ref, self.algo.kl_estimator) * batch.mask).sum(-1).tolist()

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | Path, extra_state: dict | None = None, extra_files: dict[str, bytes] | None = None) -> Path:
        """Write a complete checkpoint at ``path``, or none: everything goes to ``path.tmp``, is
        fsynced, and only then renamed to ``path`` (see ``rlwhf.checkpoints``). The weights and the
        optimizer state are saved whole (gathered onto rank 0 when sharded: every rank calls this),
        so a run resumes onto any number of ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        from rlwhf.checkpoints import commit_directory, fault_point

        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = self.full_state_dict()
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=whole)
        reference = None
        if self.reference is not None:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            reference = get_model_state_dict(self.reference, options=whole) if self.mesh is not None else \
                {k: v.cpu() for k, v in self.reference.state_dict().items()}
        path = Path(path)
        if self.rank != 0:
            return path
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(tmp, state_dict=weights)
        self.tokenizer.save_pretrained(tmp)
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": optimizer, "scheduler": self.scheduler.state_dict(), "reference": reference,
                    "rng": rng, "step": self.step}, tmp / "trainer_state.pt")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        (tmp / "loop_state.json").write_text(json.dumps(extra_state or {}, indent=2))
        fault_point("save", (extra_state or {}).get("step", -1))
        return commit_directory(tmp, path)

    def load_trainer_state(self, path: str | Path) -> None:
        """Continue from a checkpoint's optimizer, schedule, reference model and random state (its
        weights are the model this trainer was built from); onto any number of ranks."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False, map_location="cpu")
        whole = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state["optimizer"], options=whole)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.reference is not None and state["reference"] is not None:
            set_model_state_dict(self.reference, state["reference"], options=whole)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.step = state["step"]
