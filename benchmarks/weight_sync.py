"""Weight sync from the policy to the rollout engines: the loop's two transports, in one run, into
the same engines: ``object_store`` (rank 0 puts the weights in Ray's object store in buckets, each
engine reads them bucket by bucket into vLLM) at several bucket sizes, against sending the whole
state dict as one object; and ``collective`` (rank 0 broadcasts them through vLLM's weight-transfer
API, over gloo on this CPU).

    .venv/bin/python benchmarks/weight_sync.py                  # the demo's tiny MoE, one engine
    .venv/bin/python benchmarks/weight_sync.py --size medium --engines 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument("--buckets-mb", type=float, nargs="+", default=[1, 16, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import ray
    from trainer_memory import SIZES

    from rlwhf.actors import PolicyRanks, RolloutEngines
    from rlwhf.config import load_recipe
    from rlwhf.models.tiny import TinyMoEConfig, build_tiny_moe
    from rlwhf.workers import init_ray

    shape = {} if args.size == "tiny" else SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_moe(Path(tmp) / "model", TinyMoEConfig(**shape)))
        recipe = load_recipe(
            None, [f"model.path={model}", "sft.enabled=false", f"resources.rollout_engines={args.engines}"]
        )
        init_ray(None, None)
        policy = PolicyRanks(recipe, model, None, Path(tmp), None, temperature=1.0, max_new_tokens=64)
        rollout = RolloutEngines(recipe, model, None, Path(tmp), max_model_len=128, weight_transfer=True)
        policy.connect_engines(rollout.engines, recipe.rollout.tensor_parallel_size)

        def timed(fn) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        seconds = timed(lambda: rollout.each("update_weights", policy.weight_buckets(float("inf"))[0]))
        _, size = policy.weight_buckets(1e9)
        print(
            f"{args.size} model, {size / 2**20:.1f} MiB of weights, {args.engines} engine(s), median of {args.repeats}"
        )
        print(f"  whole state dict as one object:   {seconds * 1000:8.1f} ms")
        for mb in args.buckets_mb:

            def sync(mb=mb):
                refs, _ = policy.weight_buckets(mb)
                rollout.each("update_weights", refs)
                return len(refs)

            count = sync()
            print(f"  buckets of {mb:6g} MiB ({count:4d}):     {timed(sync) * 1000:8.1f} ms")
        sent = policy.send_weights()
        print(
            f"  collective (vLLM weight transfer): {timed(lambda: policy.send_weights()) * 1000:8.1f} ms"
            f"  ({sent / 2**20:.1f} MiB in checkpoint layout)"
        )
        ray.shutdown()


if __name__ == "__main__":
    main()
