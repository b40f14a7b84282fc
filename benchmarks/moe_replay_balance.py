"""What balancing costs in trainer/rollout agreement and what routing replay wins back: the same
recipe, seed and steps run six times, {no replay, trainer replay (R2), rollout replay (R3)} x
{moe.balance none, aux_free}, and per run the means over its steps of the routing agreement, the
log-prob mismatch between the rollout engine and the trainer's old-log-prob pass, the busiest expert's
load over the mean, and the held-out accuracy after.

    .venv/bin/python benchmarks/moe_replay_balance.py                  # ~20 minutes on 2 cores
    .venv/bin/python benchmarks/moe_replay_balance.py --steps 10 --dtype float32

bfloat16 (the default here) is where the engine and the trainer disagree: in float32 on this CPU
they route every token alike and their log-probs differ by about 1e-6. The recipe is
recipes/tiny-moe-balance.yaml from the start the table in docs/moe.md measured: the demo's cold-start SFT
(cached once `make demo` ran) with its own routing, not the recipe's balanced SFT and skew (--as-recipe
runs those).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    ("moe/routing_agreement", "agreement", ".4f"),
    ("rollout/logp_diff_abs_mean", "|logp diff|", ".5f"),
    ("rollout/is_ratio_max", "max IS ratio", ".3f"),
    ("moe/max_load_ratio", "busiest/mean", ".2f"),
    ("moe/rollout_max_load_ratio", "busiest/mean (rollout)", ".2f"),
]


def run(replay: str, balance: str, args) -> dict:
    name = f"moe-bench-{replay}-{balance}"
    overrides = [
        f"moe.routing_replay={replay}",
        f"moe.balance={balance}",
        f"train.steps={args.steps}",
        f"model.dtype={args.dtype}",
        f"eval.num_prompts={args.eval_prompts}",
        "eval.samples=0",
        *([] if args.as_recipe else ["moe.start_skew=0", "sft.bias_update_rate=0"]),
        f"run.name={name}",
        f"run.output_dir={args.output_dir}",
        "run.overwrite=true",
    ]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "train", str(ROOT / "recipes" / "tiny-moe-balance.yaml"), *overrides],
        check=True,
        env={**os.environ, "WANDB_MODE": "offline"},
        stdout=subprocess.DEVNULL,
    )
    run_dir = Path(args.output_dir) / name
    steps = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    summary = json.loads((run_dir / "summary.json").read_text())
    row = {
        "replay": replay,
        "balance": balance,
        "wall_s": round(time.perf_counter() - started, 1),
        "accuracy_before": summary["accuracy_before_rl"],
        "accuracy_after": summary["accuracy_after_rl"],
    }
    for key, _, _ in COLUMNS:
        values = [m[key] for m in steps if key in m]
        row[key] = statistics.fmean(values) if values else None
        row[key + "/last"] = values[-1] if values else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--eval-prompts", type=int, default=100)
    parser.add_argument("--as-recipe", action="store_true", help="start as the recipe does (balanced SFT, skew)")
    parser.add_argument(
        "--output-dir",
        default=str(ROOT / "runs"),
        help="where the runs go: the demo's output_dir, whose .sft-cache holds its SFT",
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "data" / "moe_replay_balance.json"))
    args = parser.parse_args()
    rows = []
    for balance in ("none", "aux_free"):
        for replay in ("none", "trainer", "rollout"):
            rows.append(run(replay, balance, args))
            print(json.dumps(rows[-1]), file=sys.stderr)
    header = ["replay", "balance", *[label for _, label, _ in COLUMNS], "accuracy after"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = [row["replay"], row["balance"]]
        cells += ["—" if row[key] is None else format(row[key], spec) for key, _, spec in COLUMNS]
        cells.append(f"{row['accuracy_after']:.3f}")
        print("| " + " | ".join(cells) + " |")
    Path(args.json).write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "dtype": args.dtype, "rows": rows}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
