"""The policy a run starts from: the recipe's model (a tiny one built locally, a GGUF file
converted), then the cold-start SFT, run as a Ray task on every core with its progress shown here,
and cached under ``<output_dir>/.sft-cache`` by a hash of everything that determines it.

Driver-side, beside the loop: ``rlwhf.train.sft`` holds the SFT itself, which needs no Ray.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from rlwhf.models.tiny import build_tiny_moe
from rlwhf.models.upcycle import policy_path
from rlwhf.workers import ProgressBoard, cold_start_sft_task, remote

# Part of the SFT cache key: raise it when a change makes the same settings train a different model
# or changes the key's contents (2: the SFT runs on every core, which rounds differently from one;
# 3: every field of the model, data and SFT sections is in the key, none left out to keep older keys;
# 4: model.upcycle and data.operation joined the key).
SFT_CACHE_VERSION = 4


def sft_cache_dir(recipe) -> Path:
    """Where an SFT'd tiny model is kept for reuse by runs with the same model, data, SFT and seed."""
    model = recipe.model.model_dump(mode="json")
    model["dtype"] = "float32"  # the SFT trains in float32 whatever the RL's compute dtype
    data = recipe.data.model_dump(mode="json")
    sft = recipe.sft.model_dump(mode="json", exclude={"cache"})
    key = json.dumps([model, data, sft, recipe.run.seed, SFT_CACHE_VERSION], sort_keys=True)
    return Path(recipe.run.output_dir) / ".sft-cache" / hashlib.sha256(key.encode()).hexdigest()[:16]


def prepare_policy(recipe, run_dir: Path, train_rows: list[dict], say: Callable[[str], None] = print) -> str:
    """The starting policy's directory: build the tiny model if asked, then the cold-start SFT (cached)."""
    path = policy_path(recipe.model, say=say)
    sft_dir = run_dir / "model" / "sft"
    use_cache = recipe.sft.enabled and recipe.sft.cache and recipe.model.path == "tiny"
    cached = sft_cache_dir(recipe)
    if use_cache and not (sft_dir / "config.json").exists() and (cached / "config.json").exists():
        say(f"cold-start SFT: reusing {cached} (same model, data, SFT settings and seed)")
        shutil.copytree(cached, sft_dir, dirs_exist_ok=True)
    if recipe.sft.enabled and (sft_dir / "config.json").exists():
        return str(sft_dir)  # the model it started from is not needed (nor built)
    if path == "tiny":
        path = str(run_dir / "model" / "init")
        if not Path(path, "config.json").exists():
            from transformers.utils import logging as hf_logging

            say(f"building a tiny Qwen3-MoE policy and tokenizer in {path}")
            hf_logging.disable_progress_bar()  # a bar for writing one small file is noise
            build_tiny_moe(path, recipe.model.tiny, seed=recipe.run.seed)
    if not recipe.sft.enabled:
        return path
    if not (sft_dir / "config.json").exists():
        rows = [r for r in train_rows if r.get("solution")][: recipe.sft.num_examples]
        if not rows:
            raise ValueError("sft.enabled needs training rows with a 'solution' column; set sft.enabled=false")
        t0 = time.perf_counter()
        threads = _sft_with_progress(recipe, path, rows, sft_dir, run_dir / "logs" / "sft.log")
        say(
            f"cold-start SFT: {recipe.sft.steps} steps on {len(rows)} solver traces in "
            f"{time.perf_counter() - t0:.0f} s on {threads} threads"
        )
        if use_cache:
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.copytree(sft_dir, tmp, dirs_exist_ok=True)
            tmp.rename(cached)
    return str(sft_dir)


def _sft_with_progress(recipe, model_path: str, rows: list[dict], sft_dir: Path, log_path: Path) -> int:
    """Run the SFT task and draw its progress bar here, from the (step, loss) pairs it sends."""
    import ray

    progress = remote(ProgressBoard).remote()
    task = cold_start_sft_task.remote(
        model_path,
        rows,
        str(sft_dir),
        steps=recipe.sft.steps,
        batch_size=recipe.sft.batch_size,
        learning_rate=recipe.sft.learning_rate,
        seed=recipe.run.seed,
        router_aux_loss_coef=recipe.sft.router_aux_loss_coef,
        bias_update_rate=recipe.sft.bias_update_rate,
        log_path=str(log_path),
        progress=progress,
    )
    with tqdm(total=recipe.sft.steps, desc="cold-start SFT", unit="step", dynamic_ncols=True) as bar:
        done = []
        while not done:
            done, _ = ray.wait([task], timeout=0.5)
            step, loss = ray.get(progress.read.remote())
            bar.update(step - bar.n)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    threads = ray.get(task)
    ray.kill(progress)
    return threads
