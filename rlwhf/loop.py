"""The driver: one readable loop over GRPO steps (single controller).

``train`` runs the seven phases of a step, each a short function below, in this order:

1. ``next_prompts``        B prompts from the prompt source (seeded order, resumable cursor);
2. ``sample``              G completions per prompt from the rollout engine, with their log-probs;
3. ``score``               every completion scored by every reward, in worker processes;
                           (``collect`` repeats 1-3 while DAPO's dynamic sampling lacks groups)
4. ``compute_advantages``  group-relative advantages (GRPO or a variant);
5. ``update_policy``       clipped policy-gradient updates in minibatches;
6. ``sync_weights``        the new weights into the running rollout engine;
7. ``record_step``         metrics, traces, and on schedule held-out accuracy and a checkpoint.

``start_run`` sets up the run directory, Ray, the data and the three workers; ``finish`` scores the
held-out set once more and writes ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlwhf import checkpoints, faults
from rlwhf.actors import PolicyRanks, RewardScorer, RolloutEngines, reserve
from rlwhf.algo import group_advantages, overlong_penalty, scale_negative, zero_variance_groups
from rlwhf.config import Recipe, check_references
from rlwhf.data.prompts import render_task
from rlwhf.data.rows import math_reward_used
from rlwhf.data.source import PromptSource, TaskData, load_task
from rlwhf.errors import Preempted
from rlwhf.evaluation import describe_accuracy, evaluate
from rlwhf.rollout import SamplingSettings, engine_options
from rlwhf.rollout.episodes import episode_metrics, tool_call_summary, tool_calls
from rlwhf.rollout.sampling import sample, score, trace_rows
from rlwhf.run_log import Tracker, say
from rlwhf.starting_policy import prepare_policy
from rlwhf.sync import WeightSync, make_sync
from rlwhf.train.batch import RolloutBatch, pack_groups
from rlwhf.train.routing import ROUTING_BIAS_FILE, write_start_skew
from rlwhf.workers import init_ray


@dataclasses.dataclass
class Run:
    """What every phase of a run reads: the recipe, its directory, data and workers."""

    recipe: Recipe
    dir: Path
    data: TaskData
    source: PromptSource
    rollout: object  # Ray actor handles
    policy: object
    reward: object
    sync: WeightSync
    tracker: Tracker
    start_step: int
    before: dict  # held-out accuracy before RL: accuracy (greedy) and accuracy/sampled
    pending: Future | None = None  # one-step off-policy mode: the next step's rollouts, sampled already
    tool_calls: list = dataclasses.field(default_factory=list)  # (seconds, status) of every training tool call

    def evaluate(self, step: int, tag: str) -> dict:
        return evaluate(self.recipe, self.rollout, self.reward, self.data.test, self.tracker, step, tag)


@dataclasses.dataclass
class Collected:
    """One step's kept rollouts, their rewards and how they were gathered."""

    rows: list = dataclasses.field(default_factory=list)
    groups: list = dataclasses.field(default_factory=list)
    totals: list = dataclasses.field(default_factory=list)
    per_reward: dict = dataclasses.field(default_factory=dict)
    seen_totals: list = dataclasses.field(default_factory=list)  # every sampled completion's, kept or not
    seen_lengths: list = dataclasses.field(default_factory=list)
    errors: dict = dataclasses.field(default_factory=dict)
    rounds: int = 0
    zero_var_frac: float = 0.0
    t_rollout: float = 0.0
    t_reward: float = 0.0

    def metrics(self, rewards, advantages) -> dict:
        """The step's rollout metrics over the groups it trained on, the rewards they came from and
        their advantages."""
        completions = [c for grp in self.groups for c in grp.completions]
        lengths = np.array([len(c.token_ids) for c in completions])
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            **{f"reward/{n}/mean": float(np.mean([v or 0.0 for v in vals])) for n, vals in self.per_reward.items()},
            **{f"reward/{n}/errors": c for n, c in self.errors.items()},
            "response_length/mean": float(lengths.mean()),
            "response_length/max": int(lengths.max()),
            "response_length/truncated_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
            "groups/zero_variance_frac": self.zero_var_frac,
            "groups/sampling_rounds": self.rounds,
            "advantage/mean": float(advantages.mean()),
            "advantage/std": float(advantages.std()),
            "time/rollout": self.t_rollout,
            "time/reward": self.t_reward,
            "tokens_per_s/rollout": float(lengths.sum() / max(self.t_rollout, 1e-9)),
            **episode_metrics(completions),
        }

    def skipped_metrics(self, step: int) -> dict:
        """A step whose every group scored all-equal in every sampling round: nothing to learn from, but
        it is still logged (over every sampled completion), evaluated and checkpointed on schedule."""
        return {
            "step": step,
            "update/skipped": 1,
            "reward/mean": float(np.mean(self.seen_totals)),
            **{f"reward/{n}/errors": c for n, c in self.errors.items()},
            "response_length/mean": float(np.mean(self.seen_lengths)),
            "groups/zero_variance_frac": self.zero_var_frac,
            "groups/sampling_rounds": self.rounds,
            "time/rollout": self.t_rollout,
            "time/reward": self.t_reward,
        }


