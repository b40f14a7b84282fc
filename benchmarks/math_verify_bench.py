"""rewards.math against math-verify, side by side on the same items in the same run.

    .venv/bin/python benchmarks/math_verify_bench.py [--json out.json]

Sets: the public labelled set (../shared/data/math_equiv_public.jsonl next to the repo, skipped
with a message when absent) and rlwhf's own (benchmarks/data/math_equiv_rlwhf.jsonl). Ordinary
items are scored one call at a time by each verifier (accuracy per category, items/s, p50/p99
latency); rlwhf's batch API is timed too. Hazard items (category "hazard", plus 1 MB inputs) are
run for rlwhf in-process under its 2 s limit, and for math-verify each in a child process with
a 60 s wall-clock cap, because its signal-based timeouts cannot stop work inside one C call.
Errors are counted by kind too: wrong answers paid (false positives, what a policy learns to
exploit) and right answers missed, each listed. Needs `pip install math-verify==0.9.0`
(benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewards import math as rm  # noqa: E402

SETS = {
    "public": REPO.parent / "shared/data/math_equiv_public.jsonl",
    "rlwhf": REPO / "benchmarks/data/math_equiv_rlwhf.jsonl",
}
MV_HAZARD_CAP_S = 60
EXTRA_HAZARDS = ["x" * 1_000_000, "\\boxed{" + "1" * 1_000_000 + "}", "(" * 100_000 + "1"]

MV_CHILD = """
import json, sys, time
from math_verify import parse, verify
gold, pred = json.load(sys.stdin)
t = time.perf_counter()
try:
    g = parse("$" + gold + "$") or parse(gold)
    ok = bool(verify(g, parse(pred)))
except Exception:
    ok = False
