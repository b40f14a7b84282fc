"""``rlwhf upcycle``: a dense model (a folder, a run's checkpoint, or a GGUF file such as the SmolLM2
that ``make setup`` installs) made into an MoE (Mixtral, or Qwen2-MoE when some layers stay dense)
whose experts start as copies of its feed-forward blocks (``rlwhf.models.upcycle``), written as a Hugging Face folder that vLLM,
transformers and ``rlwhf train`` load. Written into ``OUT.tmp`` and renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path

from rlwhf.checkpoints import commit_directory, resolve_model
from rlwhf.commands.export import check_out_folder
from rlwhf.models.upcycle import describe_layers, upcycle


def upcycle_model(source: str | Path, out: Path, *, overwrite: bool = False, **settings) -> list[str]:
    """Upcycle ``source`` into ``out`` with ``settings`` (``rlwhf.models.upcycle.upcycle``'s: experts,
    top_k, layers, router_init, router_std, noise, reinit_fraction, seed); returns what to print (what was
    made, its parameters, how to use it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = resolve_model(source)
    check_out_folder(out, src, overwrite)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        made = upcycle(src, tmp, **settings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() and not any(out.iterdir()):
        out.rmdir()  # an empty folder the user made for it
    commit_directory(tmp, out)
    noise, reinit = settings.get("noise", 0.0), settings.get("reinit_fraction", 0.0)
    return [
        f"upcycled {src} ({made.dense_params:,} parameters) into {out}: a "
        f"{made.architecture}-architecture MoE with {made.experts} experts, top-"
        f"{made.top_k}, in " + describe_layers(made.moe_layers, made.num_layers),
        f"parameters: {made.total_params:,} in all, {made.active_params:,} active per token",
        "it computes what the dense model computed (its experts are copies; the router starts "
        + ("at zero)" if settings.get("router_init") == "zeros" else "at random)")
        if noise == 0 and reinit == 0
        else f"its experts are perturbed copies (noise {noise}, re-initialised share {reinit})",
        f"train it: model.path: {out} in a recipe (or model.upcycle in a recipe makes it on first use, as "
        "recipes/smollm2-moe-arithmetic.yaml does)",
    ]