def train(recipe: Recipe, resume: bool = False) -> dict:
    started = time.perf_counter()
    run = start_run(recipe, resume)
    steps = recipe.train.steps
    stop = faults.watch_for_sigterm()
    prefetch = ThreadPoolExecutor(1) if recipe.train.off_policy_steps else None
    pending = run.pending
    bar = tqdm(
        range(run.start_step, steps), desc="GRPO", unit="step", initial=run.start_step, total=steps, dynamic_ncols=True
    )
    for step in bar:
        t_step = time.perf_counter()
        # 1-3; in one-step off-policy mode, sampled in the background by the weights before the
        # previous update while that update ran.
        collected = pending.result() if pending is not None else collect(run, step)
        pending = prefetch.submit(collect, run, step + 1) if prefetch and step + 1 < steps else None
        if collected.rows:
            batch, rewards = compute_advantages(run, collected)  # 4
            metrics = {
                "step": step + 1,
                **collected.metrics(rewards, batch.advantages),
                **update_policy(run, batch, step),  # 5
                **sync_weights(run),
            }  # 6
        else:
            batch, metrics = None, collected.skipped_metrics(step + 1)
        record_step(run, step, collected, batch, metrics, t_step)  # 7
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.3f}",
            refresh=False,
            acc=f"{metrics.get(f'reward/{recipe.rewards.accuracy}/mean', 0):.2f}",
            len=f"{metrics['response_length/mean']:.0f}",
        )
        save_every = recipe.train.save_every
        if step + 1 == steps or (save_every and (step + 1) % save_every == 0) or stop.is_set():
            checkpoints.save_checkpoint(
                run.policy, run.dir, step + 1, {"cursor": run.source.cursor, **before_state(run.before)}, pending
            )
        if stop.is_set() and step + 1 < steps:
            bar.close()
            raise Preempted(
                f"stopped by SIGTERM after step {step + 1}, whose checkpoint is written; "
                f"continue with `rlwhf train --resume {run.dir}`"
            )
    bar.close()
    if prefetch:
        prefetch.shutdown()
    return finish(run, started)


