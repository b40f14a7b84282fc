"""Sparse upcycling: a dense Llama- or Qwen2-architecture model made into an MoE whose experts start as
copies of the dense feed-forward block (Komatsuzaki et al., 2022, "Sparse Upcycling").

Mixtral is Llama with each feed-forward block replaced by ``E`` experts of the same shape and a
linear router whose softmax's top-k weights are renormalised to sum to 1. With every expert equal
to the dense block, ``sum_k w_k f(x) = f(x)`` whatever the router chooses, so the upcycled model
computes what the dense one did (to float rounding) and RL starts from its pretrained knowledge.

Which layers (``layers``): every layer of a Llama or Mistral model gives a Mixtral. Mixtral's format
has no dense layers among its MoE ones, so some of the layers ("every-other", "top:N", or a list),
and any Qwen2 model (whose attention has biases), give a Qwen2-MoE: Qwen2's attention (a Llama's with
its biases at zero), MoE blocks with ``norm_topk_prob`` (the same renormalised top-k) and dense
layers where ``mlp_only_layers`` says. Qwen2-MoE's blocks also hold a shared expert beside the
routed ones; rlwhf makes it one neuron wide and all zero, which adds nothing to the output, gets no
gradient (zero is a fixed point of its gradient) and so stays zero; vLLM and transformers both load
the folder as it is. (A width of zero would be cleaner, but transformers then reports the empty
tensors as missing and vLLM refuses them if they are saved.)

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
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rlwhf.models.gguf import cache_root, file_digest, local_model_path

if TYPE_CHECKING:
    import torch

UPCYCLED_FROM = "upcycle.json"
# Bumped when the folder written for the same source and settings changes; older ones are then rebuilt.
UPCYCLE_VERSION = 1
SETTINGS = ("experts", "top_k", "layers", "router_init", "router_std", "noise", "reinit_fraction", "seed")
SUPPORTED = ("llama", "mistral", "qwen2")
ARCHITECTURES = {"mixtral": "Mixtral", "qwen2_moe": "Qwen2-MoE"}  # what upcycling makes, by model_type
SHARED_WIDTH = 1  # Qwen2-MoE's shared expert, kept at zero (module docstring)
LAYER_CHOICES = "'all', 'every-other' (the 2nd, 4th, ...), 'top:N' (the last N) or a list such as '0,2,5'"


@dataclasses.dataclass
class Upcycled:
    out: Path
    experts: int
    top_k: int
    total_params: int
    active_params: int
    dense_params: int
    moe_layers: list[int]
    num_layers: int
    architecture: str


def moe_layers(layers: str | list[int], num_layers: int) -> list[int]:
    """The indices of the layers ``layers`` upcycles (see ``LAYER_CHOICES``) in a model of ``num_layers``."""
    if isinstance(layers, list | tuple):
        chosen = [int(i) for i in layers]
    else:
        text = str(layers).strip().lower()
        if text == "all":
            chosen = list(range(num_layers))
        elif text == "every-other":
            chosen = list(range(1, num_layers, 2))
        elif text.startswith("top:") and text[4:].isdigit():
            chosen = list(range(num_layers - int(text[4:]), num_layers))
        elif re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
            chosen = [int(i) for i in text.split(",")]
        else:
            raise ValueError(f"layers {layers!r}: expected {LAYER_CHOICES}")
    if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= i < num_layers for i in chosen):
        raise ValueError(
            f"layers {layers!r} names layers {chosen}: the model has {num_layers} layers (0 to "
            f"{num_layers - 1}); give at least one, each once"
        )
    return sorted(chosen)


def describe_layers(chosen: list[int], num_layers: int) -> str:
    if len(chosen) == num_layers:
        return f"every one of its {num_layers} layers"
    return f"layers {', '.join(map(str, chosen))} of {num_layers} (the others stay dense)"


def _moe_config(dense, experts: int, top_k: int, layers: str | list[int] = "all"):
    """Mixtral's config when every layer of a Llama or Mistral is upcycled, else Qwen2-MoE's."""
    from transformers import MixtralConfig, Qwen2MoeConfig

    if dense.model_type not in SUPPORTED:
        raise ValueError(
            f"upcycle makes MoEs from dense {', '.join(SUPPORTED)} models, which map exactly; this model is "
            f"{dense.model_type!r}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(dense, flag, False):
            raise ValueError(f"this {dense.model_type} model has {flag}=true, which no MoE layout here has")
    if not 1 <= top_k <= experts:
        raise ValueError(f"--top-k must be between 1 and --experts ({experts}); got {top_k}")
    chosen = moe_layers(layers, dense.num_hidden_layers)
    rope = getattr(dense, "rope_parameters", None) or {"rope_type": "default", "rope_theta": dense.rope_theta}
    both = {  # what the dense model's config says and either MoE layout takes as it is
        name: getattr(dense, name)
        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
        )
    }  # fmt: skip
    both.update(rope_parameters=dict(rope), num_experts_per_tok=top_k, output_router_logits=False)
    if dense.model_type == "qwen2" or len(chosen) < dense.num_hidden_layers:
        if dense.model_type == "mistral" and getattr(dense, "sliding_window", None):
            raise ValueError("upcycling some layers of a Mistral with a sliding window is not mapped; use --layers all")
        if getattr(dense, "head_dim", None) not in (None, dense.hidden_size // dense.num_attention_heads):
            raise ValueError("this model's head_dim is not hidden_size / heads, which vLLM's Qwen2-MoE assumes")
        windowed = dense.model_type == "qwen2" and getattr(dense, "use_sliding_window", False)
        return Qwen2MoeConfig(
            **both,  # its intermediate_size is the dense layers'
            moe_intermediate_size=dense.intermediate_size,
            shared_expert_intermediate_size=SHARED_WIDTH,
            use_sliding_window=windowed,
            sliding_window=getattr(dense, "sliding_window", None) if windowed else None,
            max_window_layers=getattr(dense, "max_window_layers", dense.num_hidden_layers),
            layer_types=getattr(dense, "layer_types", None) if dense.model_type == "qwen2" else None,
            qkv_bias=True,
            num_experts=experts,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(dense.num_hidden_layers) if i not in chosen],
        )
    return MixtralConfig(
        **both,
        head_dim=getattr(dense, "head_dim", None),
        sliding_window=getattr(dense, "sliding_window", None),
        num_local_experts=experts,
    )


def _perturbed(weight: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    import torch

    return weight + noise * weight.std() * torch.randn(weight.shape, generator=gen)


def upcycle(
    source: str | Path,
    out: str | Path,
    *,
    experts: int = 8,
    top_k: int = 2,
    layers: str | list[int] = "all",
    router_init: str = "normal",
    router_std: float = 0.02,
    noise: float = 0.0,
    reinit_fraction: float = 0.0,
    seed: int = 0,
) -> Upcycled:
    """Write the upcycled MoE of the dense model folder ``source`` to ``out`` (weights, config, the
    tokenizer, generation config, ``upcycle.json`` and a model card); see the module docstring."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if router_init not in ("normal", "zeros"):
        raise ValueError(f"--router-init {router_init!r}: expected 'normal' or 'zeros'")
    if noise < 0 or not 0.0 <= reinit_fraction <= 1.0:
        raise ValueError(f"--noise must be >= 0 and --reinit-fraction in [0, 1]; got {noise} and {reinit_fraction}")
    source, out = Path(source), Path(out)
    config = _moe_config(AutoConfig.from_pretrained(source), experts, top_k, layers)
    chosen = moe_layers(layers, config.num_hidden_layers)
    dense = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    weights = dense.state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in weights.items() if ".mlp." not in k}
    hidden = dense.config.intermediate_size
    qwen2_moe = config.model_type == "qwen2_moe"
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp."
        gate, up, down = (weights[f"{prefix}{name}.weight"] for name in ("gate_proj", "up_proj", "down_proj"))
        if qwen2_moe:
            for name in ("q_proj", "k_proj", "v_proj"):  # Llama's attention is Qwen2's with zero biases
                bias = f"model.layers.{layer}.self_attn.{name}.bias"
                state.setdefault(bias, torch.zeros(weights[bias.replace(".bias", ".weight")].shape[0]))
        if layer not in chosen:
            state.update({f"{prefix}gate_proj.weight": gate, f"{prefix}up_proj.weight": up})
            state[f"{prefix}down_proj.weight"] = down
            continue
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
        if qwen2_moe:  # the shared expert, zero (module docstring)
            width = config.shared_expert_intermediate_size
            state[f"{prefix}shared_expert.gate_proj.weight"] = torch.zeros(width, config.hidden_size)
            state[f"{prefix}shared_expert.up_proj.weight"] = torch.zeros(width, config.hidden_size)
            state[f"{prefix}shared_expert.down_proj.weight"] = torch.zeros(config.hidden_size, width)
            state[f"{prefix}shared_expert_gate.weight"] = torch.zeros(1, config.hidden_size)
    with torch.device("meta"):
        moe = AutoModelForCausalLM.from_config(config)
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
    dense_params = sum(p.numel() for p in dense.parameters())
    made = Upcycled(
        out,
        experts,
        top_k,
        total,
        active,
        dense_params,
        chosen,
        config.num_hidden_layers,
        ARCHITECTURES[config.model_type],
    )
    info = {
        "source": str(source.resolve()),
        "source_model_type": dense.config.model_type,
        "experts": experts,
        "top_k": top_k,
        "layers": layers if isinstance(layers, str) else list(layers),
        "moe_layers": chosen,
        "num_layers": config.num_hidden_layers,
        "architecture": made.architecture,
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


def expert_weights(model_dir: str | Path):
    """Each MoE layer's experts as rows of one matrix, ``(layer, [experts, weights])`` in layer order
    (gate, up and down flattened together), read from the safetensors files one layer at a time.
    transformers saves Mixtral and Qwen2-MoE experts one by one ("...experts.E.<proj>.weight");
    fused ones ("...experts.gate_up_proj", ``[experts, ...]``) are read too."""
    import torch
    from safetensors import safe_open

    where = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            where.update({name: file for name in f.keys() if ".experts." in name})
    by_layer: dict[int, list[str]] = {}
    for name in where:
        by_layer.setdefault(int(name.split(".layers.")[1].split(".")[0]), []).append(name)
    for layer in sorted(by_layer):
        per_expert: dict[int, list[torch.Tensor]] = {}
        for name in sorted(by_layer[layer]):
            with safe_open(where[name], "pt") as f:
                tensor = f.get_tensor(name).float()
            index = name.split(".experts.")[1].split(".")[0]
            if index.isdigit():
                per_expert.setdefault(int(index), []).append(tensor.flatten())
            else:
                for e, part in enumerate(tensor):
                    per_expert.setdefault(e, []).append(part.flatten())
        yield layer, torch.stack([torch.cat(per_expert[e]) for e in sorted(per_expert)])


def expert_spread(model_dir: str | Path) -> list[float]:
    """How far the experts of each MoE layer are from each other: the mean over pairs of experts of
    the distance between their weights over the mean norm of one expert's. 0 for the exact copies
    upcycling makes; it grows as training sets them apart."""
    return [spread_of(w) for _, w in expert_weights(model_dir)]


def spread_of(experts: torch.Tensor) -> float:
    """``expert_spread`` of one layer's ``[experts, weights]``."""
    import torch

    return float(torch.pdist(experts).mean() / experts.norm(dim=1).mean())


def _card(info: dict) -> str:
    exact = info["noise"] == 0 and info["reinit_fraction"] == 0
    return (
        f"# Upcycled MoE ({info['experts']} experts, top-{info['top_k']})\n\n"
        f"Made by `rlwhf upcycle` from the dense {info['source_model_type']} model at `{info['source']}`: "
        f"a {info['architecture']}-architecture model whose feed-forward blocks in "
        f"{describe_layers(info['moe_layers'], info['num_layers'])} became {info['experts']} experts each, "
        "copies of the dense block"
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
    return _moe_config(dense_config, spec.experts, spec.top_k, spec.layers)


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
        f"model.upcycle: {source} made into a {made.architecture}-architecture MoE, "
        f"{made.experts} experts in {len(made.moe_layers)} layers, "
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
