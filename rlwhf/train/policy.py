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
import dataclasses
import json
import math
import random
import time
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
from rlwhf.checkpoints import commit_directory
from rlwhf.faults import fault_point
from rlwhf.train import distributed
from rlwhf.train.batch import RolloutBatch
from rlwhf.train.logprobs import token_logprobs
from rlwhf.train.routing import (
    NO_MOE_CONTROLS,
    ROUTING_BIAS_FILE,
    Routing,
    aux_free_update,
    count_experts,
    freeze_routers,
    routing_metrics,
)

if TYPE_CHECKING:  # the trainer reads attributes only, so it runs where pydantic is not installed
    from rlwhf.config import AlgoConfig, MoEConfig, TrainConfig


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA when this process sees a GPU (Ray shows an actor the GPUs
    its recipe's resources gave it), else the CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "train.device is 'cuda' but this process sees no GPU (on Ray, give the policy "
            "workers GPUs in the recipe's resources)"
        )
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


class _SinglePass:
    """What a single-pass step's update records for the whole batch: log-probs ``[N, L-1]``, the
    routers' choices ``[N, L-1, layers, k]`` (-1 where not computed) and summed router entropy."""

    def __init__(self, shape, layers: int, top_k: int):
        self.logp = torch.zeros(shape)
        self.own = torch.full((*shape, layers, top_k), -1, dtype=torch.int16)
        self.entropy = torch.zeros(layers)