def start_run(recipe: Recipe, resume: bool) -> Run:
    """The run directory, Ray, the data, the starting policy, the three workers and the accuracy before RL."""
    check_references(recipe)  # before anything starts: a reward that cannot be found, a missing file
    run_dir = checkpoints.prepare_run_dir(recipe, resume)
    faults.fault_point("start", 0)
    if os.environ.get("RLWHF_FAULT"):  # crash tests: the workers (started by Ray below) learn who to kill
        os.environ["RLWHF_DRIVER_PID"] = str(os.getpid())
    init_ray(recipe.ray.address, recipe.ray.num_cpus)
    data = load_task(recipe.data, recipe.run.seed, needs_answer=math_reward_used(recipe))
    if data.dropped:
        say(
            f"dropped {sum(data.dropped.values())} bad rows of data.dataset ("
            + ", ".join(f"{n} {kind}" for kind, n in data.dropped.items())
            + "); `rlwhf data check` lists them"
        )
    ckpt = checkpoints.latest_checkpoint(run_dir) if resume else None
    state = json.loads((ckpt / "loop_state.json").read_text()) if ckpt else {}
    if resume:
        checkpoints.rewind_run_dir(run_dir, state.get("step", 0))
    model_path = str(ckpt) if ckpt else prepare_policy(recipe, run_dir, data.train, say=say)
    if recipe.moe.start_skew and not ckpt:
        model_path = skewed_start(recipe, run_dir, model_path)
    data = render_task(recipe, data, model_path)

    rc, logs = recipe.rollout, run_dir / "logs"
    pg = reserve(recipe.resources)
    rollout = RolloutEngines(
        recipe, model_path, pg, logs, shared_cores=recipe.train.off_policy_steps > 0, **engine_options(recipe)
    )
    policy = PolicyRanks(
        recipe,
        model_path,
        pg,
        logs,
        str(ckpt) if ckpt else None,
        temperature=rc.temperature,
        max_new_tokens=rc.completion_tokens,  # Dr. GRPO's constant normaliser: the longest completion
        seed=recipe.run.seed,
        dtype=recipe.model.dtype,
        completions_per_step=recipe.train.prompts_per_step * rc.group_size,
    )
    sync = make_sync(recipe)
    sync.start(policy, rollout)
    reward = RewardScorer(recipe, logs)
    tracker = Tracker(
        run_dir,
        use_wandb=recipe.tracking.wandb,
        project=recipe.tracking.wandb_project,
        run_name=recipe.run.name,
        config=recipe.model_dump(mode="json"),
        console_every=recipe.tracking.console_every,
        total_steps=recipe.train.steps,
    )
    source = PromptSource(data.train, recipe.run.seed, cursor=state.get("cursor", 0))
    run = Run(
        recipe,
        run_dir,
        data,
        source,
        rollout,
        policy,
        reward,
        sync,
        tracker,
        state.get("step", 0),
        {},
        pending=checkpoints.saved_rollouts(ckpt),
    )
    if "accuracy_before_rl" in state:
        run.before = restore_before(state)
    else:
        say("scoring the held-out set before RL")
        run.before = run.evaluate(0, "before")
        say(f"held-out accuracy before RL: {describe_accuracy(run.before)}")
    return run


def skewed_start(recipe: Recipe, run_dir: Path, model_path: str) -> str:
    """The starting policy with the deliberate imbalance of ``moe.start_skew``: a copy in the run
    directory (``model/start``) whose selection bias is the policy's own (an SFT balanced with
    ``sft.bias_update_rate`` has one) plus the skew."""
    target = run_dir / "model" / "start"
    shutil.copytree(model_path, target, dirs_exist_ok=True)
    own = Path(model_path) / ROUTING_BIAS_FILE
    write_start_skew(target, recipe.moe.start_skew, torch.load(own) if own.is_file() else None)
    say(
        f"moe.start_skew: the first top-k experts of every layer start with a selection bias "
        f"+{recipe.moe.start_skew:g} above their own"
    )
    return str(target)


