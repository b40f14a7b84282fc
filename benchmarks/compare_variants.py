"""The optimizer variants side by side on the default task: same SFT start, same steps, one machine.

    python benchmarks/compare_variants.py [--steps 120] [--out runs/compare] [RECIPE ...]

Runs each recipe (default: every ``recipes/tiny-*.yaml`` variant) one after another through the
CLI, sharing one output directory so the cold-start SFT is trained once and reused from the SFT
cache. Then prints a Markdown table: held-out accuracy before and after RL, greedy and sampled
(``eval.samples`` completions per prompt at the rollout temperature), the mean accuracy reward of
the last 10 steps' training samples, mean response length, seconds per step and wall
time. ``--table-only`` re-reads finished runs without training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["tiny-grpo", "tiny-dr-grpo", "tiny-dapo", "tiny-gspo", "tiny-rloo", "tiny-async"]


def run(recipe: str, out: Path, steps: int, extra: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "rlwhf.cli",
        "train",
        str(ROOT / "recipes" / f"{recipe}.yaml"),
        f"run.output_dir={out}",
        f"train.steps={steps}",
        "run.overwrite=true",
        "train.save_every=0",
        *extra,
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def row(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward/mean" in m]
    last = steps[-10:]

    def mean(key):
        return sum(m[key] for m in last) / len(last)

    return {
        "recipe": run_dir.name,
        "before": summary["accuracy_before_rl"],
        "after": summary["accuracy_after_rl"],
        "sampled_before": summary.get("sampled_accuracy_before_rl", float("nan")),
        "sampled_after": summary.get("sampled_accuracy_after_rl", float("nan")),
        "sampled": mean("reward/math_accuracy/mean"),
        "length": mean("response_length/mean"),
        "s_per_step": sum(m["time/step"] for m in steps) / len(steps),
        "wall": summary["wall_seconds"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | greedy before | greedy after | change (points) | sampled before | sampled after "
        "| change (points) | training accuracy, last 10 steps | mean length | s/step | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['recipe']}` | {r['before']:.1%} | {r['after']:.1%} | {100 * (r['after'] - r['before']):+.1f} "
            f"| {r['sampled_before']:.1%} | {r['sampled_after']:.1%} "
            f"| {100 * (r['sampled_after'] - r['sampled_before']):+.1f} | {r['sampled']:.2f} | {r['length']:.1f} | {r['s_per_step']:.2f} | {r['wall']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", default=VARIANTS)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="Extra dotted override for every run.")
    args = parser.parse_args()
    if not args.table_only:
        for recipe in args.recipes:
            run(recipe, args.out, args.steps, args.set)
    print(table([row(args.out / r) for r in args.recipes if (args.out / r / "summary.json").exists()]))


if __name__ == "__main__":
    main()
