"""The cold-start SFT on solver-written traces.

R1-style pipelines first teach the output format and a rough procedure with a little SFT, then
let RL do the rest; ``cold_start_sft`` is that little SFT (TRL's SFTTrainer, loss on the completion
only). It knows nothing of Ray: ``rlwhf.starting_policy`` runs it as a Ray task and caches it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rlwhf.data.rows import is_conversation


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

    # A conversational prompt takes its solution as the assistant's message (TRL renders both with the
    # tokenizer's chat template); a text prompt, as text.
    train = datasets.Dataset.from_list(
        [
            {
                "prompt": e["prompt"],
                "completion": [{"role": "assistant", "content": e["solution"]}]
                if is_conversation(e["prompt"])
                else e["solution"],
            }
            for e in examples
        ]
    )
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
