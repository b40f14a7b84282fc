"""The starting policy: a tiny model built locally, then a cold-start SFT on solver-written traces.

R1-style pipelines first teach the output format and a rough procedure with a little SFT, then
let RL do the rest; ``cold_start_sft`` is that little SFT (TRL's SFTTrainer, loss on the completion
only). ``prepare_policy`` runs it as a Ray task on every core, shows its progress, and caches the
result under ``<output_dir>/.sft-cache`` by a hash of everything that determines it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

# Part of the SFT cache key: raise it when a change makes the same settings train a different model
# (2: the SFT runs on every core, which rounds differently from one).
SFT_CACHE_VERSION = 2


def cold_start_sft(
    model_path: str | Path,
    examples: list[dict],
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    max_length: int = 256,
    router_aux_loss_coef: float | None = None,
    bias_update_rate: float = 0.0,
    on_step: Callable[[int, float | None], None] | None = None,
) -> Path:
    """Fine-tune ``model_path`` on ``examples`` (``prompt``/``solution`` dicts); save to ``out_dir``.

    ``on_step(step, loss)`` is called after every optimizer step (``loss``: the last logged one),
    in place of the trainer's own progress bar and log lines. ``bias_update_rate`` > 0: balance the
    experts with auxiliary-loss-free selection biases as the SFT goes (``SFTBalance``).
    """
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    os.environ.setdefault("WANDB_DISABLED", "true")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    from rlwhf.data.prompts import is_conversation

    # A conversational prompt takes its solution as the assistant's message (TRL renders both with the
    # tokenizer's chat template); a text prompt, as text.
    train = datasets.Dataset.from_list([
        {"prompt": e["prompt"], "completion": [{"role": "assistant", "content": e["solution"]}]
         if is_conversation(e["prompt"]) else e["solution"]} for e in examples])
    args = SFTConfig(
        output_dir=str(Path(out_dir) / "sft_work"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to=[],
        seed=seed,
        max_length=max_length,
        use_cpu=True,
        bf16=False,
        router_aux_loss_coef=router_aux_loss_coef,
        dataloader_num_workers=0,
        disable_tqdm=on_step is not None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    balance = SFTBalance(model, bias_update_rate) if bias_update_rate else None
    if balance is not None:
        trainer.add_callback(balance.callback())
    if on_step is not None:

        class ReportSteps(TrainerCallback):
            loss: float | None = None

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.loss = float(logs["loss"])

            def on_step_end(self, args, state, control, **kwargs):
                on_step(state.global_step, self.loss)

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ReportSteps())
    trainer.train()
    out_dir = Path(out_dir)
    # SFTTrainer turns on router logits for the MoE auxiliary loss; generation must not carry them.
    trainer.model.config.output_router_logits = False
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if balance is not None:
        balance.save(out_dir)
    return out_dir


class SFTBalance:
    """Auxiliary-loss-free balancing during the SFT (``sft.bias_update_rate``), the way a DeepSeek-V3-style
    model comes out of its pre-training: every training forward selects experts with the selection
    bias, the load is counted over the loss's (completion) tokens, and after each optimizer step every
    expert's bias moves by the rate against the sign of its load error, as ``moe.balance: aux_free``
    does during RL. The bias is saved beside the weights, where the RL trainer and the engines read it."""

    def __init__(self, model, rate: float):
        import torch

        from rlwhf.train.routing import Routing

        self.routing = Routing(model)
        self.routing.require_steerable("sft.bias_update_rate")
        self.rate = rate
        self.counts = torch.zeros(len(self.routing), self.routing.num_experts)
        self._open = None
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after)

    def _before(self, module, args, kwargs):
        labels = kwargs.get("labels")
        if not module.training or labels is None:
            return
        self._open = self.routing.pass_(mask=labels != -100)
        self._open.__enter__()

    def _after(self, module, args, output):
        if self._open is None:
            return
        import torch

        from rlwhf.train.routing import count_experts

        mask = self.routing.mask
        own = torch.stack([o[mask.to(o.device)].cpu() for o in self.routing.record.own], dim=1)  # [rows, layers, k]
        self.counts += count_experts(own, self.routing.num_experts)
        self._open.__exit__(None, None, None)
        self._open = None

    def step(self) -> None:
        from rlwhf.train.routing import aux_free_update

        self.routing.set_bias(aux_free_update(self.routing.bias, self.counts, self.rate))
        self.counts.zero_()

    def callback(self):
        from transformers import TrainerCallback

        balance = self

        class BalanceAfterEachStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                balance.step()

        return BalanceAfterEachStep()

    def save(self, model_dir: Path) -> None:
        import torch

        from rlwhf.train.routing import ROUTING_BIAS_FILE

        if self.routing.bias_is_external:  # the sigmoid kind's bias is a buffer, saved with the weights
            torch.save(self.routing.bias, Path(model_dir) / ROUTING_BIAS_FILE)


DEEPSEEK_ONLY = {"arch", "shared_experts", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"}


def sft_cache_dir(recipe) -> Path:
    """Where an SFT'd tiny model is kept for reuse by runs with the same model, data, SFT and seed."""
    model = recipe.model.model_dump(mode="json")
    model["dtype"] = "float32"  # the SFT trains in float32 whatever the RL's compute dtype
    if model["tiny"]["arch"] == "qwen3_moe":  # the key it had before DeepSeek-V3's fields existed
        model["tiny"] = {k: v for k, v in model["tiny"].items() if k not in DEEPSEEK_ONLY}
    data = recipe.data.model_dump(mode="json")
    if data["bad_rows"] == "drop":  # the key it had before data.bad_rows existed (drop is what it did)
        del data["bad_rows"]
    if not data["gym"]:  # the key it had before data.gym existed
        del data["gym"]
    sft = recipe.sft.model_dump(mode="json", exclude={"cache"})
    for name, default in (("router_aux_loss_coef", None), ("bias_update_rate", 0.0)):
        if sft[name] == default:  # the key it had before the setting existed
            del sft[name]
    key = json.dumps([model, data, sft, recipe.run.seed, SFT_CACHE_VERSION],
                     sort_keys=True)
    return Path(recipe.run.output_dir) / ".sft-cache" / hashlib.sha256(key.encode()).hexdigest()[:16]


