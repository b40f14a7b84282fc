"""rlwhf against TRL's GRPOTrainer on this machine, one run after the other, several rounds.

With ``--model tiny`` (default) both start from the same SFT'd tiny MoE (the demo's cold start, from
the SFT cache that `make demo` fills; built here otherwise), take the same arithmetic prompts with
the same chat template, are paid by the same rewards (`math_accuracy` + 0.1 x `format`), and train
alike: 32 prompts x 8 completions per step at temperature 0.4, at most 64 new tokens, lr 8e-5 after
5 warm-up steps, one optimizer step per batch, clip 0.2, token-level loss, no KL. With ``--model
smollm2`` both start from SmolLM2-135M-Instruct (recipes/smollm2-arithmetic.yaml: its reasoning-gym
tasks, paid by `reasoning_gym`), 8 prompts x 8 completions at temperature 0.7, at most 128 new
tokens, lr 1e-5 after 3 warm-up steps, in float32 on both sides. rlwhf runs as a user runs it (the
CLI, its default vLLM engine); TRL's GRPOTrainer with its default generation (transformers). Each
arm is a fresh process; start-up is from the command to the start of the first step. Both final
models are then scored the same way: greedy decoding on the 200 held-out prompts.

    .venv/bin/python benchmarks/vs_trl.py               # 2 rounds x 2 arms x 20 steps, ~10 minutes
    .venv/bin/python benchmarks/vs_trl.py --size 30m --steps 8 --rounds 1 --tokens 128
    .venv/bin/python benchmarks/vs_trl.py --rlwhf-args rollout.compile=true   # a variant of rlwhf
    .venv/bin/python benchmarks/vs_trl.py --model smollm2 --steps 10 --rounds 1 --prompts 8 --tokens 128 --held-out 80

Writes benchmarks/data/vs_trl[-SIZE|-smollm2].json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The demo's data and SFT (recipes/tiny.yaml), so the SFT cache `make demo` filled is reused.
SIZES = {
    "demo": [],
    # ~30M parameters; a shorter SFT (the comparison is of speed; both arms start from the same model)
    "30m": [
        "model.tiny.hidden_size=384",
        "model.tiny.num_layers=6",
        "model.tiny.num_heads=6",
        "model.tiny.num_kv_heads=2",
        "model.tiny.head_dim=64",
        "model.tiny.num_experts=16",
        "model.tiny.expert_hidden_size=256",
        "sft.steps=300",
        "sft.learning_rate=1e-3",
    ],
}
SKIP = 2  # steps dropped from the median: the first ones pay for warm-up in both tools


@dataclasses.dataclass(frozen=True)
class Start:
    """The model both tools start from, its recipe, and the comparison's training settings for it."""

    recipe: str
    rewards: tuple[tuple[str, float], ...]  # (reward, weight), the recipe's accuracy reward first
    temperature: float
    learning_rate: float
    warmup_steps: int
    cold_start: bool  # an SFT'd tiny model (cached); else the recipe's model as it is


MODELS = {
    "tiny": Start("tiny.yaml", (("math_accuracy", 1.0), ("format", 0.1)), 0.4, 8e-5, 5, True),
    "smollm2": Start("smollm2-arithmetic.yaml", (("reasoning_gym", 1.0),), 0.7, 1e-5, 3, False),
}


@dataclasses.dataclass
class Settings:
    size: str = "demo"
    model: str = "tiny"
    steps: int = 20
    tokens: int = 64
    prompts: int = 32  # per step, 8 completions each
    sft_steps: int | None = None  # None: the recipe's (the demo's 800, cached by `make demo`)
    held_out: int = 200
    runs: Path = ROOT / "runs"  # where the SFT cache is

    @property
    def start(self) -> Start:
        return MODELS[self.model]

    @property
    def recipe_path(self) -> Path:
        return ROOT / "recipes" / self.start.recipe

    def overrides(self) -> list[str]:
        """The model's recipe turned into the comparison's settings (no dynamic sampling, overlong
        penalty or importance-sampling correction, which TRL's defaults do not have; float32)."""
        n, start = self.prompts * 8, self.start
        return [
            *(SIZES[self.size] if self.model == "tiny" else []),
            *([f"sft.steps={self.sft_steps}"] if self.sft_steps else []),
            f"train.steps={self.steps}",
            f"train.minibatch_size={n}",
            f"train.prompts_per_step={self.prompts}",
            "rollout.group_size=8",
            f"rollout.temperature={start.temperature}",
            f"rollout.max_new_tokens={self.tokens}",
            f"eval.max_new_tokens={self.tokens}",
            f"eval.num_prompts={self.held_out}",
            f"train.learning_rate={start.learning_rate}",
            f"train.warmup_steps={start.warmup_steps}",
            "algo.clip_low=0.2",
            "algo.clip_high=0.2",
            "algo.loss_agg=token_mean",
            "algo.kl_coef=0.0",
            "algo.dynamic_sampling=false",
            "algo.overlong_penalty=false",
            "algo.tis_cap=null",
            "model.dtype=float32",
            "train.eval_every=0",
            "eval.samples=0",
            "train.save_every=0",
            f"run.output_dir={self.runs}",
        ]

    def recipe(self, *extra: str):
        from rlwhf.config import load_recipe

        return load_recipe(self.recipe_path, [*self.overrides(), *extra])

    def args(self) -> list[str]:
        return [
            "--size",
            self.size,
            "--model",
            self.model,
            "--steps",
            str(self.steps),
            "--tokens",
            str(self.tokens),
            "--prompts",
            str(self.prompts),
            "--held-out",
            str(self.held_out),
            "--runs-dir",
            str(self.runs),
            *(["--sft-steps", str(self.sft_steps)] if self.sft_steps else []),
        ]


