"""The policy trainer: log-probs under the current policy and clipped policy-gradient updates.

A plain class; ``rlwhf.workers`` wraps it in a Ray actor. It owns the model, the optimizer, the
optional frozen reference model and checkpoints (HF ``save_pretrained`` + optimizer + RNG).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from rlwhf.algo import (
    entropy_from_logits,
    kl_estimate,
    logprob_mismatch,
    mask_truncated,
    policy_loss,
    truncated_is_weights,
)
from rlwhf.config import AlgoConfig, TrainConfig
from rlwhf.train.batch import RolloutBatch


def token_logprobs(model, batch: RolloutBatch, temperature: float, with_entropy: bool = False):
    """Log-prob of each next token (``[N, L-1]``), and optionally each position's entropy."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    if temperature > 0:
        logits = logits / temperature
    targets = batch.input_ids[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp, entropy_from_logits(logits)) if with_entropy else (logp, None)


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
            chosen = output[-1].reshape(-1, module.top_k)[self._positions]
            self.counts[layer] += torch.bincount(chosen.flatten(), minlength=module.num_experts).float()
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


class PolicyTrainer:
    def __init__(self, model_path: str, algo: AlgoConfig, train: TrainConfig, *, temperature: float,
                 max_new_tokens: int, seed: int = 0, dtype: str = "float32"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if train.threads:
            torch.set_num_threads(train.threads)
        torch.manual_seed(seed)
        self.algo, self.train_cfg, self.temperature = algo, train, temperature
        self.max_new_tokens = max_new_tokens  # Dr. GRPO's constant normaliser: the generation budget
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.config.output_router_logits = False
        self.model.train()
        self.reference = None
        if algo.kl_coef > 0:  # kl_coef == 0 loads no reference model at all
            self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
            self.reference.requires_grad_(False)
        if train.freeze_router:
            for name, param in self.model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    param.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(trainable_params(self.model), lr=train.learning_rate,
                                           weight_decay=train.weight_decay,
                                           betas=(0.9, 0.99), eps=train.adam_eps)
        warmup = max(1, train.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.step = 0

    # -- weights ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def refresh_reference(self) -> None:
        if self.reference is not None:
            self.reference.load_state_dict(self.model.state_dict())

    # -- one GRPO update ---------------------------------------------------------------------
    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates over one step's rollouts; returns mean metrics."""
        load = ExpertLoad(self.model)
        with torch.no_grad():
            self.model.eval()
            old_logp, _ = load.measure(lambda: token_logprobs(self.model, batch, self.temperature), batch.mask)
            ref_logp = token_logprobs(self.reference, batch, self.temperature)[0] if self.reference is not None else None
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
                mb = batch.select(idx)
                logp, entropy = token_logprobs(self.model, mb, self.temperature, with_entropy=True)
                loss, stats = policy_loss(
                    logp, old_logp[idx], mb.advantages, mask[idx],
                    clip_low=self.algo.clip_low, clip_high=self.algo.clip_high, dual_clip=self.algo.dual_clip,
                    ratio_level=self.algo.ratio_level, aggregation=self.algo.loss_agg,
                    norm_constant=float(self.max_new_tokens),
                    ref_logp=None if ref_logp is None or self.algo.kl_in_reward else ref_logp[idx],
                    kl_coef=0.0 if self.algo.kl_in_reward else self.algo.kl_coef,
                    kl_estimator=self.algo.kl_estimator,
                    entropy=entropy, entropy_coef=self.algo.entropy_coef,
                    is_weights=None if is_weights is None else is_weights[idx],
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable_params(self.model), self.train_cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                stats["loss"] = float(loss.detach())
                stats["grad_norm"] = float(grad_norm)
                for key, value in stats.items():
                    metrics.setdefault(key, []).append(float(value))
        self.step += 1
        if self.algo.ref_refresh_every and self.step % self.algo.ref_refresh_every == 0:
            self.refresh_reference()
        out = {k: float(np.mean(v)) for k, v in metrics.items()}
        out["lr"] = self.scheduler.get_last_lr()[0]
        out.update(load.metrics())
        return out

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Reference log-probs for folding KL into the reward (``algo.kl_in_reward``)."""
        if self.reference is None:
            return None
        with torch.no_grad():
            return token_logprobs(self.reference, batch, self.temperature)[0]

    def sequence_kl(self, batch: RolloutBatch) -> list[float]:
        """Summed per-token KL estimate to the reference, per completion (``algo.kl_in_reward``)."""
        ref = self.reference_logprobs(batch)
        if ref is None:
            return [0.0] * len(batch)
        with torch.no_grad():
            logp, _ = token_logprobs(self.model, batch, self.temperature)
        return (kl_estimate(logp, ref, self.algo.kl_estimator) * batch.mask).sum(-1).tolist()

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | Path, extra_state: dict | None = None, extra_files: dict[str, bytes] | None = None) -> Path:
        """Write a complete checkpoint at ``path``, or none: everything goes to ``path.tmp``, is
        fsynced, and only then renamed to ``path`` (see ``rlwhf.checkpoints``)."""
        from rlwhf.checkpoints import commit_directory, fault_point

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        torch.save({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "reference": self.reference.state_dict() if self.reference is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "step": self.step,
        }, tmp / "trainer_state.pt")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        (tmp / "loop_state.json").write_text(json.dumps(extra_state or {}, indent=2))
        fault_point("save", (extra_state or {}).get("step", -1))
        return commit_directory(tmp, path)

    def load_trainer_state(self, path: str | Path) -> None:
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.reference is not None and state["reference"] is not None:
            self.reference.load_state_dict(state["reference"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.step = state["step"]

