"""Rollout throughput: vLLM vs transformers ``generate`` on the same tiny MoE, in one run.

    python benchmarks/rollout_throughput.py [--model DIR] [--prompts 16] [--n 8] [--tokens 48]

Prints generated tokens per second for each engine and their ratio. Each engine generates once
to warm up, then the timed rounds; sampling is at temperature 1 with ``min_tokens``-free decoding,
so both produce completions of similar length (the ratio uses tokens actually generated).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def measure(engine, prompts, sampling, rounds: int) -> float:
    engine.generate(prompts[:2], sampling)  # warm-up
    tokens, elapsed = 0, 0.0
    for r in range(rounds):
        sampling.seed = r
        start = time.perf_counter()
        groups = engine.generate(prompts, sampling)
        elapsed += time.perf_counter() - start
        tokens += sum(len(c.token_ids) for g in groups for c in g.completions)
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model directory (default: a freshly built tiny MoE)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from rlwhf.data.arithmetic import make_arithmetic
    from rlwhf.models.tiny import build_tiny_moe
    from rlwhf.rollout import SamplingSettings, make_engine

    model = args.model or str(build_tiny_moe(tempfile.mkdtemp(prefix="rlwhf-bench-")))
    prompts = [r["prompt"] for r in make_arithmetic(args.prompts, seed=1)]
    results = {}
    for kind in ("vllm", "hf"):
        engine = make_engine(kind, model, seed=0)
        sampling = SamplingSettings(n=args.n, temperature=1.0, max_new_tokens=args.tokens)
        results[kind] = measure(engine, prompts, sampling, args.rounds)
        del engine
    results["vllm_over_hf"] = results["vllm"] / results["hf"]
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
