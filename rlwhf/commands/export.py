"""``rlwhf export``: a checkpoint (or a run's latest one, or any local HF model folder) as a plain
Hugging Face model folder that ``vllm.LLM(OUT)`` and ``AutoModelForCausalLM.from_pretrained(OUT)`` load.

The folder holds the weights (safetensors), ``config.json``, ``generation_config.json`` and the
tokenizer with its chat template, plus ``export.json`` (where it came from). Nothing of the trainer's
state travels: no optimizer/RNG state (``trainer_state.pt``), no data cursor (``loop_state.json``), no
sampled-ahead rollouts, no routing-bias file. It is written into ``OUT.tmp`` and renamed into place,
so an interrupted export leaves no half-written ``OUT``.

A checkpoint of a run balanced with ``moe.balance=aux_free`` on a softmax-routed model (Qwen3-MoE)
carries a selection bias beside its weights (``routing_bias.pt``) that the Qwen3-MoE format has no
field for: transformers and vLLM would route without it, so the exported model would choose other
experts than the trained one did. Export refuses such a checkpoint unless told to drop the bias.
"""

from __future__ import annotations

import datetime
import json
import shutil
import warnings
from pathlib import Path

from rich.console import Console

from rlwhf.checkpoints import commit_directory, resolve_model
from rlwhf.train.routing import ROUTING_BIAS_FILE

DTYPES = ("float32", "bfloat16", "float16")
EXPORT_INFO = "export.json"


def check_out_folder(out: Path, source: Path, overwrite: bool) -> None:
    src, dst = source.resolve(), out.resolve()
    if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
        raise ValueError(f"output {out} overlaps the source {source}; export into a folder outside it")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"output {out} exists and is a file; expected a new or empty folder")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(
                f"output {out} exists and is not empty; pick another folder or pass "
                "--overwrite (overwrite=True) to replace it"
            )


def export_model(
    source: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    ignore_routing_bias: bool = False,
) -> Path:
    """Write the model of ``source`` (a checkpoint, a run directory: its latest complete checkpoint, or
    any local HF model folder) to ``out`` as a Hugging Face model folder; returns ``out``.

    ``dtype``: cast the saved weights (``float32``, ``bfloat16``, ``float16``); None keeps the source's.
    ``overwrite``: replace a non-empty ``out``. ``ignore_routing_bias``: export a checkpoint that has
    an aux-free routing bias anyway, without it (a warning says so)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)} (or none to keep the source's)")
    out = Path(out)
    ckpt = resolve_model(source)
    check_out_folder(out, ckpt, overwrite)
    bias = ckpt / ROUTING_BIAS_FILE
    if bias.is_file():
        why = (
            f"{ckpt} has an auxiliary-loss-free routing bias ({ROUTING_BIAS_FILE}, from moe.balance=aux_free) "
            "that the Hugging Face Qwen3-MoE format has no place for: transformers and vLLM would route "
            "without it, so the exported model would pick other experts than the trained one"
        )
        if not ignore_routing_bias:
            raise ValueError(
                f"{why}. Pass --ignore-routing-bias (ignore_routing_bias=True) to export the weights without it"
            )
        warnings.warn(f"{why}; exporting without it, as asked", stacklevel=2)

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype) if dtype else "auto")
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    # The trainer saves its model with the settings it trains with; a model for inference decodes with a cache.
    model.config.use_cache = True
    if getattr(model.config, "output_router_logits", None):
        model.config.output_router_logits = False
    generation = model.generation_config if model.can_generate() else None
    if generation is None:
        generation = GenerationConfig.from_model_config(model.config)
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "generation_config.json").is_file():
            generation.save_pretrained(tmp)
        loop_state = ckpt / "loop_state.json"
        step = json.loads(loop_state.read_text()).get("step") if loop_state.is_file() else None
        info = {
            "source": str(ckpt.resolve()),
            "step": step,
            "dtype": str(model.dtype).removeprefix("torch."),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "routing_bias_dropped": bias.is_file(),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() and not any(out.iterdir()):
        out.rmdir()  # an empty folder the user made for it
    return commit_directory(tmp, out)


def export(
    checkpoint: Path, out: Path, *, dtype: str | None = None, overwrite: bool = False, ignore_routing_bias: bool = False
) -> list[str]:
    """``rlwhf export``: ``export_model``, its routing-bias warning on stderr; returns what to print (the
    folder's files and how to load it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        written = export_model(
            checkpoint, out, dtype=dtype, overwrite=overwrite, ignore_routing_bias=ignore_routing_bias
        )
    for w in caught:
        if "routing bias" in str(w.message):
            Console(stderr=True, highlight=False).print(f"warning: {w.message}", style="yellow", markup=False)
    info = json.loads((written / EXPORT_INFO).read_text())
    step = f" (step {info['step']})" if info.get("step") is not None else ""
    return [
        f"exported {info['source']}{step} to {written} as {info['dtype']}:",
        *(f"  {f.name:24s} {f.stat().st_size:>12,d} bytes" for f in sorted(written.iterdir())),
        "load it with:",
        f"  vllm.LLM({str(written)!r})",
        f"  transformers.AutoModelForCausalLM.from_pretrained({str(written)!r})",
    ]