def prepare_policy(recipe, run_dir: Path, train_rows: list[dict], say: Callable[[str], None] = print) -> str:
    """The starting policy's directory: build the tiny model if asked, then the cold-start SFT (cached)."""
    from rlwhf.models.gguf import local_model_path
    from rlwhf.models.tiny import build_tiny_moe

    path = local_model_path(recipe.model.path, say=say)
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
        say(f"cold-start SFT: {recipe.sft.steps} steps on {len(rows)} solver traces in "
            f"{time.perf_counter() - t0:.0f} s on {threads} threads")
        if use_cache:
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.copytree(sft_dir, tmp, dirs_exist_ok=True)
            tmp.rename(cached)
    return str(sft_dir)


def _sft_with_progress(recipe, model_path: str, rows: list[dict], sft_dir: Path, log_path: Path) -> int:
    """Run the SFT task and draw its progress bar here, from the (step, loss) pairs it sends."""
    import ray
    from tqdm.auto import tqdm

    from rlwhf.workers import ProgressBoard, cold_start_sft_task, remote

    progress = remote(ProgressBoard).remote()
    task = cold_start_sft_task.remote(
        model_path, rows, str(sft_dir), steps=recipe.sft.steps, batch_size=recipe.sft.batch_size,
        learning_rate=recipe.sft.learning_rate, seed=recipe.run.seed, router_aux_loss_coef=recipe.sft.router_aux_loss_coef,
        bias_update_rate=recipe.sft.bias_update_rate, log_path=str(log_path), progress=progress)
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
