"""MoE routing under rlwhf's control, on the trainer's side (and on the transformers rollout engine).

Every router of the model is found by what it is (a module with a ``[num_experts, hidden]`` weight,
``top_k`` and ``num_experts``), not by its name, and its forward is replaced by one that computes the
same thing as transformers' for the two kinds rlwhf steers:

* ``softmax`` (Qwen3-MoE, Mixtral): scores = softmax(logits); top-k; renormalised when the model's
  ``norm_topk_prob`` says so (Mixtral's router always renormalises: ``ALWAYS_RENORMALISED``).
* ``sigmoid`` (DeepSeek-V3): scores = sigmoid(logits); top-k of ``scores + e_score_correction_bias``
  within the best groups; weights from the unbiased scores, renormalised, times ``routed_scaling_factor``.

On top of that computation a pass can

* **replay** a selection (``replay``: ``[rows, layers, k]``, -1 where the router chooses itself): the
  experts are the given ones, their gate weights still come from the current router, so it keeps
  learning (routing replay, R2/R3);
* **bias the selection** (``bias``: ``[layers, experts]``, auxiliary-loss-free balancing): for the
  softmax kind the bias is rlwhf's own, held here and never written into the model's weights (the HF
  checkpoint format stays Qwen3-MoE's; the bias travels to the rollout engines with the weights and is
  saved beside them); for the sigmoid kind it *is* the model's ``e_score_correction_bias`` buffer;
* **record** each layer's own choice and the one used, the router's entropy, and the router losses
  (z-loss, the switch-style auxiliary loss) over the positions ``mask`` selects.

Routers of other kinds keep transformers' forward; their choices are still recorded, but replay and
balancing refuse them with an error that names the module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

# ``moe`` settings that replay nothing, balance nothing and leave the routers trainable (what
# rlwhf.config.MoEConfig's defaults do), for callers without a recipe.
NO_MOE_CONTROLS = SimpleNamespace(
    routing_replay="none",
    balance="none",
    bias_update_rate=0.0,
    aux_loss_coef=0.0,
    z_loss_coef=0.0,
    freeze_router=False,
    rollout_routing=False,
)

ROUTING_BIAS_FILE = "routing_bias.pt"  # beside a checkpoint's weights: the softmax kind's selection bias


def find_routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every MoE router of ``model`` in layer order, by module type (see the module docstring)."""
    found = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        experts = getattr(module, "num_experts", None)
        if (
            isinstance(weight, nn.Parameter)
            and weight.dim() == 2
            and isinstance(getattr(module, "top_k", None), int)
            and isinstance(experts, int)
            and weight.shape[0] == experts
        ):
            found.append((name, module))
    return found


# Softmax routers that always renormalise their top-k weights and so carry no ``norm_topk_prob`` flag.
ALWAYS_RENORMALISED = ("MixtralTopKRouter",)


def router_kind(module: nn.Module) -> str | None:
    if isinstance(getattr(module, "e_score_correction_bias", None), torch.Tensor):
        return "sigmoid"
    if hasattr(module, "norm_topk_prob") or type(module).__name__ in ALWAYS_RENORMALISED:
        return "softmax"
    return None


def freeze_routers(model: nn.Module) -> int:
    """Keep every router's weight fixed; refuse a model without routers rather than do nothing."""
    routers = find_routers(model)
    if not routers:
        raise ValueError(
            f"moe.freeze_router: {type(model).__name__} has no MoE router (looked for modules with a "
            "[num_experts, hidden] weight, top_k and num_experts)"
        )
    for _, module in routers:
        module.weight.requires_grad_(False)
    return len(routers)


@dataclass
class PassRecord:
    """What one forward pass routed, per layer, at the positions of its mask."""

    own: list[torch.Tensor | None] = field(default_factory=list)  # [rows, k]: the router's own top-k (all rows)
    entropy: list[float] = field(default_factory=list)  # summed over masked rows
    losses: list[torch.Tensor] = field(default_factory=list)  # per layer: (z-loss, aux-loss), masked means