def collect(run: Run, step: int) -> Collected:
    """Steps 1-3 for one training step; with DAPO's dynamic sampling, groups whose completions all
    score the same are dropped and more prompts sampled, for up to ``algo.max_sampling_rounds`` rounds."""
    algo, G = run.recipe.algo, run.recipe.rollout.group_size
    out = Collected()
    while len(out.rows) < run.recipe.train.prompts_per_step and out.rounds < algo.max_sampling_rounds:
        rows = next_prompts(run, out)  # 1
        groups, seconds = sample(run.rollout, rows, sampling_settings(run, step, out.rounds))  # 2
        faults.fault_point("rollout", step + 1)
        run.tool_calls += tool_calls([c for grp in groups for c in grp.completions])
        scored = score(run.reward, rows, groups, run.recipe.rewards.stop_on_total_failure)  # 3
        out.t_rollout, out.t_reward, out.rounds = out.t_rollout + seconds, out.t_reward + scored.seconds, out.rounds + 1
        for name, count in scored.errors.items():
            out.errors[name] = out.errors.get(name, 0) + count
        for failure in scored.failures:
            run.tracker.warn_once(
                f"{failure.reward}/{failure.status}",
                f"{failure} (shown once; every failure is counted in metrics.jsonl as reward/{failure.reward}/errors)",
            )
        total = total_rewards(run, groups, scored.total)
        zero_var = zero_variance_groups(total, G)
        out.seen_totals.extend(total.tolist())
        out.seen_lengths.extend(len(c.token_ids) for grp in groups for c in grp.completions)
        if out.rounds == 1:
            out.zero_var_frac = float(zero_var.float().mean())
        for i in range(len(rows)):
            if algo.dynamic_sampling and zero_var[i]:
                continue
            out.rows.append(rows[i])
            out.groups.append(groups[i])
            out.totals.extend(total[i * G : (i + 1) * G].tolist())
            for name, values in scored.per_reward.items():
                out.per_reward.setdefault(name, []).extend(values[i * G : (i + 1) * G])
        if not algo.dynamic_sampling:
            break
    return out


def next_prompts(run: Run, collected: Collected) -> list[dict]:
    """1. The next prompts in the source's seeded order: B of them, or under dynamic sampling as many
    as the step still lacks."""
    B = run.recipe.train.prompts_per_step
    return run.source.next_batch(B - len(collected.rows) if run.recipe.algo.dynamic_sampling else B)


def sampling_settings(run: Run, step: int, round_: int) -> SamplingSettings:
    """2. How a training step samples: G completions per prompt, a seed fixed by the run's seed, the
    step and the sampling round (each prompt then gets its own seed from it)."""
    rc = run.recipe.rollout
    return SamplingSettings(
        n=rc.group_size,
        temperature=rc.temperature,
        top_p=rc.top_p,
        max_new_tokens=rc.max_new_tokens,
        seed=run.recipe.run.seed * 1_000_003 + step * 101 + round_,
    )


def total_rewards(run: Run, groups: list, totals: list[float]) -> torch.Tensor:
    """3. Each completion's reward: the weighted sum of the recipe's rewards, plus DAPO's soft
    overlong penalty when asked for."""
    total = torch.tensor(totals)
    if run.recipe.algo.overlong_penalty:
        lengths = torch.tensor([len(c.token_ids) for grp in groups for c in grp.completions], dtype=torch.float)
        budget = run.recipe.rollout.completion_tokens
        total = total + overlong_penalty(lengths, budget, run.recipe.algo.overlong_cache)
    return total


def compute_advantages(run: Run, collected: Collected) -> tuple[RolloutBatch, torch.Tensor]:
    """4. The trainer's batch with group-relative advantages, and the rewards they came from (with
    the KL penalty folded in when ``algo.kl_in_reward``)."""
    algo = run.recipe.algo
    batch = pack_groups(collected.groups)
    rewards = torch.tensor(collected.totals)
    if algo.kl_in_reward and algo.kl_coef > 0:
        rewards = rewards - algo.kl_coef * torch.tensor(run.policy.sequence_kl(batch))
    batch.advantages = group_advantages(
        rewards,
        run.recipe.rollout.group_size,
        estimator=algo.advantage,
        eps=algo.eps,
        batch_std_norm=algo.batch_std_norm,
    )
    if algo.negative_scale != 1.0:
        batch.advantages = scale_negative(batch.advantages, algo.negative_scale)
    return batch, rewards


def update_policy(run: Run, batch: RolloutBatch, step: int) -> dict:
    """5. ``train.ppo_epochs`` passes of clipped policy-gradient minibatch updates; their metrics."""
    t0 = time.perf_counter()
    metrics = run.policy.train_on(batch, while_running=lambda: faults.fault_point("update", step + 1))
    seconds = time.perf_counter() - t0
    return {
        **metrics,
        "time/train": seconds,
        "tokens_per_s/train": int(batch.attention_mask.sum()) / max(seconds, 1e-9),
    }


