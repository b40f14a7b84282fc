"""The policy trainer's real peak memory on the CPU against ``rlwhf plan``'s estimate, and what
micro-batches and gradient checkpointing save.

For each model size (tiny Qwen3-MoE policies built locally, up to ~100M parameters) and each way of
running a step (the whole minibatch in one pass; micro-batches; micro-batches with gradient
checkpointing), a fresh process builds a ``PolicyTrainer``, takes two GRPO steps of ``--completions``
completions of ``--length`` tokens (the second, like every later step of a run, with AdamW's state
already there), and reports its peak resident memory above what the process held just before the
model was loaded (its libraries imported). The parameters after the steps are compared across the
ways of running them.

    .venv/bin/python benchmarks/trainer_memory.py                 # three sizes, 64 x 512 tokens
    .venv/bin/python benchmarks/trainer_memory.py --sizes small --completions 16 --length 128
    .venv/bin/python benchmarks/trainer_memory.py --model runs/smollm2-moe --dtype bfloat16 \
        --modes micro --completions 64 --length 160 --micro-tokens 2048   # a model folder instead
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Shapes of the tiny Qwen3-MoE (rlwhf.models.tiny.TinyMoEConfig fields) measured by default.
SIZES = {
    "small": dict(
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        num_experts=8,
        experts_per_token=2,
        expert_hidden_size=256,
    ),
    "medium": dict(
        hidden_size=384,
        num_layers=6,
        num_heads=6,
        num_kv_heads=2,
        head_dim=64,
        num_experts=16,
        experts_per_token=2,
        expert_hidden_size=384,
    ),
    "large": dict(
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        num_experts=16,
        experts_per_token=2,
        expert_hidden_size=512,
    ),
}
MODES = {  # train-config overrides of each way of running the step
    "whole": {},
    "micro": {"micro_batch_tokens": 4096},
    "micro+ckpt": {"micro_batch_tokens": 4096, "gradient_checkpointing": True},
}


def peak_bytes() -> int:
    """The most memory this process has held so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident_bytes() -> int:
    """The memory this process holds now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def one_step(model_dir: str, mode: str, completions: int, length: int, out: str, dtype: str, micro: int) -> None:
    """In this process: one trainer step; writes the peak memory above the baseline, and the parameters."""
    import torch
    import transformers  # noqa: F401 (imported before the baseline, as everything the trainer loads is)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from rlwhf.config import AlgoConfig, TrainConfig
    from rlwhf.train.batch import pack
    from rlwhf.train.policy import PolicyTrainer

    baseline = resident_bytes()  # what the process holds now; the peak later is measured against it
    train = TrainConfig(learning_rate=1e-5, warmup_steps=0, minibatch_size=completions, **modes(micro)[mode])
    trainer = PolicyTrainer(model_dir, AlgoConfig(), train, temperature=1.0, max_new_tokens=length, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    prompt = length // 16
    for _ in range(2):  # the second step is a run's steady state: AdamW's moments exist from the first
        batch = pack(
            [torch.randint(5, 90, (prompt,), generator=g).tolist() for _ in range(completions)],
            [torch.randint(5, 90, (length - prompt,), generator=g).tolist() for _ in range(completions)],
            [[-1.0] * (length - prompt)] * completions,
            torch.randn(completions, generator=g).tolist(),
            [False] * completions,
            pad_id=0,
        )
        trainer.train_on(batch)
    torch.save(trainer.model.state_dict(), out + ".pt")
    Path(out).write_text(json.dumps({"peak": peak_bytes() - baseline}))


def modes(micro: int) -> dict:
    return {k: {**v, "micro_batch_tokens": micro} if "micro_batch_tokens" in v else v for k, v in MODES.items()}


def measure(model_dir, mode, completions, length, work: Path, dtype: str, micro: int) -> tuple[int, Path]:
    out = work / f"{Path(model_dir).name}-{mode}.json"
    args = [model_dir, mode, str(completions), str(length), str(out), dtype, str(micro)]
    subprocess.run([sys.executable, __file__, "--one-step", *args], check=True)
    return json.loads(out.read_text())["peak"], Path(str(out) + ".pt")


def estimate(model_dir: str, mode: str, completions: int, length: int, dtype: str, micro: int) -> float:
    from rlwhf.commands.plan import load_model_config, model_size, trainer_memory
    from rlwhf.config import load_recipe

    overrides = [
        f"model.path={model_dir}",
        f"train.minibatch_size={completions}",
        f"train.prompts_per_step={completions}",
        "rollout.group_size=2",
        f"rollout.max_prompt_tokens={length // 16}",
        f"rollout.max_new_tokens={length - length // 16}",
        "sft.enabled=false",
        f"model.dtype={dtype}",
    ]
    overrides += [f"train.{k}={v}" for k, v in modes(micro)[mode].items()]
    recipe = load_recipe(None, overrides)
    return trainer_memory(recipe, model_size(load_model_config(recipe))).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence, prompt included")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--model", help="a local Hugging Face model folder to measure instead of the tiny sizes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--micro-tokens", type=int, default=4096, help="micro_batch_tokens of the micro modes")
    args = parser.parse_args()

    import torch

    from rlwhf.models.tiny import TinyMoEConfig, build_tiny_moe

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in [Path(args.model).name] if args.model else args.sizes:
            model_dir = args.model or str(
                build_tiny_moe(work / name, TinyMoEConfig(**SIZES[name], max_position_embeddings=4096))
            )
            params = {}
            for mode in args.modes:
                peak, weights = measure(
                    model_dir, mode, args.completions, args.length, work, args.dtype, args.micro_tokens
                )
                params[mode] = torch.load(weights)
                guess = estimate(model_dir, mode, args.completions, args.length, args.dtype, args.micro_tokens)
                total = sum(v.numel() for v in params[mode].values())
                drift = max((params[mode][k] - params[args.modes[0]][k]).abs().max().item() for k in params[mode])
                rows.append(
                    {
                        "size": name,
                        "parameters": total,
                        "mode": mode,
                        "measured_mib": peak / 2**20,
                        "estimated_mib": guess / 2**20,
                        "estimate_error": guess / peak - 1,
                        "max_param_diff_vs_" + args.modes[0]: drift,
                    }
                )
                r = rows[-1]
                print(
                    f"{name:7s} {total / 1e6:6.1f}M  {mode:11s} measured {r['measured_mib']:9.0f} MiB  "
                    f"estimated {r['estimated_mib']:9.0f} MiB ({r['estimate_error']:+.0%})  "
                    f"parameters differ from {args.modes[0]} by {drift:.1e}",
                    flush=True,
                )
            whole = next((r for r in rows if r["size"] == name and r["mode"] == "whole"), None)
            lean = next((r for r in rows if r["size"] == name and r["mode"] == "micro+ckpt"), None)
            if whole and lean:
                print(
                    f"{name}: micro-batches + checkpointing peak {whole['measured_mib'] / lean['measured_mib']:.1f}x "
                    f"below the whole-minibatch step",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one-step":
        one_step(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7], int(sys.argv[8])
        )
    else:
        main()