class PolicyTrainer:
    def __init__(
        self,
        model_path: str,
        algo: AlgoConfig,
        train: TrainConfig,
        *,
        temperature: float,
        max_new_tokens: int,
        seed: int = 0,
        dtype: str = "float32",
        completions_per_step: int | None = None,
        mesh=None,
        moe: MoEConfig | None = None,
    ):
        """``mesh``: a 1-D device mesh over the policy's ranks (``rlwhf.train.distributed``) to shard
        the policy over; None trains it whole in this process. ``moe``: routing replay, balancing and
        router controls (``rlwhf.config.MoEConfig``; None: its defaults)."""
        moe = moe or NO_MOE_CONTROLS
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
        self.moe = moe
        self.routing = Routing(self.model)
        if moe.routing_replay != "none" or moe.balance != "none":
            self.routing.require_steerable(f"moe.routing_replay={moe.routing_replay}, moe.balance={moe.balance}")
        if (Path(model_path) / ROUTING_BIAS_FILE).is_file():  # a checkpoint's aux-free selection bias
            self.routing.set_bias(torch.load(Path(model_path) / ROUTING_BIAS_FILE))
        if moe.freeze_router:
            freeze_routers(self.model)
        self.mesh, self.rank, self.world, self.chunkable = mesh, 0, 1, True
        if mesh is not None:
            self.rank, self.world = mesh.get_local_rank(), mesh.size()
            self.chunkable = distributed.shard(self.model, mesh)
            if self.reference is not None:
                distributed.shard(self.reference, mesh)
        self.optimizer = torch.optim.AdamW(
            trainable_params(self.model),
            lr=train.learning_rate,
            weight_decay=train.weight_decay,
            betas=(0.9, 0.99),
            eps=train.adam_eps,
        )
        minibatch = train.minibatch_size or completions_per_step or 1  # null: all of a step's completions
        per_step = math.ceil((completions_per_step or minibatch) / minibatch)
        total = train.steps * train.ppo_epochs * per_step  # with dynamic sampling, at most this many
        warmup = max(1, train.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, warmup, total, train.lr_schedule, train.lr_min_ratio)
        )
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
            return token_logprobs(
                model,
                batch.input_ids,
                batch.attention_mask,
                self.temperature,
                with_entropy,
                chunk_tokens=chunk if self.chunkable else 0,
                num_chunks=chunks,
                entropy_grad=bool(self.algo.entropy_coef),  # else a metric: no gradient, nothing kept for one
            )

    # -- weights ---------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's float32 weights on the CPU: gathered from every rank onto rank 0 when
        sharded (a collective: every rank calls it; the others get an empty dict)."""
        if self.mesh is None:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def bias_for_engines(self) -> torch.Tensor | None:
        """What the engines need besides the weights: the selection bias when it is rlwhf's own (not a
        buffer of the model) and balancing moves it, or it was set at the start (``moe.start_skew``)."""
        if not (self.routing.bias_is_external and len(self.routing)):
            return None
        if self.moe.balance == "aux_free" or self.routing.bias.any():  # a fixed bias too (moe.start_skew)
            return self.routing.bias
        return None

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
        logp, _ = self._logprobs(
            model,
            RolloutBatch(
                ids, torch.ones_like(ids), *[torch.zeros(1, 1)] * 2, torch.zeros(1), torch.zeros(1, dtype=torch.bool)
            ),
            widest=widest,
        )
        if backward:
            (logp.sum() * 0.0).backward()

    def _routing_pass(self, part: RolloutBatch, replay: torch.Tensor | None, losses: bool = False):
        """The routing context of one micro-batch's pass (``rlwhf.train.routing``): record at its
        completion positions, replay ``replay [rows, L-1, layers, k]`` (already cut to ``part``)."""
        mask = torch.nn.functional.pad(part.mask, (0, 1))
        if replay is not None:
            replay = torch.nn.functional.pad(
                replay[:, : mask.shape[1] - 1].to(self.device), (0, 0, 0, 0, 0, 1), value=-1
            )
        return self.routing.pass_(mask, replay, losses)

    def _own_routes(self, record, rows: int, width: int) -> torch.Tensor:
        """The routers' own choices of a pass as ``[rows, width-1, layers, k]``."""
        own = torch.stack([r.cpu() for r in record.own], dim=1).view(rows, width, len(self.routing), -1)
        return own[:, : width - 1].to(torch.int16)

    @torch.no_grad()
    def score(
        self, model, batch: RolloutBatch, routes: dict | None = None, replay: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-probs ``[N, L-1]`` (on the CPU) of a whole batch under ``model``, micro-batch by
        micro-batch; when sharded, each rank scores its share and the shares are summed. For the
        policy, ``routes`` (a dict) receives its routers' own choices (``"own"``, ``[N, L-1, layers,
        k]``) and summed entropy (``"entropy"``); ``replay`` is a selection to replay."""
        out = torch.zeros(batch.mask.shape)
        tracked = routes is not None and len(self.routing) > 0
        own = (
            torch.full((*batch.mask.shape, len(self.routing), self.routing.top_k), -1, dtype=torch.int16)
            if tracked
            else None
        )
        entropy = torch.zeros(len(self.routing))
        for micro, widest in self._micro_batches(batch):
            if micro is None:
                self._empty_pass(model, widest, backward=False)
                continue
            part = batch.select(micro).trimmed().to(self.device)
            if not tracked:
                logp, _ = self._logprobs(model, part, widest=widest)
            else:
                with self._routing_pass(part, None if replay is None else replay[micro]) as record:
                    logp, _ = self._logprobs(model, part, widest=widest)
                width = part.input_ids.shape[1]
                own[micro, : width - 1] = self._own_routes(record, len(micro), width)
                entropy += torch.tensor(record.entropy)
            out[micro, : logp.shape[1]] = logp.float().cpu()
        if tracked:  # each rank filled its own rows; the others hold -1 there
            routes["own"] = (distributed.all_reduce_sum((own + 1).int()) - 1).to(torch.int16)
            routes["entropy"] = distributed.all_reduce_sum(entropy)
        return distributed.all_reduce_sum(out)

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates over one step's rollouts; returns mean metrics."""
        moe = self.moe
        if moe.routing_replay == "rollout" and batch.routes is None:
            raise ValueError(
                "moe.routing_replay 'rollout': the rollout engine recorded no routes (it needs "
                "rollout.engine vllm and moe.rollout_routing true)"
            )
        routes: dict = {}
        rollout_replay = batch.routes if moe.routing_replay == "rollout" else None
        clock = time.perf_counter()
        single_pass = self.single_pass(len(batch))
        timings = {}
        if single_pass:  # the update's own pass yields the old log-probs and routes (see single_pass)
            old_logp = None
        else:
            self.model.eval()
            old_logp = self.score(self.model, batch, routes, replay=rollout_replay)
            self.model.train()
            timings["time/train/old_logprobs"] = time.perf_counter() - clock
        replay = {"none": None, "trainer": routes.get("own"), "rollout": rollout_replay}[moe.routing_replay]
        clock = time.perf_counter()
        ref_logp = self.score(self.reference, batch) if self.reference is not None else None
        if ref_logp is not None:
            timings["time/train/ref_logprobs"] = time.perf_counter() - clock
        metrics: dict[str, list[float]] = {}
        is_weights = (
            truncated_is_weights(old_logp, batch.rollout_logp, self.algo.tis_cap)
            if self.algo.tis_cap and old_logp is not None
            else None
        )
        mask = mask_truncated(batch.mask, batch.truncated) if self.algo.overlong_mask else batch.mask
        batch = dataclasses.replace(
            batch, old_logp=old_logp, ref_logp=ref_logp, is_weights=is_weights, loss_mask=mask, replay=replay
        )
        size = self.train_cfg.minibatch_size or len(batch)  # null: one update on the whole batch
        seen = _SinglePass(batch.mask.shape, len(self.routing), self.routing.top_k) if single_pass else None
        # aux_free's rate is per RL step, spread over its optimizer steps: how fast the load evens out must
        # not hang on how many minibatches dynamic sampling left (an easy task keeps few groups).
        bias_step = moe.bias_update_rate / max(1, self.train_cfg.ppo_epochs * math.ceil(len(batch) / size))
        for _ in range(self.train_cfg.ppo_epochs):
            order = torch.randperm(len(batch))
            for start in range(0, len(batch), size):
                idx = order[start : start + size]
                stats = self._update(batch.select(idx), seen=seen, rows=idx, bias_step=bias_step)
                for key, value in stats.items():
                    metrics.setdefault(key, []).append(float(value))
        if seen is not None:
            old_logp = distributed.all_reduce_sum(seen.logp)
            if len(self.routing):
                routes["own"] = (distributed.all_reduce_sum((seen.own + 1).int()) - 1).to(torch.int16)
                routes["entropy"] = distributed.all_reduce_sum(seen.entropy)
        for key, value in logprob_mismatch(old_logp, batch.rollout_logp, batch.mask).items():
            metrics.setdefault(f"rollout/{key}", []).append(value)
        for key, value in timings.items():
            metrics[key] = [value]
        self.step += 1
        if self.algo.ref_refresh_every and self.step % self.algo.ref_refresh_every == 0:
            self.refresh_reference()
        out = {k: float(np.sum(v) if k.startswith("time/") else np.mean(v)) for k, v in metrics.items()}
        out["lr"] = self.scheduler.get_last_lr()[0]
        if "own" in routes:
            out.update(
                routing_metrics(
                    self.routing,
                    batch.mask.bool(),
                    routes["own"],
                    routes["entropy"],
                    batch.routes,
                    with_bias=self.moe.balance == "aux_free",
                )
            )
        return out

    def single_pass(self, rows: int) -> bool:
        """Whether a step of ``rows`` completions takes one update on all of them, so that the
        policy's log-probs before it are those of the update's own forward, detached (the ratio is 1
        by construction): no separate old-log-prob pass is needed. Not with dropout (the update runs
        in training mode) nor with replay of the trainer's own routes (taken by that pass)."""
        cfg = self.train_cfg
        dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules()) or any(
            float(getattr(self.model.config, k, 0) or 0) > 0 for k in ("attention_dropout", "hidden_dropout")
        )
        return (
            cfg.single_pass
            and cfg.ppo_epochs == 1
            and (cfg.minibatch_size is None or rows <= cfg.minibatch_size)
            and not dropout
            and self.moe.routing_replay != "trainer"
        )

    def _update(self, minibatch: RolloutBatch, seen=None, rows=None, bias_step=0.0) -> dict[str, float]:
        """One optimizer step on a minibatch: gradients accumulated over its micro-batches, each loss
        divided by the whole minibatch's tokens or completions (``normaliser``). ``minibatch.old_logp``
        None: the single-pass step (``single_pass``), whose old log-probs, routes and importance
        weights come from this pass and are kept in ``seen`` at the batch's ``rows``. ``bias_step``:
        how far aux_free moves each expert's bias after this optimizer step."""
        algo = self.algo
        moe = self.moe
        mask = minibatch.loss_mask
        denominator = normaliser(mask, algo.loss_agg)
        completion_tokens = float(mask.bool().sum()) or 1.0
        router_losses = len(self.routing) > 0 and (moe.z_loss_coef > 0 or moe.balance == "aux_loss")
        counts = torch.zeros(len(self.routing), self.routing.num_experts)
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        seconds = {"time/train/forward_backward": 0.0}
        for micro, widest in self._micro_batches(minibatch):
            if micro is None:
                self._empty_pass(self.model, widest, backward=True)
                continue
            part = minibatch.select(micro).trimmed().to(self.device)
            width = part.mask.shape[1]
            routing = (
                self._routing_pass(part, part.replay, router_losses) if len(self.routing) else contextlib.nullcontext()
            )
            with routing as record:
                t_pass = time.perf_counter()
                logp, entropy = self._logprobs(self.model, part, with_entropy=True, widest=widest)
                part_mask = part.loss_mask
                if part.old_logp is None:
                    at = rows[micro]
                    seen.logp[at, :width] = logp.detach().float().cpu()
                    old = logp.detach()
                    weights = (
                        truncated_is_weights(old, part.rollout_logp, self.algo.tis_cap) if self.algo.tis_cap else None
                    )
                    part = dataclasses.replace(part, old_logp=old, is_weights=weights)
                loss, stats = self._loss(logp, part, entropy, denominator)
                if record is not None and record.losses:  # per layer (z, aux), each a mean over the part's tokens
                    z, aux = torch.stack(record.losses).mean(0)
                    share = float(part_mask.bool().sum()) / completion_tokens  # of the minibatch's tokens
                    loss = loss + share * (
                        moe.z_loss_coef * z + (moe.aux_loss_coef * aux if moe.balance == "aux_loss" else 0.0)
                    )
                    stats["moe/z_loss"], stats["moe/aux_loss"] = float(z.detach()), float(aux.detach())
                loss.backward()
                seconds["time/train/forward_backward"] += time.perf_counter() - t_pass
            if record is not None and seen is not None:
                seen.own[rows[micro], :width] = self._own_routes(record, len(micro), width + 1)
                seen.entropy += torch.tensor(record.entropy)
            if record is not None and moe.balance == "aux_free":
                own = self._own_routes(record, len(micro), width + 1)[part_mask.bool().cpu()]
                counts += count_experts(own, self.routing.num_experts)
            stats["loss"] = float(loss.detach())
            parts.append((stats, float(part_mask.sum()), float(part_mask.bool().any(-1).sum())))
        clock = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_params(self.model), self.train_cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor when sharded: the norm over every rank's shard
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        seconds["time/train/optimizer"] = time.perf_counter() - clock
        if moe.balance == "aux_free" and len(self.routing):
            self.routing.set_bias(aux_free_update(self.routing.bias, distributed.all_reduce_sum(counts), bias_step))
        parts = [p for rank_parts in distributed.all_objects(parts) for p in rank_parts]
        return {**combine_micro_batch_metrics(parts), "grad_norm": float(grad_norm), **seconds}

    def _loss(self, logp, part: RolloutBatch, entropy, denominator):
        algo = self.algo
        return policy_loss(
            logp,
            part.old_logp,
            part.advantages,
            part.loss_mask,
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            dual_clip=algo.dual_clip,
            ratio_level=algo.ratio_level,
            loss_agg=algo.loss_agg,
            norm_constant=float(self.max_new_tokens),
            ref_logp=None if algo.kl_in_reward else part.ref_logp,
            kl_coef=0.0 if algo.kl_in_reward else algo.kl_coef,
            kl_estimator=algo.kl_estimator,
            entropy=entropy,
            entropy_coef=algo.entropy_coef,
            is_weights=part.is_weights,
            denominator=denominator,
        )

    def sequence_kl(self, batch: RolloutBatch) -> list[float]:
        """Summed per-token KL estimate to the reference, per completion (``algo.kl_in_reward``)."""
        if self.reference is None:
            return [0.0] * len(batch)
        ref = self.score(self.reference, batch)
        logp = self.score(self.model, batch)
        return (kl_estimate(logp, ref, self.algo.kl_estimator) * batch.mask).sum(-1).tolist()

    # -- checkpoints ---------------------------------------------------------------------------
    def save(
        self, path: str | Path, extra_state: dict | None = None, extra_files: dict[str, bytes] | None = None
    ) -> Path:
        """Write a complete checkpoint at ``path``, or none: everything goes to ``path.tmp``, is
        fsynced, and only then renamed to ``path`` (see ``rlwhf.checkpoints``). The weights and the
        optimizer state are saved whole (gathered onto rank 0 when sharded: every rank calls this),
        so a run resumes onto any number of ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = self.full_state_dict()
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=whole)
        reference = None
        if self.reference is not None:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict

            reference = (
                get_model_state_dict(self.reference, options=whole)
                if self.mesh is not None
                else {k: v.cpu() for k, v in self.reference.state_dict().items()}
            )
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
        torch.save(
            {
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "reference": reference,
                "rng": rng,
                "step": self.step,
                "routing_bias": self.routing.bias if len(self.routing) else None,
            },
            tmp / "trainer_state.pt",
        )
        if self.bias_for_engines() is not None:  # the engines and the next trainer read it beside the weights
            torch.save(self.routing.bias, tmp / ROUTING_BIAS_FILE)
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
        if state.get("routing_bias") is not None:
            self.routing.set_bias(state["routing_bias"])
