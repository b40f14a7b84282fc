"""Sparse upcycling: a dense Llama-architecture model made into a Mixtral-architecture MoE whose experts
start as copies of the dense feed-forward block (Komatsuzaki et al., 2022, "Sparse Upcycling").

Mixtral is Llama with each feed-forward block replaced by ``E`` experts of the same shape and a
linear router whose softmax's top-k weights are renormalised to sum to 1. With every expert equal
to the dense block, ``sum_k w_k f(x) = f(x)`` whatever the router chooses, so the upcycled model
computes what the dense one did (to float rounding) and RL starts from its pretrained knowledge.

How the copies may diverge:

- ``router_init="normal"`` (default): the router starts random (``router_std``), so tokens go to
  different experts from the first step and each copy is trained on its own tokens; the start stays
  exact. ``"zeros"``: every expert scores the same and the ties go to the first k (the router then
  learns only once the experts differ).
- ``noise``: each copy's weights perturbed by Gaussian noise of ``noise`` times that weight's own
  standard deviation (the start is then no longer exact).
- ``reinit_fraction``: drop-upcycling (Nguyen et al., 2025): in each copy a different random share of
  the hidden neurons (rows of gate and up, columns of down) re-drawn from a normal distribution with
  that weight's statistics; not exact either.

Llama and Mistral (no attention or MLP biases) map exactly; other architectures are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rlwhf.models.gguf import cache_root, file_digest, local_model_path

UPCYCLED_FROM = "upcycle.json"
# Bumped when the folder written for the same source and settings changes; older ones are then rebuilt.
UPCYCLE_VERSION = 1
SETTINGS = ("experts", "top_k", "router_init", "router_std", "noise", "reinit_fraction", "seed")
SUPPORTED = ("llama", "mistral")


@dataclasses.dataclass
class Upcycled:
    out: Path
    experts: int
    top_k: int
    total_params: int
    active_params: int
    dense_params: int


def _moe_config(dense, experts: int, top_k: int, router_jitter: float = 0.0):
    from transformers import MixtralConfig

    if dense.model_type not in SUPPORTED:
        raise ValueError(
            f"upcycle makes Mixtral-architecture MoEs from dense {' or '.join(SUPPORTED)} models, which "
            f"map exactly; this model is {dense.model_type!r}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(dense, flag, False):
            raise ValueError(f"this {dense.model_type} model has {flag}=true, which Mixtral's layers do not have")
    if not 1 <= top_k <= experts:
        raise ValueError(f"--top-k must be between 1 and --experts ({experts}); got {top_k}")
    rope = getattr(dense, "rope_parameters", None) or {"rope_type": "default", "rope_theta": dense.rope_theta}
    return MixtralConfig(
        vocab_size=dense.vocab_size,
        hidden_size=dense.hidden_size,
        intermediate_size=dense.intermediate_size,
        num_hidden_layers=dense.num_hidden_layers,
        num_attention_heads=dense.num_attention_heads,
        num_key_value_heads=dense.num_key_value_heads,
        head_dim=getattr(dense, "head_dim", None),
        hidden_act=dense.hidden_act,
        max_position_embeddings=dense.max_position_embeddings,
        rms_norm_eps=dense.rms_norm_eps,
        rope_parameters=dict(rope),
        tie_word_embeddings=dense.tie_word_embeddings,
        bos_token_id=dense.bos_token_id,
        eos_token_id=dense.eos_token_id,
        pad_token_id=dense.pad_token_id,
        sliding_window=getattr(dense, "sliding_window", None),
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        router_jitter_noise=router_jitter,
        output_router_logits=False,
    )


def _perturbed(weight: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    return weight + noise * weight.std() * torch.randn(weight.shape, generator=gen)


def upcycle(
    source: str | Path,
    out: str | Path,
    *,
    experts: int = 8,
    top_k: int = 2,
    router_init: str = "normal",
    router_std: float = 0.02,
    noise: float = 0.0,
    reinit_fraction: float = 0.0,
    seed: int = 0,
) -> Upcycled:
    """Write the upcycled MoE of the dense model folder ``source`` to ``out`` (weights, config, the
    tokenizer, generation config, ``upcycle.json`` and a model card); see the module docstring."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, MixtralForCausalLM

    if router_init not in ("normal", "zeros"):
        raise ValueError(f"--router-init {router_init!r}: expected 'normal' or 'zeros'")
    if noise < 0 or not 0.0 <= reinit_fraction <= 1.0:
        raise ValueError(f"--noise must be >= 0 and --reinit-fraction in [0, 1]; got {noise} and {reinit_fraction}")
    source, out = Path(source), Path(out)
    config = _moe_config(AutoConfig.from_pretrained(source), experts, top_k)
    dense = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    weights = dense.state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in weights.items() if ".mlp." not in k}
    hidden = config.intermediate_size
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp."
        gate, up, down = (weights[f"{prefix}{name}.weight"] for name in ("gate_proj", "up_proj", "down_proj"))
        gate_up, downs = [], []
        for _ in range(experts):
            g, u, d = gate.clone(), up.clone(), down.clone()
            if noise:
                g, u, d = (_perturbed(w, noise, gen) for w in (g, u, d))
            if reinit_fraction:
                rows = torch.randperm(hidden, generator=gen)[: round(reinit_fraction * hidden)]
                for w in (g, u):
                    w[rows] = w.mean() + w.std() * torch.randn((len(rows), w.shape[1]), generator=gen)
                d[:, rows] = d.mean() + d.std() * torch.randn((d.shape[0], len(rows)), generator=gen)
            gate_up.append(torch.cat([g, u], dim=0))
            downs.append(d)
        state[f"{prefix}experts.gate_up_proj"] = torch.stack(gate_up)
        state[f"{prefix}experts.down_proj"] = torch.stack(downs)
        router = torch.zeros(experts, config.hidden_size)
        if router_init == "normal":
            router = router_std * torch.randn(router.shape, generator=gen)
        state[f"{prefix}gate.weight"] = router
    with torch.device("meta"):
        moe = MixtralForCausalLM(config)
    moe.load_state_dict(state, strict=False, assign=True)
    missing = {name for name, p in moe.named_parameters() if p.is_meta}
    if missing:
        raise RuntimeError(f"upcycling left parameters unset: {sorted(missing)[:5]}")
    if config.tie_word_embeddings:
        moe.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    moe.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    try:
        GenerationConfig.from_pretrained(source).save_pretrained(out)
    except OSError:  # the source has none
        pass
    expert_params = sum(
        p.numel() for name, p in moe.named_parameters() if ".experts." in name
    )  # every expert of every layer
    total = sum(p.numel() for p in moe.parameters())
    active = total - expert_params + expert_params * top_k // experts
    made = Upcycled(out, experts, top_k, total, active, sum(p.numel() for p in dense.parameters()))
    info = {
        "source": str(source.resolve()),
        "source_model_type": dense.config.model_type,
        "experts": experts,
        "top_k": top_k,
        "router_init": router_init,
        "router_std": router_std if router_init == "normal" else None,
        "noise": noise,
        "reinit_fraction": reinit_fraction,
        "seed": seed,
        "dense_params": made.dense_params,
        "total_params": total,
        "active_params": active,
    }
    (out / UPCYCLED_FROM).write_text(json.dumps(info, indent=2))
    (out / "README.md").write_text(_card(info))
    return made