class Routing:
    def __init__(self, model: nn.Module):
        self.routers = find_routers(model)
        self.kinds = [router_kind(m) for _, m in self.routers]
        first = self.routers[0][1] if self.routers else None
        self.num_experts = first.num_experts if first is not None else 0
        self.top_k = first.top_k if first is not None else 0
        if any(m.num_experts != self.num_experts or m.top_k != self.top_k for _, m in self.routers):
            raise ValueError("routers with different numbers of experts or top-k in one model are not supported")
        # The softmax kind's selection bias; the sigmoid kind's lives in the model (see ``bias``).
        self._own_bias = torch.zeros(len(self.routers), self.num_experts)
        self.replay: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.record: PassRecord | None = None
        self.with_losses = False
        for i, (_, module) in enumerate(self.routers):
            if self.kinds[i] is not None:
                module.forward = self._forward_of(i, module)
            else:
                module.register_forward_hook(self._hook_of(i, module))

    def __len__(self) -> int:
        return len(self.routers)

    def require_steerable(self, what: str) -> None:
        for (name, module), kind in zip(self.routers, self.kinds):
            if kind is None:
                raise ValueError(
                    f"{what}: the router {name} ({type(module).__name__}) is not one rlwhf can steer "
                    "(softmax top-k like Qwen3-MoE, or DeepSeek-V3's sigmoid with a correction bias)"
                )
        if not self.routers:
            raise ValueError(f"{what}: the model has no MoE router")

    # -- the selection bias ------------------------------------------------------------------
    @property
    def bias_is_external(self) -> bool:
        """True when the bias is rlwhf's own (softmax kind), not a buffer of the model."""
        return "sigmoid" not in self.kinds

    @property
    def bias(self) -> torch.Tensor:
        """``[layers, experts]`` selection bias, on the CPU (a copy)."""
        if self.bias_is_external:
            return self._own_bias.clone()
        return torch.stack([m.e_score_correction_bias.detach().float().cpu() for _, m in self.routers])

    def set_bias(self, bias: torch.Tensor) -> None:
        bias = bias.detach().float().cpu()
        if tuple(bias.shape) != (len(self), self.num_experts):
            raise ValueError(
                f"routing bias of shape {tuple(bias.shape)}; this model needs ({len(self)}, {self.num_experts})"
            )
        if self.bias_is_external:
            self._own_bias = bias.clone()
        else:
            for row, (_, module) in zip(bias, self.routers):
                module.e_score_correction_bias.copy_(row.to(module.e_score_correction_bias))

    # -- a pass ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def pass_(self, mask: torch.Tensor | None = None, replay: torch.Tensor | None = None, losses: bool = False):
        """Route one forward (and its backward's recomputations) over ``[B, T]`` inputs: record at the
        positions ``mask [B, T]`` selects, replay ``replay [B, T, layers, k]`` (-1: the router's own
        choice), collect the router losses when ``losses``. Yields the ``PassRecord``."""
        self.mask = None if mask is None else mask.reshape(-1).bool()
        self.replay = None if replay is None else replay.reshape(-1, *replay.shape[2:]).long()
        record = PassRecord([None] * len(self), [0.0] * len(self), [])
        self.record, self.with_losses = record, losses
        try:
            yield record
        finally:
            self.mask = self.replay = self.record = None
            self.with_losses = False

    def _select(self, layer: int, own: torch.Tensor) -> torch.Tensor:
        if self.replay is None:
            return own
        given = self.replay[:, layer].to(own.device)
        return torch.where((given >= 0).all(-1, keepdim=True), given, own)

    def _forward_of(self, layer: int, module: nn.Module):
        kind = self.kinds[layer]

        def forward(hidden_states):
            h = hidden_states.reshape(-1, module.weight.shape[1])
            if kind == "softmax":
                logits = F.linear(h, module.weight)
                scores = torch.softmax(logits, dim=-1, dtype=torch.float)
                choice = scores + self._own_bias[layer].to(scores.device)
            else:
                logits = F.linear(h.float(), module.weight.float())
                scores = logits.sigmoid()
                choice = _group_limited(scores + module.e_score_correction_bias, module)
            own = torch.topk(choice, module.top_k, dim=-1)[1]
            selected = self._select(layer, own)
            weights = scores.gather(1, selected)
            if kind == "softmax":
                if getattr(module, "norm_topk_prob", True):  # Mixtral's router has no flag: it always does
                    weights = weights / weights.sum(dim=-1, keepdim=True)
                weights = weights.to(logits.dtype)
            else:
                if module.norm_topk_prob:
                    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
                weights = weights * module.routed_scaling_factor
            self._observe(layer, own, logits, scores, kind)
            return logits, weights, selected

        return forward

    def _hook_of(self, layer: int, module: nn.Module):
        def hook(mod, inputs, output):
            if self.record is not None:
                self.record.own[layer] = output[-1].detach().reshape(-1, mod.top_k)

        return hook

    def _observe(self, layer: int, own, logits, scores, kind) -> None:
        record = self.record
        if record is None:
            return
        record.own[layer] = own.detach()
        mask = (
            self.mask.to(scores.device)
            if self.mask is not None
            else torch.ones(len(scores), dtype=torch.bool, device=scores.device)
        )
        probs = scores if kind == "softmax" else scores / scores.sum(-1, keepdim=True).clamp(min=1e-20)
        with torch.no_grad():
            entropy = -(probs[mask] * probs[mask].clamp(min=1e-20).log()).sum(-1)
            record.entropy[layer] = float(entropy.sum())
        if self.with_losses and torch.is_grad_enabled():
            count = mask.sum().clamp(min=1)
            z = (torch.logsumexp(logits.float()[mask], dim=-1) ** 2).sum() / count
            # Switch-style balance: experts' share of the top-k slots (no gradient) times their mean score.
            share = torch.bincount(own[mask].flatten(), minlength=self.num_experts).float() / (count * self.top_k)
            aux = self.num_experts * (share.detach() * probs[mask].sum(0) / count).sum()
            record.losses.append(torch.stack([z, aux]))


