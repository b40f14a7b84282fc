"""Executions per second: rewards.sandbox.run against a naive subprocess.run([python, "-c", code]).

    python benchmarks/code_sandbox_bench.py [--n 200] [--threads 1 2]

Both run the same small programs with the same stdin, in the same process, one after the other
in alternating rounds (so machine noise hits both alike). The naive baseline isolates nothing;
``run`` holds every isolation property in rewards/sandbox.py's docstring. Prints a table and the
per-execution overhead of ``run`` (latency of a program that does nothing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import sandbox  # noqa: E402

PROGRAMS = [
    ("print(1)", ""),
    ("a, b = map(int, input().split())\nprint(a + b)", "2 40\n"),
    ("import collections\nprint(collections.Counter('mississippi').most_common(1))", ""),
    ("print(sum(i * i for i in range(10000)))", ""),
]


def naive(program: str, stdin: str) -> str:
    """What the issue calls naive: the interpreter that runs us, with its site-packages."""
    proc = subprocess.run([sys.executable, "-c", program], input=stdin, capture_output=True, text=True, timeout=5)
    return proc.stdout


def naive_bare(program: str, stdin: str) -> str:
    """The fastest naive start: no site, no environment (-I -S), so no .pth files to process."""
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", program], input=stdin, capture_output=True, text=True, timeout=5
    )
    return proc.stdout


def sandboxed(program: str, stdin: str) -> str:
    res = sandbox.run(program, stdin=stdin, timeout_s=5)
    assert res.status == "ok", res
    return res.stdout


def throughput(fn, n: int, threads: int) -> float:
    jobs = [PROGRAMS[i % len(PROGRAMS)] for i in range(n)]
    start = time.perf_counter()
    if threads == 1:
        for p, s in jobs:
            fn(p, s)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda job: fn(*job), jobs))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="executions per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = ap.parse_args()

    start = time.perf_counter()
    level = sandbox.isolation_level()
    print(
        f"isolation level: {level}; pool start + probe: {(time.perf_counter() - start) * 1000:.0f} ms; "
        f"{os.cpu_count()} cores; python {sys.version.split()[0]}"
    )
    for p, s in PROGRAMS:
        assert naive(p, s) == naive_bare(p, s) == sandboxed(p, s), p

    print(f"{'threads':>7} {'naive exec/s':>13} {'naive -I -S':>12} {'run exec/s':>11} {'vs naive':>9} {'vs -I -S':>9}")
    for threads in sorted(set(args.threads)):
        best = {"naive": 0.0, "bare": 0.0, "run": 0.0}
        for _ in range(args.rounds):
            best["naive"] = max(best["naive"], throughput(naive, args.n // 4, threads))
            best["bare"] = max(best["bare"], throughput(naive_bare, args.n // 4, threads))
            best["run"] = max(best["run"], throughput(sandboxed, args.n, threads))
        print(
            f"{threads:>7} {best['naive']:>13.1f} {best['bare']:>12.1f} {best['run']:>11.1f} "
            f"{best['run'] / best['naive']:>8.1f}x {best['run'] / best['bare']:>8.1f}x"
        )

    latencies = []
    for _ in range(args.n):
        t = time.perf_counter()
        sandbox.run("pass")
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    naive_lat, bare_lat = [], []
    for _ in range(max(20, args.n // 10)):
        for fn, out in ((naive, naive_lat), (naive_bare, bare_lat)):
            t = time.perf_counter()
            fn("pass", "")
            out.append(time.perf_counter() - t)
    naive_lat.sort()
    bare_lat.sort()
    med = lambda xs: xs[len(xs) // 2] * 1000  # noqa: E731
    p90 = lambda xs: xs[int(len(xs) * 0.9)] * 1000  # noqa: E731
    print(
        f"overhead per execution (program `pass`): run {med(latencies):.2f} ms median, {p90(latencies):.2f} ms p90; "
        f"naive {med(naive_lat):.2f} ms median, {p90(naive_lat):.2f} ms p90; "
        f"naive -I -S {med(bare_lat):.2f} ms median, {p90(bare_lat):.2f} ms p90"
    )


if __name__ == "__main__":
    main()