def _card(info: dict) -> str:
    exact = info["noise"] == 0 and info["reinit_fraction"] == 0
    return (
        f"# Upcycled MoE ({info['experts']} experts, top-{info['top_k']})\n\n"
        f"Made by `rlwhf upcycle` from the dense {info['source_model_type']} model at `{info['source']}`: "
        "a Mixtral-architecture model whose every feed-forward block became "
        f"{info['experts']} experts, each a copy of the dense block"
        + (
            " (no perturbation: it computes what the dense model computed, to float rounding)"
            if exact
            else f" (perturbed: noise {info['noise']}, re-initialised share {info['reinit_fraction']})"
        )
        + f", and a router initialised `{info['router_init']}`.\n\n"
        f"Parameters: {info['total_params']:,} in all, {info['active_params']:,} active per token "
        f"(the dense model: {info['dense_params']:,}). Settings: `{UPCYCLED_FROM}`.\n"
    )


def _settings(spec) -> dict:
    return {k: getattr(spec, k) for k in SETTINGS} if not isinstance(spec, dict) else {k: spec[k] for k in SETTINGS}


def upcycled_config(dense_config, spec):
    """The config of the MoE that ``spec`` (``model.upcycle``) makes of a model with ``dense_config``,
    without making it (``rlwhf plan``)."""
    return _moe_config(dense_config, spec.experts, spec.top_k)


def upcycled_dir(source: str | Path, spec, say: Callable[[str], None] = print) -> Path:
    """The upcycled MoE of the dense folder ``source`` with ``spec``'s settings (``model.upcycle``),
    made on first use and cached by the source's weights and the settings."""
    source, settings = Path(source), _settings(spec)
    key = hashlib.sha256()
    for file in sorted(source.glob("*.safetensors")) + [source / "config.json"]:
        key.update(file_digest(file).encode())
    key.update(json.dumps([settings, UPCYCLE_VERSION], sort_keys=True).encode())
    target = cache_root() / "upcycled" / key.hexdigest()[:24]
    if (target / UPCYCLED_FROM).is_file():
        return target
    t0 = time.perf_counter()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    made = upcycle(source, tmp, **settings)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process made the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    say(
        f"model.upcycle: {source} made into a Mixtral-architecture MoE, {made.experts} experts per layer, "
        f"top-{made.top_k} ({made.total_params:,} parameters, {made.active_params:,} active) in {target} "
        f"({time.perf_counter() - t0:.0f} s; cached)"
    )
    return target


def policy_path(model, say: Callable[[str], None] = print) -> str:
    """A recipe's ``model`` section as the folder (or Hub id, or 'tiny') the trainer and vLLM load: a
    GGUF file converted, then upcycled when ``model.upcycle`` asks."""
    path = local_model_path(model.path, say=say)
    if getattr(model, "upcycle", None) is None:
        return path
    return str(upcycled_dir(path, model.upcycle, say=say))