def cold_start(s: Settings) -> str:
    """The model both arms start from: the SFT'd tiny model (from the SFT cache when it holds it), or
    the recipe's own model (a GGUF file is converted once, as a run would)."""
    from rlwhf.data.source import load_task
    from rlwhf.models.gguf import local_model_path
    from rlwhf.starting_policy import prepare_policy, sft_cache_dir

    if not s.start.cold_start:
        return local_model_path(s.recipe().model.path)
    recipe = s.recipe(f"run.name=bench-vs-trl-{s.size}-init")
    run_dir = s.runs / recipe.run.name
    data = load_task(recipe.data, recipe.run.seed)
    if not (sft_cache_dir(recipe) / "config.json").exists():  # the SFT runs as a Ray task, as in a run
        import ray

        from rlwhf.workers import init_ray

        init_ray(None, os.cpu_count())
        try:
            return prepare_policy(recipe, run_dir, data.train, say=lambda m: print(m, flush=True))
        finally:
            ray.shutdown()
    return prepare_policy(recipe, run_dir, data.train, say=lambda m: print(m, flush=True))


def rlwhf_arm(s: Settings, name: str, extra: list[str]) -> dict:
    """One rlwhf run through the CLI, as a user starts it."""
    shutil.rmtree(s.runs / name, ignore_errors=True)
    env = {**os.environ, "WANDB_MODE": "offline"}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "train", str(s.recipe_path), *s.overrides(), *extra, f"run.name={name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"rlwhf run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = [json.loads(line) for line in (s.runs / name / "metrics.jsonl").read_text().splitlines()]
    steps_ = [m for m in lines if "time/step" in m]
    first = steps_[0]
    return {
        "step_s": [m["time/step"] for m in steps_],
        "phases": {k: [m[k] for m in steps_ if k in m] for k in first if k.startswith("time/") and k != "time/unix"},
        "train_accuracy": [m[f"reward/{s.start.rewards[0][0]}/mean"] for m in steps_],
        "startup_s": first["time/unix"] - first["time/step"] - t0,
        "wall_s": wall,
        "model": str(s.runs / name / "checkpoints" / f"step_{s.steps}"),
    }


def trl_arm(s: Settings, name: str, model: str) -> dict:
    """One TRL run in a fresh process (this file with --trl-process)."""
    out = s.runs / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--trl-process", str(out), *s.args(), "--start-model", model, "--t0", repr(t0)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"TRL run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads((out / "result.json").read_text())
    return {**result, "wall_s": wall, "model": str(out / "model")}