print(json.dumps([ok, time.perf_counter() - t]))
"""


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def math_verify_fn():
    try:
        from math_verify import parse, verify
    except ImportError:
        sys.exit("math-verify is not installed: .venv/bin/pip install math-verify==0.9.0")

    def mv(gold: str, prediction: str) -> bool:
        try:
            g = parse(f"${gold}$") or parse(gold)
            return bool(verify(g, parse(prediction)))
        except Exception:
            return False

    return mv


def timed(fn, rows):
    verdicts, latencies = [], []
    for r in rows:
        t = time.perf_counter()
        verdicts.append(fn(r["gold"], r["prediction"]))
        latencies.append(time.perf_counter() - t)
    return verdicts, latencies


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def mv_hazard(gold: str, prediction: str) -> tuple[bool, float, bool]:
    """(verdict, seconds, timed_out) for one hazard, math-verify in a child process."""
    t = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", MV_CHILD],
            input=json.dumps([gold, prediction]),
            capture_output=True,
            text=True,
            timeout=MV_HAZARD_CAP_S,
        )
        ok, inner = json.loads(out.stdout.strip().splitlines()[-1])
        return ok, inner, False
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t, True
    except (ValueError, IndexError):  # crashed (e.g. recursion) without printing
        return False, time.perf_counter() - t, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the numbers here too")
    args = ap.parse_args()
    mv = math_verify_fn()
    rows = []
    for name, path in SETS.items():
        if not path.exists():
            print(f"[skip] {name} set not found at {path}")
            continue
        for r in load(path):
            rows.append({**r, "set": name})
    ordinary = [r for r in rows if r["category"] != "hazard"]
    hazards = [r for r in rows if r["category"] == "hazard"]
    hazards += [
        {"gold": "2", "prediction": h, "equivalent": False, "category": "hazard", "set": "bench"} for h in EXTRA_HAZARDS
    ]
    print(f"{len(ordinary)} ordinary items, {len(hazards)} hazards")

    # warm both: imports, rlwhf's helper process, math-verify's parser
    rm.warm_up()
    for r in ordinary[:20]:
        rm.verify(r["gold"], r["prediction"])
        mv(r["gold"], r["prediction"])

    results = {}
    probe_only = rm.stats["probe_only"]
    for name, fn in (("rlwhf", rm.verify), ("math-verify", mv)):
        verdicts, lat = timed(fn, ordinary)
        if name == "rlwhf":
            probe_only = rm.stats["probe_only"] - probe_only
        results[name] = {"verdicts": verdicts, "latencies": lat}
        print(
            f"{name}: {len(ordinary) / sum(lat):.0f} items/s, p50 {1000 * pct(lat, 0.5):.2f} ms, "
            f"p99 {1000 * pct(lat, 0.99):.1f} ms, max {1000 * max(lat):.0f} ms"
        )
    t = time.perf_counter()
    batch = rm.verify_batch([r["gold"] for r in ordinary], [r["prediction"] for r in ordinary])
    batch_s = time.perf_counter() - t
    print(
        f"rlwhf verify_batch: {len(ordinary) / batch_s:.0f} items/s "
        f"(agrees with per-item calls on {sum(a == b for a, b in zip(batch, results['rlwhf']['verdicts']))}"
        f"/{len(ordinary)})"
    )

    # accuracy per set and category
    table = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for i, r in enumerate(ordinary):
        for name in results:
            cell = table[(r["set"], r["category"])][name]
            cell[0] += results[name]["verdicts"][i] == r["equivalent"]
            cell[1] += 1
    lines = ["| set | category | n | rlwhf | math-verify |", "|---|---|---:|---:|---:|"]
    totals = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for (set_name, category), cells in sorted(table.items()):
        n = cells["rlwhf"][1]
        lines.append(f"| {set_name} | {category} | {n} | {cells['rlwhf'][0]}/{n} | {cells['math-verify'][0]}/{n} |")
        for name in results:
            totals[set_name][name][0] += cells[name][0]
            totals[set_name][name][1] += cells[name][1]
    for set_name, cells in totals.items():
        r_ok, n = cells["rlwhf"]
        m_ok, _ = cells["math-verify"]
        lines.append(
            f"| **{set_name}** | **all** | {n} | **{r_ok}/{n} ({100 * r_ok / n:.1f}%)** | "
            f"**{m_ok}/{n} ({100 * m_ok / n:.1f}%)** |"
        )
    print("\n" + "\n".join(lines))

    # the two kinds of error: a wrong answer paid (false positive, what a policy learns to exploit)
    # and a right answer missed (false negative)
    errors = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    negatives, positives = defaultdict(int), defaultdict(int)
    for i, r in enumerate(ordinary):
        negatives[r["set"]] += not r["equivalent"]
        positives[r["set"]] += bool(r["equivalent"])
        for name in results:
            got = results[name]["verdicts"][i]
            errors[r["set"]][name][0] += got and not r["equivalent"]
            errors[r["set"]][name][1] += r["equivalent"] and not got
    lines = [
        "| set | wrong answers paid: rlwhf | math-verify | right answers missed: rlwhf | math-verify |",
        "|---|---:|---:|---:|---:|",
    ]
    for set_name, cells in errors.items():
        neg, pos = negatives[set_name], positives[set_name]
        lines.append(
            f"| {set_name} | {cells['rlwhf'][0]}/{neg} | {cells['math-verify'][0]}/{neg} | "
            f"{cells['rlwhf'][1]}/{pos} | {cells['math-verify'][1]}/{pos} |"
        )
    print("\n" + "\n".join(lines))
    print(f"rlwhf: {probe_only} of {len(ordinary)} items paid on numeric probes alone (no symbolic proof)")
    for i, r in enumerate(ordinary):
        for name in results:
            if results[name]["verdicts"][i] and not r["equivalent"]:
                print(
                    f"  {name} paid a wrong answer ({r['set']}/{r['category']}): gold {r['gold']!r}, "
                    f"prediction ...{r['prediction'][-80:]!r}"
                )

    # hazards
    rm.stats["timeouts"] = 0
    hz = {"rlwhf": [], "math-verify": []}
    for r in hazards:
        before = rm.stats["timeouts"]
        t = time.perf_counter()
        ok = rm.verify(r["gold"], r["prediction"])
        hz["rlwhf"].append((ok, time.perf_counter() - t, rm.stats["timeouts"] > before))
        hz["math-verify"].append(mv_hazard(r["gold"], r["prediction"]))
    print("\n| hazard | rlwhf s (limit hit) | math-verify s (60 s cap hit) |\n|---|---:|---:|")
    for r, a, b in zip(hazards, hz["rlwhf"], hz["math-verify"]):
        label = repr(r["prediction"][:40]) + ("..." if len(r["prediction"]) > 40 else "")
        print(f"| `{label}` | {a[1]:.2f} ({'yes' if a[2] else 'no'}) | {b[1]:.2f} ({'yes' if b[2] else 'no'}) |")
    for name, got in hz.items():
        print(
            f"{name}: hazards scored True {sum(g[0] for g in got)}/{len(got)}, worst {max(g[1] for g in got):.2f} s, "
            f"limit hit {sum(g[2] for g in got)}"
        )

    if args.json:
        summary = {
            name: {
                "items_per_s": len(ordinary) / sum(v["latencies"]),
                "p50_ms": 1000 * pct(v["latencies"], 0.5),
                "p99_ms": 1000 * pct(v["latencies"], 0.99),
                "hazard_worst_s": max(g[1] for g in hz[name]),
                "hazard_limit_hits": sum(g[2] for g in hz[name]),
            }
            for name, v in results.items()
        }
        summary["rlwhf"]["batch_items_per_s"] = len(ordinary) / batch_s
        summary["accuracy"] = {f"{s}/{c}": {k: v for k, v in cells.items()} for (s, c), cells in table.items()}
        summary["wrong_paid_and_right_missed"] = {s: {k: v for k, v in cells.items()} for s, cells in errors.items()}
        summary["rlwhf"]["probe_only_items"] = probe_only
        Path(args.json).write_text(json.dumps(summary, indent=1))
    rm.shutdown()


if __name__ == "__main__":
    main()