def sync_weights(run: Run) -> dict:
    """6. The policy's new weights into the running rollout engines, without restarting them
    (``rlwhf.sync``: through Ray's object store in buckets, or broadcast by ``sync.transport: collective``)."""
    return {**run.sync.push(run.policy, run.rollout), "workers/restarts": run.rollout.restarts + run.reward.restarts}


def record_step(
    run: Run, step: int, collected: Collected, batch: RolloutBatch | None, metrics: dict, t_step: float
) -> None:
    """7. Held-out accuracy every ``train.eval_every`` steps, and the step's metrics and traces."""
    recipe = run.recipe
    if recipe.train.eval_every and (step + 1) % recipe.train.eval_every == 0 and step + 1 < recipe.train.steps:
        metrics.update(run.evaluate(step + 1, f"step{step + 1}"))
    metrics["time/step"] = time.perf_counter() - t_step
    metrics["time/unix"] = time.time()  # when the step ended, to line runs up with other clocks
    run.tracker.log(metrics)
    if recipe.tracking.traces and batch is not None:
        run.tracker.write_traces(
            step + 1,
            trace_rows(
                step + 1, collected.rows, collected.groups, collected.per_reward, collected.totals, batch.advantages
            ),
        )


def headline(result: dict, when: str) -> dict:
    """An evaluation's headline numbers as ``summary.json`` and checkpoints keep them, ``when`` being
    ``before_rl`` or ``after_rl``: ``accuracy_<when>`` (greedy), ``sampled_accuracy_<when>``, and
    ``pass@k_<when>``/``maj@k_<when>``."""
    out = {f"accuracy_{when}": result["accuracy"]}
    if "accuracy/sampled" in result:
        out[f"sampled_accuracy_{when}"] = result["accuracy/sampled"]
    out.update({f"{key}_{when}": value for key, value in result.items() if key.startswith(("pass@", "maj@"))})
    return out


def before_state(before: dict) -> dict:
    """The evaluation before RL as ``summary.json`` and checkpoints keep it."""
    return headline(before, "before_rl")


def restore_before(state: dict) -> dict:
    """``before_state``'s inverse: the evaluation before RL from a checkpoint's loop state."""
    before = {"accuracy": state["accuracy_before_rl"]}
    if "sampled_accuracy_before_rl" in state:
        before["accuracy/sampled"] = state["sampled_accuracy_before_rl"]
    before.update(
        {
            key.removesuffix("_before_rl"): value
            for key, value in state.items()
            if key.startswith(("pass@", "maj@")) and key.endswith("_before_rl")
        }
    )
    return before


def finish(run: Run, started: float) -> dict:
    """Held-out accuracy after RL, the last metrics line, ``summary.json``; the workers closed."""
    recipe = run.recipe
    say("scoring the held-out set after RL")
    after = run.evaluate(recipe.train.steps, "after")
    run.tracker.log({"step": recipe.train.steps, **after, **before_state(run.before)})
    run.tracker.close()
    run.reward.close()
    summary = {
        "run_dir": str(run.dir),
        **before_state(run.before),
        **headline(after, "after_rl"),
        **({"dropped_rows": run.data.dropped} if run.data.dropped else {}),
        "steps": recipe.train.steps,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rollout_engine": recipe.rollout.engine,
        **({"tool_calls": tool_call_summary(run.tool_calls)} if recipe.rollout.multi_turn else {}),
    }
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    start = "after SFT" if recipe.sft.enabled else "before RL"
    say(
        f"held-out accuracy {start}: {describe_accuracy(run.before)}; after {recipe.train.steps} RL steps: "
        f"{describe_accuracy(after)}"
    )
    say(f"run directory: {run.dir}  (traces: rlwhf.traces.load({str(run.dir)!r}))")
    return summary