def trl_process(out: Path, s: Settings, model: str, t0: float) -> None:
    """TRL's GRPOTrainer on the comparison's settings; writes out/result.json and out/model."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlwhf.data.prompts import PromptRenderer
    from rlwhf.data.source import load_task
    from rlwhf.rollout.sampling import columns_of

    recipe = s.recipe()
    torch.manual_seed(recipe.run.seed)
    data = load_task(recipe.data, recipe.run.seed)
    renderer = PromptRenderer.from_pretrained(model, recipe.data)
    # The conversation, which TRL renders with the model's chat template, as rlwhf does; the other
    # columns reach the rewards as keyword arguments in both tools.
    dataset = Dataset.from_list([{"prompt": renderer.messages(r["prompt"]), **columns_of(r)} for r in data.train])
    tokenizer = AutoTokenizer.from_pretrained(model)
    ours = renderer.render(data.train[0]["prompt"])[1]
    theirs = tokenizer.apply_chat_template(
        dataset[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert list(theirs) == list(ours), "TRL would see other prompt tokens than rlwhf"

    funcs = [reward_function(recipe, name) for name, _ in s.start.rewards]
    config = GRPOConfig(
        output_dir=str(out / "trainer"),
        use_cpu=True,
        seed=recipe.run.seed,
        max_steps=s.steps,
        # one optimizer step on prompts x 8 completions, accumulated over 4 passes
        per_device_train_batch_size=s.prompts * 2,
        gradient_accumulation_steps=4,
        num_generations=8,
        max_completion_length=s.tokens,
        temperature=s.start.temperature,
        learning_rate=s.start.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=s.start.warmup_steps,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        reward_weights=[w for _, w in s.start.rewards],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        disable_tqdm=True,
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.accuracy = [], [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.time())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            key = f"rewards/{s.start.rewards[0][0]}/mean"
            if logs and key in logs:
                self.accuracy.append(logs[key])

    clock = Clock()
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=funcs,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    phases = {"generate": [], "reward": []}  # TRL's own time for these, per step (the rest: the update)
    for name, method in (("generate", "_generate"), ("reward", "_calculate_rewards")):

        def timed(*a, _inner=getattr(trainer, method), _name=name, **kw):
            start = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                phases[_name].append(time.perf_counter() - start)

        setattr(trainer, method, timed)
    trainer.train()
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    (out / "result.json").write_text(
        json.dumps(
            {
                "step_s": [e - b for b, e in zip(clock.begin, clock.end)],
                "train_accuracy": clock.accuracy,
                "phases": {f"time/{k}": v for k, v in phases.items()},
                "startup_s": clock.begin[0] - t0,
            }
        )
    )


def reward_function(recipe, name: str):
    """The recipe's reward ``name`` with its keyword arguments, under its own name (TRL logs a reward
    by its function's name)."""
    import rewards

    fn, kwargs = rewards.get(name), next(spec.kwargs for spec in recipe.rewards.funcs if spec.name == name)

    def call(completions, **columns):
        return fn(completions, **columns, **kwargs)

    call.__name__ = name
    return call


def held_out_accuracy(model: str, s: Settings) -> float:
    """Greedy decoding on the held-out prompts with transformers, scored by the accuracy reward."""
    from rlwhf.data.prompts import render_task
    from rlwhf.data.source import load_task
    from rlwhf.rollout import SamplingSettings, make_engine
    from rlwhf.rollout.sampling import columns_of

    recipe = s.recipe()
    data = render_task(recipe, load_task(recipe.data, recipe.run.seed), model)
    rows = data.test[: recipe.eval.num_prompts]
    engine = make_engine("hf", model, seed=0)
    groups = engine.generate(
        [r["prompt_ids"] for r in rows], SamplingSettings(n=1, temperature=0.0, max_new_tokens=s.tokens, seed=0)
    )
    columns = {k: [columns_of(r)[k] for r in rows] for k in columns_of(rows[0])}
    scores = reward_function(recipe, s.start.rewards[0][0])(
        [g.completions[0].text for g in groups], prompts=[r["prompt_text"] for r in rows], **columns
    )
    return sum(s or 0.0 for s in scores) / len(rows)


def own_limit(runs: list[dict], rlwhf_args: list[str]) -> dict:
    """rlwhf's step against what this machine cannot go below for it: vLLM sampling the step's
    completions (the step's ``time/rollout``, which runs alone) and the trainer's forward and backward
    passes (``time/train/forward_backward``, alone too): their sum in the synchronous loop, where one
    waits for the other, the larger of them with ``train.off_policy_steps=1``, where they overlap.
    Medians over the steps after warm-up; everything else in the step (rewards, old log-probs, the
    optimizer, the weight sync, the driver) is what the ratio's excess over 1 measures."""
    overlap = "train.off_policy_steps=1" in rlwhf_args
    limits, steps = [], []
    for run in runs:
        sample = after_warm_up(run["phases"]["time/rollout"])
        learn = after_warm_up(run["phases"]["time/train/forward_backward"])
        limits += [max(a, b) if overlap else a + b for a, b in zip(sample, learn)]
        steps += after_warm_up(run["step_s"])
    limit_s = statistics.median(limits)
    how = "the larger of sampling and forward+backward" if overlap else "sampling + forward+backward, in turn"
    return {"limit_s": limit_s, "ratio": statistics.median(steps) / limit_s, "how": how}


def after_warm_up(values: list[float]) -> list[float]:
    return values[SKIP:] or values