def _group_limited(choice: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """DeepSeek-V3's node-limited routing: only the ``topk_group`` best groups of experts compete."""
    groups = getattr(module, "num_group", 1) or 1
    if groups <= 1:
        return choice
    per_group = choice.view(-1, groups, choice.shape[-1] // groups)
    best = per_group.topk(2, dim=-1)[0].sum(-1).topk(module.topk_group, dim=-1, sorted=False)[1]
    keep = torch.zeros_like(per_group[..., 0]).scatter_(1, best, 1).bool()
    return choice.masked_fill(~keep.repeat_interleave(choice.shape[-1] // groups, dim=1), float("-inf"))


def write_start_skew(model_dir: str | Path, skew: float, base: torch.Tensor | None = None) -> torch.Tensor:
    """Make the policy in ``model_dir`` start imbalanced on purpose (``moe.start_skew``): ``skew`` added
    to the selection bias (``base``, the policy's own; zeros when None) of the first top-k experts of
    every layer, written beside its weights, where the trainer and the vLLM engine read a checkpoint's
    bias. Returns it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        routing = Routing(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))
    if not len(routing) or not routing.bias_is_external or None in routing.kinds:
        raise ValueError(
            f"moe.start_skew: {model_dir} is not a softmax-routed MoE model (Qwen3-MoE-like); its "
            "routers take no rlwhf selection bias"
        )
    bias = torch.zeros(len(routing), routing.num_experts) if base is None else base.clone()
    bias[:, : routing.top_k] += skew
    torch.save(bias, Path(model_dir) / ROUTING_BIAS_FILE)
    return bias


def aux_free_update(bias: torch.Tensor, counts: torch.Tensor, rate: float) -> torch.Tensor:
    """DeepSeek-V3's auxiliary-loss-free balancing step (section 2.1.2): each expert's bias moves by
    ``rate`` against the sign of its load error; ``counts [layers, experts]`` are the top-k slots each
    expert took. An expert at exactly the mean load keeps its bias."""
    mean = counts.sum(-1, keepdim=True) / counts.shape[-1]
    return bias + rate * torch.sign(mean - counts)


def load_ratios(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer: the busiest and the idlest expert's load over the mean load."""
    share = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    mean = share.mean(-1).clamp(min=1e-12)
    return share.max(-1).values / mean, share.min(-1).values / mean


def count_experts(routes: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``routes [rows, layers, k]`` (-1: none) -> ``[layers, experts]`` slot counts."""
    layers = routes.shape[1]
    out = torch.zeros(layers, num_experts)
    for layer in range(layers):
        ids = routes[:, layer].flatten()
        out[layer] = torch.bincount(ids[ids >= 0].long(), minlength=num_experts).float()
    return out


def agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per layer, the share of rows whose top-k *sets* are equal; ``a``, ``b``: ``[rows, layers, k]``.
    Rows where either side is unknown (-1) are left out."""
    known = (a >= 0).all(-1) & (b >= 0).all(-1)  # [rows, layers]
    same = (a.sort(-1).values == b.sort(-1).values).all(-1) & known
    return same.sum(0).float() / known.sum(0).clamp(min=1).float()


def routing_metrics(
    routing: Routing,
    completion: torch.Tensor,
    own: torch.Tensor,
    entropy: torch.Tensor,
    theirs: torch.Tensor | None,
    with_bias: bool = False,
) -> dict[str, float]:
    """A step's MoE telemetry over its ``completion [N, L-1]`` tokens: each side's expert load (the
    trainer's choices ``own`` and, when the engine recorded them, the rollout's ``theirs``, both
    ``[N, L-1, layers, k]``), the busiest and idlest expert over the mean, router entropy (``entropy``
    summed per layer over the pass), how often both sides chose the same top-k set, and with
    ``with_bias`` (aux_free) the selection bias's mean size."""
    own = own[completion]  # [tokens, layers, k]
    counts = count_experts(own, routing.num_experts)
    out = {}
    for layer, row in enumerate(counts / counts.sum(-1, keepdim=True).clamp(min=1)):
        out.update({f"moe/load/L{layer}/E{e}": float(v) for e, v in enumerate(row)})
    high, low = load_ratios(counts)
    out["moe/max_load_ratio"], out["moe/min_load_ratio"] = float(high.mean()), float(low.mean())
    out["moe/router_entropy"] = float(entropy.sum() / max(1, len(own) * len(routing)))
    if with_bias:
        out["moe/bias_abs_mean"] = float(routing.bias.abs().mean())
    if theirs is not None:
        theirs = theirs[completion]
        counts = count_experts(theirs, routing.num_experts)
        for layer, row in enumerate(counts / counts.sum(-1, keepdim=True).clamp(min=1)):
            out.update({f"moe/rollout_load/L{layer}/E{e}": float(v) for e, v in enumerate(row)})
        high, low = load_ratios(counts)
        out["moe/rollout_max_load_ratio"], out["moe/rollout_min_load_ratio"] = float(high.mean()), float(low.mean())
        agree = agreement(own, theirs)
        out["moe/routing_agreement"] = float(agree.mean())
        out.update({f"moe/routing_agreement/L{layer}": float(v) for layer, v in enumerate(agree)})
    return out
