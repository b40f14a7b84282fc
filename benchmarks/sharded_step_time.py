"""Step time of the distributed path against the single-process one, in one run: recipes/tiny.yaml
(one policy worker, one engine) and recipes/tiny-sharded.yaml (the same recipe, the policy sharded
over two workers, two engines), each trained for a few steps from the same short SFT, each phase's
median over the steps after the first.

    .venv/bin/python benchmarks/sharded_step_time.py            # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/sharded_step_time.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["time/step", "time/rollout", "time/reward", "time/train", "time/sync"]


def run(recipe: str, steps: int, out: Path) -> list[dict]:
    overrides = [
        f"train.steps={steps}",
        "sft.steps=60",
        "eval.num_prompts=16",
        "train.eval_every=0",
        "train.save_every=0",
        f"run.output_dir={out}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "train", str(ROOT / "recipes" / recipe), *overrides],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    name = recipe.removesuffix(".yaml")
    lines = (out / name / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if "time/step" in m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {recipe: run(recipe, args.steps, Path(tmp)) for recipe in ("tiny.yaml", "tiny-sharded.yaml")}
    medians = {
        r: {k: statistics.median(m[k] for m in steps[1:] if k in m) for k in PHASES} for r, steps in results.items()
    }
    print(f"median over steps 2..{args.steps} (seconds)")
    print(f"{'phase':14s} {'tiny':>8s} {'tiny-sharded':>13s} {'ratio':>7s}")
    for key in PHASES:
        one, two = medians["tiny.yaml"][key], medians["tiny-sharded.yaml"][key]
        print(f"{key:14s} {one:8.2f} {two:13.2f} {two / max(one, 1e-9):7.2f}")


if __name__ == "__main__":
    main()