def summarise(runs: list[dict]) -> dict:
    times = [t for r in runs for t in after_warm_up(r["step_s"])]
    return {
        "s_per_step": statistics.median(times),
        "train_accuracy_last5": statistics.mean(a for r in runs for a in r["train_accuracy"][-5:]),
        "held_out_accuracy": statistics.mean(r["held_out_accuracy"] for r in runs),
        "startup_s": statistics.median(r["startup_s"] for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="demo", help="the tiny model's size")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny", help="the model both tools train")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step (8 completions each)")
    parser.add_argument("--sft-steps", type=int, default=None, help="a shorter cold start than the recipe's")
    parser.add_argument("--held-out", type=int, default=200, help="held-out prompts scored at the end")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--rlwhf-args", nargs="*", default=[], help="extra overrides for the rlwhf runs")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=["rlwhf", "trl"],
        default=["rlwhf", "trl"],
        help="run only these (the table then has only their rows)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--trl-process", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-model", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = Settings(
        args.size,
        args.model,
        args.steps,
        args.tokens,
        args.prompts,
        args.sft_steps,
        args.held_out,
        args.runs_dir.resolve(),
    )
    if args.trl_process:
        return trl_process(args.trl_process, s, args.start_model, args.t0)
    os.environ.setdefault("WANDB_MODE", "offline")
    model = cold_start(s)
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for i in range(args.rounds):  # interleaved, so a slow spell of the machine hits both
        order = args.arms if i % 2 == 0 else args.arms[::-1]
        for arm in order:
            name = f"bench-vs-trl-{args.size if args.model == 'tiny' else args.model}-{arm}-{i}"
            print(f"round {i + 1}/{args.rounds}: {arm}", flush=True)
            run = rlwhf_arm(s, name, args.rlwhf_args) if arm == "rlwhf" else trl_arm(s, name, model)
            run["held_out_accuracy"] = held_out_accuracy(run["model"], s)
            results[arm].append(run)
    table = {arm: summarise(runs) for arm, runs in results.items()}
    phases = {
        arm: {k: statistics.median(v for r in runs for v in after_warm_up(r["phases"][k])) for k in runs[0]["phases"]}
        for arm, runs in results.items()
    }
    ratio = table["rlwhf"]["s_per_step"] / table["trl"]["s_per_step"] if len(table) == 2 else None
    limit = own_limit(results["rlwhf"], args.rlwhf_args) if "rlwhf" in results else None
    label = f"{args.size} tiny" if args.model == "tiny" else args.model
    print(f"\n{label} model, {args.steps} steps x {args.rounds} rounds, median s/step over steps {SKIP + 1}+")
    print(
        f"{'':8s} {'s/step':>8s} {'train acc (last 5)':>19s} {'held-out acc':>13s} {'start-up s':>11s} {'wall s':>8s}"
    )
    for arm, row in table.items():
        print(
            f"{arm:8s} {row['s_per_step']:8.2f} {row['train_accuracy_last5']:19.3f} "
            f"{row['held_out_accuracy']:13.3f} {row['startup_s']:11.1f} {row['wall_s']:8.1f}"
        )
    for arm, times in phases.items():
        print(f"{arm} phases (median s): " + ", ".join(f"{k.removeprefix('time/')} {v:.3f}" for k, v in times.items()))
    suffix = (f"-{args.size}" if args.size != "demo" else "") if args.model == "tiny" else f"-{args.model}"
    out = args.out or ROOT / "benchmarks" / "data" / f"vs_trl{suffix}.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                **dataclasses.asdict(s),
                "runs": str(s.runs),
                "rounds": args.rounds,
                "rlwhf_args": args.rlwhf_args,
                "table": table,
                "ratio": ratio,
                "own_limit": limit,
                "phases": phases,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    shutil.rmtree(s.runs / f"bench-vs-trl-{s.size}-init", ignore_errors=True)  # its SFT stays in the cache
    for arm in results:
        for run in results[arm]:
            shutil.rmtree(
                Path(run["model"]).parent.parent if arm == "rlwhf" else Path(run["model"]).parent, ignore_errors=True
            )
    last = []  # the goal's two ratios (issue 33): against TRL, and against rlwhf's own limit on this machine
    if ratio is not None:
        last.append(f"rlwhf / TRL step time: {ratio:.2f}x")
    if limit is not None:
        last.append(f"rlwhf step / its limit: {limit['ratio']:.2f}x (limit {limit['limit_s']:.2f} s: {limit['how']})")
    print("; ".join(last))


if __name__ == "__main__":
    main()
