"""The policy trainer on a GPU: a ~1B-parameter MoE built locally, a few GRPO updates in bfloat16
with micro-batches, and what they cost: tokens/s, model FLOPs utilisation, peak memory against
``rlwhf plan``'s estimate.

Needs only torch and transformers (no vLLM, no Ray, no pydantic): the trainer's settings are given
here as plain attributes. It prints one JSON line at the end and writes it to ``--json``.

    python3 benchmarks/gpu_trainer.py                       # on one GPU, about 3 minutes on an H100/H200
    python3 benchmarks/gpu_trainer.py --device cpu --size tiny --steps 1   # the same code path on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Qwen3-MoE shapes: "1b" is ~1.2B parameters (0.5B active per token), "tiny" a smoke test.
SIZES = {
    "1b": dict(
        vocab_size=32768,
        hidden_size=2048,
        moe_intermediate_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=16,
        num_experts_per_tok=4,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=128,
        moe_intermediate_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=4,
        num_experts_per_tok=2,
    ),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def settings(args) -> SimpleNamespace:
    """What PolicyTrainer and rlwhf.commands.plan read from a recipe, as plain attributes."""
    algo = SimpleNamespace(
        advantage="grpo",
        loss_agg="token_mean",
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=None,
        ratio_level="token",
        kl_coef=0.0,
        kl_estimator="k3",
        kl_in_reward=False,
        ref_refresh_every=0,
        entropy_coef=0.0,
        overlong_mask=False,
        tis_cap=None,
    )
    train = SimpleNamespace(
        threads=0,
        device=args.device,
        steps=args.steps,
        ppo_epochs=1,
        minibatch_size=args.completions // 2,
        prompts_per_step=args.completions,
        learning_rate=1e-6,
        weight_decay=0.0,
        max_grad_norm=1.0,
        adam_eps=1e-8,
        warmup_steps=1,
        lr_schedule="constant",
        lr_min_ratio=0.0,
        micro_batch_tokens=args.micro_batch_tokens,
        logits_chunk_mib=1024,
        gradient_checkpointing=args.checkpointing,
        single_pass=True,
    )
    prompt = args.length // 8
    rollout = SimpleNamespace(
        max_prompt_tokens=prompt,
        max_new_tokens=args.length - prompt,
        completion_tokens=args.length - prompt,  # one turn: the longest completion is max_new_tokens
        group_size=1,
        engine="vllm",
        kv_cache_gib=1.0,
    )
    resources = SimpleNamespace(policy_workers=1, rollout_engines=1, gpus_per_policy_worker=int(args.device == "cuda"))
    return SimpleNamespace(
        algo=algo, train=train, rollout=rollout, model=SimpleNamespace(dtype=args.dtype), resources=resources
    )


def build(size: str, out: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    from rlwhf.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        **SIZES[size],
        decoder_sparse_step=1,
        norm_topk_prob=True,
        tie_word_embeddings=False,
        max_position_embeddings=8192,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    build_tokenizer().save_pretrained(out)  # the trainer saves it with checkpoints; ids come from this script
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1b", choices=list(SIZES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--steps", type=int, default=4, help="GRPO updates (two optimizer steps each); the first is warm-up"
    )
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence, prompt included")
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from rlwhf.commands.plan import model_size, trainer_memory
    from rlwhf.train.batch import pack
    from rlwhf.train.policy import PolicyTrainer

    recipe = settings(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = build(args.size, Path(tmp) / "model")
        trainer = PolicyTrainer(
            path,
            recipe.algo,
            recipe.train,
            temperature=1.0,
            max_new_tokens=args.length,
            dtype=args.dtype,
            completions_per_step=args.completions,
        )
    size = model_size(trainer.model.config)
    g = torch.Generator().manual_seed(0)
    prompt = recipe.rollout.max_prompt_tokens
    vocab = trainer.model.config.vocab_size

    def batch():
        return pack(
            [torch.randint(5, vocab, (prompt,), generator=g).tolist() for _ in range(args.completions)],
            [torch.randint(5, vocab, (args.length - prompt,), generator=g).tolist() for _ in range(args.completions)],
            [[-1.0] * (args.length - prompt)] * args.completions,
            torch.randn(args.completions, generator=g).tolist(),
            [False] * args.completions,
            pad_id=0,
        )

    cuda = trainer.device.type == "cuda"
    times = []
    for _ in range(args.steps):
        b = batch()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_on(b)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tokens = args.completions * args.length
    seconds = sorted(times[1:] or times)[len(times[1:] or times) // 2]  # median, the first step dropped
    # Model FLOPs per update: a scoring pass (2 per active parameter and token) and a training pass
    # (6), plus a forward recomputation with checkpointing; attention's quadratic term added.
    passes = 2 + 6 + (2 if args.checkpointing else 0)
    attention = 2 * 2 * size.layers * size.query_width * args.length * tokens  # QK^T and AV, forward
    flops = passes * size.active * tokens + (passes / 2) * attention
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    estimate = trainer_memory(recipe, size).total
    result = {
        "device": name,
        "size": args.size,
        "parameters": size.total,
        "active_parameters": size.active,
        "dtype": args.dtype,
        "completions": args.completions,
        "length": args.length,
        "micro_batch_tokens": args.micro_batch_tokens,
        "gradient_checkpointing": args.checkpointing,
        "seconds_per_update": seconds,
        "tokens_per_s": tokens / seconds,
        "model_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / peak if peak and args.dtype == "bfloat16" else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "plan_estimate_gib": estimate / 2**30,
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
