"""The upcycled SmolLM2 MoE against the dense SmolLM2 it was made from: the same recipe, task, seed and
number of steps (recipes/smollm2-arithmetic.yaml and recipes/smollm2-moe-arithmetic.yaml), the MoE
with moe.balance none and aux_free. Per run: held-out accuracy before and after, seconds per step,
the experts' load (trainer and vLLM) and routing agreement over the run, and how far the copies
drift apart (``rlwhf.models.upcycle.expert_spread``) at each checkpoint.

    .venv/bin/python benchmarks/upcycled_vs_dense.py --steps 20          # ~1.5 hours on 2 cores
    .venv/bin/python benchmarks/upcycled_vs_dense.py --steps 20 --dense runs/smollm2-arithmetic \\
        --report-only runs/moe-none runs/moe-aux_free                     # from runs already made

A dense run with more steps than ``--steps`` is scored at its checkpoint of that step with
``rlwhf eval`` (same held-out set and sampling as the runs' own evaluations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train(recipe: str, name: str, steps: int, extra: list[str]) -> Path:
    overrides = [f"run.name={name}", f"train.steps={steps}", f"train.eval_every={steps}", "train.save_every=10"]
    subprocess.run([sys.executable, "-m", "rlwhf.cli", "train", recipe, *overrides, *extra], cwd=ROOT, check=True)
    return ROOT / "runs" / name


def steps_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def held_out_after(run: Path, steps: int) -> dict:
    """The run's own evaluation at ``steps``, else ``rlwhf eval`` of its checkpoint of that step."""
    for m in steps_of(run):
        if m.get("step") == steps and "greedy/accuracy" in m:
            return {"greedy": m["greedy/accuracy"], "sampled": m["sampled/accuracy"], "pass@4": m["sampled/pass@4"]}
    out = ROOT / "runs" / "eval" / f"{run.name}-step{steps}.json"
    if not out.is_file():
        checkpoint = run / "checkpoints" / f"step_{steps}"
        subprocess.run([sys.executable, "-m", "rlwhf.cli", "eval", checkpoint, "--out", out], cwd=ROOT, check=True)
    report = json.loads(out.read_text())
    flat = report.get("metrics", report)
    return {"greedy": flat["greedy/accuracy"], "sampled": flat["sampled/accuracy"], "pass@4": flat["sampled/pass@4"]}


def loads(m: dict, side: str) -> dict[tuple[int, int], float]:
    prefix = f"moe/{side}/L"
    return {tuple(int(x[1:]) for x in k[len(prefix) - 1 :].split("/")): v for k, v in m.items() if k.startswith(prefix)}


def describe(run: Path, steps: int) -> dict:
    from rlwhf.config import load_recipe
    from rlwhf.models.upcycle import expert_weights, policy_path, spread_of

    summary = json.loads((run / "summary.json").read_text())
    steps = min(steps, summary["steps"])  # a shorter run is described at its own end
    trained = [m for m in steps_of(run) if "loss" in m and m["step"] <= steps]
    row = {
        "run": run.name,
        "steps": steps,
        "before": (summary["accuracy_before_rl"], summary["sampled_accuracy_before_rl"]),
        "after": held_out_after(run, steps),
        "s/step median": statistics.median(m["time/step"] for m in trained),
        "s/step mean": statistics.mean(m["time/step"] for m in trained),
        "rollout s": statistics.mean(m["time/rollout"] for m in trained),
        "train s": statistics.mean(m["time/train"] for m in trained),
        "reward last 5": statistics.mean(m["reward/mean"] for m in trained[-5:]),
    }
    if "moe/max_load_ratio" in trained[0]:
        for key in ("moe/max_load_ratio", "moe/rollout_max_load_ratio", "moe/routing_agreement", "moe/router_entropy"):
            values = [m[key] for m in trained if key in m]
            row[key] = (values[0], statistics.mean(values), values[-1])
        last = loads(trained[-1], "load")
        experts = 1 + max(e for _, e in last)
        layers = 1 + max(layer for layer, _ in last)
        # each expert's share of its layer's routed tokens at the last step: mean over layers and the extremes
        shares = [
            [last[(layer, e)] / sum(last[(layer, x)] for x in range(experts)) for e in range(experts)]
            for layer in range(layers)
        ]
        row["last step share per expert (mean over layers)"] = [
            statistics.mean(s[e] for s in shares) for e in range(experts)
        ]
        row["last step share, min/max over layers"] = (min(min(s) for s in shares), max(max(s) for s in shares))
        row["spread"], row["moved"] = {}, {}
        start = dict(expert_weights(policy_path(load_recipe(run / "config.yaml").model, say=lambda _: None)))
        for checkpoint in sorted((run / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:])):
            spread, moved = [], []  # each layer's experts read once for both
            for layer, w in expert_weights(checkpoint):
                spread.append(spread_of(w))
                # how far each expert moved from its start, over its norm: the scale the spread is read on
                moved.append(float(((w - start[layer]).norm(dim=1) / start[layer].norm(dim=1)).mean()))
            row["spread"][checkpoint.name] = (statistics.mean(spread), max(spread))
            row["moved"][checkpoint.name] = statistics.mean(moved)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dense", type=Path, help="a dense run already made (else one is run)")
    parser.add_argument("--report-only", nargs="*", type=Path, help="MoE runs already made (else two are run)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    dense = args.dense or train("recipes/smollm2-arithmetic.yaml", "dense-bench", args.steps, [])
    moes = args.report_only or [
        train("recipes/smollm2-moe-arithmetic.yaml", f"moe-{balance}", args.steps, [f"moe.balance={balance}"])
        for balance in ("none", "aux_free")
    ]
    rows = [describe(run, args.steps) for run in [dense, *moes]]
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
