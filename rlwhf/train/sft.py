"""Cold-start supervised fine-tuning on solver-written reasoning traces (TRL's SFTTrainer).

R1-style pipelines first teach the output format and a rough procedure with a little SFT, then
let RL do the rest; this step is that little SFT. The loss covers the completion only.
"""

from __future__ import annotations

import os
from pathlib import Path


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
) -> Path:
    """Fine-tune ``model_path`` on ``examples`` (``prompt``/``solution`` dicts); save to ``out_dir``."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    os.environ.setdefault("WANDB_DISABLED", "true")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    train = datasets.Dataset.from_list(
        [{"prompt": e["prompt"], "completion": e["solution"]} for e in examples]
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
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    out_dir = Path(out_dir)
    # SFTTrainer turns on router logits for the MoE auxiliary loss; generation must not carry them.
    trainer.model.config.output_router_logits = False
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
