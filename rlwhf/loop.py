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
import pickle
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from rlwhf.algo import group_advantages, overlong_penalty, scale_negative, zero_variance_groups
from rlwhf.checkpoints import fault_point, latest_checkpoint, prepare_run_dir, rewind_run_dir
from rlwhf.config import Recipe, check_references
from rlwhf.data.prompts import PromptRenderer, prepare_prompts
from rlwhf.data.source import PromptSource, TaskData, load_task
from rlwhf.evaluation import describe_accuracy, evaluate, sample, score, trace_rows
from rlwhf.rollout import SamplingSettings
from rlwhf.tracking import Tracker, say
from rlwhf.train.batch import RolloutBatch, pack
from rlwhf.train.sft import prepare_policy
from rlwhf.workers import LOG_FILES, PolicyWorker, RewardWorker, RolloutWorker, init_ray, remote


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
    tracker: Tracker
    start_step: int
    before: dict  # held-out accuracy before RL: accuracy (greedy) and accuracy/sampled
    pending: Future | None = None  # one-step off-policy mode: the next step's rollouts, sampled already

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


class Preempted(Exception):
    """SIGTERM stopped the run after a step, whose checkpoint was then written; resume continues it."""


def train(recipe: Recipe, resume: bool = False) -> dict:
    started = time.perf_counter()
    run = start_run(recipe, resume)
    steps = recipe.train.steps
    stop = watch_for_sigterm()
    prefetch = ThreadPoolExecutor(1) if recipe.train.off_policy_steps else None
    pending = run.pending
    bar = tqdm(range(run.start_step, steps), desc="GRPO", unit="step", initial=run.start_step, total=steps,
               dynamic_ncols=True)
    for step in bar:
        t_step = time.perf_counter()
        # 1-3; in one-step off-policy mode, sampled in the background by the weights before the
        # previous update while that update ran.
        collected = pending.result() if pending is not None else collect(run, step)
        pending = prefetch.submit(collect, run, step + 1) if prefetch and step + 1 < steps else None
        if collected.rows:
            batch, rewards = compute_advantages(run, collected)  # 4
            metrics = {"step": step + 1, **kept_metrics(collected, rewards, batch),
                       **update_policy(run, batch, step),  # 5
                       **sync_weights(run)}  # 6
        else:
            batch, metrics = None, skipped_metrics(step, collected)
        record_step(run, step, collected, batch, metrics, t_step)  # 7
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", refresh=False,
                        acc=f"{metrics.get(f'reward/{recipe.rewards.accuracy}/mean', 0):.2f}",
                        len=f"{metrics['response_length/mean']:.0f}")
        save_every = recipe.train.save_every
        if step + 1 == steps or (save_every and (step + 1) % save_every == 0) or stop.is_set():
            save_checkpoint(run, step + 1, pending)
        if stop.is_set() and step + 1 < steps:
            bar.close()
            raise Preempted(f"stopped by SIGTERM after step {step + 1}, whose checkpoint is written; continue "
                            f"with `rlwhf train --resume {run.dir}`")
    bar.close()
    if prefetch:
        prefetch.shutdown()
    return finish(run, started)


def watch_for_sigterm() -> threading.Event:
    """SIGTERM (a preemption notice) lets the current step finish, then the loop checkpoints and stops."""
    stop = threading.Event()

    def on_sigterm(signum, frame):
        say("SIGTERM: finishing this step, then writing a checkpoint and stopping")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return stop


def start_run(recipe: Recipe, resume: bool) -> Run:
    """The run directory, Ray, the data, the starting policy, the three workers and the accuracy before RL."""
    check_references(recipe)  # before anything starts: a reward that cannot be found, a missing file
    run_dir = prepare_run_dir(recipe, resume)
    if os.environ.get("RLWHF_FAULT"):  # crash tests: the workers (started by Ray below) learn who to kill
        os.environ["RLWHF_DRIVER_PID"] = str(os.getpid())
    init_ray(recipe.ray.address, recipe.ray.num_cpus)
    data = load_task(recipe.data, recipe.run.seed)
    ckpt = latest_checkpoint(run_dir) if resume else None
    state = json.loads((ckpt / "loop_state.json").read_text()) if ckpt else {}
    if resume:
        rewind_run_dir(run_dir, state.get("step", 0))
    model_path = str(ckpt) if ckpt else prepare_policy(recipe, run_dir, data.train, say=say)
    data = render_prompts(recipe, data, model_path)

    rc, logs, resources = recipe.rollout, run_dir / "logs", recipe.resources
    rollout = remote(RolloutWorker, resources.gpus_per_rollout_engine).remote(
        rc.engine, model_path, shared_cores=recipe.train.off_policy_steps > 0, dtype=recipe.model.dtype,
        seed=recipe.run.seed, kv_cache_gib=rc.kv_cache_gib,
        max_model_len=rc.max_prompt_tokens + max(rc.max_new_tokens, recipe.eval.max_new_tokens),
        gpu_memory_utilization=rc.gpu_memory_utilization, log_path=str(logs / LOG_FILES["RolloutWorker"]))
    policy = remote(PolicyWorker, resources.gpus_per_policy_worker).remote(
        model_path, recipe.algo, recipe.train, temperature=rc.temperature, max_new_tokens=rc.max_new_tokens,
        seed=recipe.run.seed, dtype=recipe.model.dtype, resume_from=str(ckpt) if ckpt else None,
        completions_per_step=recipe.train.prompts_per_step * rc.group_size,
        log_path=str(logs / LOG_FILES["PolicyWorker"]))
    reward = remote(RewardWorker).remote(recipe.rewards.funcs, recipe.rewards.timeout_s, recipe.rewards.num_workers,
                                         warm_up_timeout_s=recipe.rewards.warm_up_timeout_s,
                                         log_path=str(logs / LOG_FILES["RewardWorker"]))
    tracker = Tracker(run_dir, use_wandb=recipe.tracking.wandb, project=recipe.tracking.wandb_project,
                      run_name=recipe.run.name, config=recipe.model_dump(mode="json"),
                      console_every=recipe.tracking.console_every, total_steps=recipe.train.steps)
    source = PromptSource(data.train, recipe.run.seed, cursor=state.get("cursor", 0))
    run = Run(recipe, run_dir, data, source, rollout, policy, reward, tracker, state.get("step", 0), {},
              pending=saved_rollouts(ckpt))
    if "accuracy_before_rl" in state:
        run.before = {"accuracy": state["accuracy_before_rl"]}
        if "sampled_accuracy_before_rl" in state:
            run.before["accuracy/sampled"] = state["sampled_accuracy_before_rl"]
    else:
        say("scoring the held-out set before RL")
        run.before = run.evaluate(0, "before")
        say(f"held-out accuracy before RL: {describe_accuracy(run.before)}")
    return run


def render_prompts(recipe: Recipe, data: TaskData, model_path: str) -> TaskData:
    """Every prompt as the policy's tokenizer renders it (``rlwhf.data.prompts``); over-long ones dropped."""
    renderer = PromptRenderer.from_pretrained(model_path, recipe.data)
    limit, on_overlong = recipe.rollout.max_prompt_tokens, recipe.data.overlong_prompts
    train = prepare_prompts(data.train, renderer, limit, on_overlong, "training")
    test = prepare_prompts(data.test, renderer, limit, on_overlong, "held-out")
    for split, prepared in (("training", train), ("held-out", test)):
        if prepared.dropped:
            say(f"dropped {prepared.dropped} {split} prompts longer than rollout.max_prompt_tokens={limit} tokens")
    if not train.rows:
        raise ValueError(f"no training prompt fits in rollout.max_prompt_tokens={limit} tokens")
    return TaskData(train.rows, test.rows)


def collect(run: Run, step: int) -> Collected:
    """Steps 1-3 for one training step; with DAPO's dynamic sampling, groups whose completions all
    score the same are dropped and more prompts sampled, for up to ``algo.max_sampling_rounds`` rounds."""
    algo, G = run.recipe.algo, run.recipe.rollout.group_size
    out = Collected()
    while len(out.rows) < run.recipe.train.prompts_per_step and out.rounds < algo.max_sampling_rounds:
        rows = next_prompts(run, out)  # 1
        groups, seconds = sample(run.rollout, rows, sampling_settings(run, step, out.rounds))  # 2
        fault_point("rollout", step + 1)
        scored = score(run.reward, rows, groups, run.recipe.rewards.stop_on_total_failure)  # 3
        out.t_rollout, out.t_reward, out.rounds = out.t_rollout + seconds, out.t_reward + scored.seconds, out.rounds + 1
        for name, count in scored.errors.items():
            out.errors[name] = out.errors.get(name, 0) + count
        for failure in scored.failures:
            run.tracker.warn_once(f"{failure.reward}/{failure.status}", f"{failure} (shown once; every failure "
                                  f"is counted in metrics.jsonl as reward/{failure.reward}/errors)")
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
            out.totals.extend(total[i * G:(i + 1) * G].tolist())
            for name, values in scored.per_reward.items():
                out.per_reward.setdefault(name, []).extend(values[i * G:(i + 1) * G])
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
    return SamplingSettings(n=rc.group_size, temperature=rc.temperature, top_p=rc.top_p,
                            max_new_tokens=rc.max_new_tokens, seed=run.recipe.run.seed * 1_000_003 + step * 101 + round_)


def total_rewards(run: Run, groups: list, totals: list[float]) -> torch.Tensor:
    """3. Each completion's reward: the weighted sum of the recipe's rewards, plus DAPO's soft
    overlong penalty when asked for."""
    total = torch.tensor(totals)
    if run.recipe.algo.overlong_penalty:
        lengths = torch.tensor([len(c.token_ids) for grp in groups for c in grp.completions], dtype=torch.float)
        total = total + overlong_penalty(lengths, run.recipe.rollout.max_new_tokens, run.recipe.algo.overlong_cache)
    return total


def compute_advantages(run: Run, collected: Collected) -> tuple[RolloutBatch, torch.Tensor]:
    """4. The trainer's batch with group-relative advantages, and the rewards they came from (with
    the KL penalty folded in when ``algo.kl_in_reward``)."""
    algo, groups = run.recipe.algo, collected.groups
    completions = [c for grp in groups for c in grp.completions]
    batch = pack([grp.prompt_ids for grp in groups for _ in grp.completions], [c.token_ids for c in completions],
                 [c.logprobs for c in completions], [0.0] * len(completions),
                 [c.finish_reason == "length" for c in completions], pad_id=0)
    rewards = torch.tensor(collected.totals)
    if algo.kl_in_reward and algo.kl_coef > 0:
        rewards = rewards - algo.kl_coef * torch.tensor(ray.get(run.policy.sequence_kl.remote(batch)))
    batch.advantages = group_advantages(rewards, run.recipe.rollout.group_size, estimator=algo.advantage,
                                        eps=algo.eps, batch_std_norm=algo.batch_std_norm)
    if algo.negative_scale != 1.0:
        batch.advantages = scale_negative(batch.advantages, algo.negative_scale)
    return batch, rewards


def update_policy(run: Run, batch: RolloutBatch, step: int) -> dict:
    """5. ``train.ppo_epochs`` passes of clipped policy-gradient minibatch updates; their metrics."""
    t0 = time.perf_counter()
    update = run.policy.train_on.remote(batch)
    fault_point("update", step + 1)
    metrics = ray.get(update)
    seconds = time.perf_counter() - t0
    return {**metrics, "time/train": seconds, "tokens_per_s/train": int(batch.attention_mask.sum()) / max(seconds, 1e-9)}


def sync_weights(run: Run) -> dict:
    """6. The policy's new weights into the running rollout engine, without restarting it."""
    t0 = time.perf_counter()
    ray.get(run.rollout.update_weights.remote(run.policy.state_dict.remote()))
    return {"time/sync": time.perf_counter() - t0}


def kept_metrics(collected: Collected, rewards: torch.Tensor, batch: RolloutBatch) -> dict:
    """A step's rollout metrics over the groups it trained on."""
    completions = [c for grp in collected.groups for c in grp.completions]
    lengths = np.array([len(c.token_ids) for c in completions])
    return {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
            **{f"reward/{n}/mean": float(np.mean([v or 0.0 for v in vals])) for n, vals in collected.per_reward.items()},
            **{f"reward/{n}/errors": c for n, c in collected.errors.items()},
            "response_length/mean": float(lengths.mean()), "response_length/max": int(lengths.max()),
            "response_length/truncated_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
            "groups/zero_variance_frac": collected.zero_var_frac, "groups/sampling_rounds": collected.rounds,
            "advantage/mean": float(batch.advantages.mean()), "advantage/std": float(batch.advantages.std()),
            "time/rollout": collected.t_rollout, "time/reward": collected.t_reward,
            "tokens_per_s/rollout": float(lengths.sum() / max(collected.t_rollout, 1e-9))}


def skipped_metrics(step: int, collected: Collected) -> dict:
    """A step whose every group scored all-equal in every sampling round: nothing to learn from, but
    it is still logged (over every sampled completion), evaluated and checkpointed on schedule."""
    return {"step": step + 1, "update/skipped": 1, "reward/mean": float(np.mean(collected.seen_totals)),
            **{f"reward/{n}/errors": c for n, c in collected.errors.items()},
            "response_length/mean": float(np.mean(collected.seen_lengths)),
            "groups/zero_variance_frac": collected.zero_var_frac, "groups/sampling_rounds": collected.rounds,
            "time/rollout": collected.t_rollout, "time/reward": collected.t_reward}


def record_step(run: Run, step: int, collected: Collected, batch: RolloutBatch | None, metrics: dict,
                t_step: float) -> None:
    """7. Held-out accuracy every ``train.eval_every`` steps, and the step's metrics and traces."""
    recipe = run.recipe
    if recipe.train.eval_every and (step + 1) % recipe.train.eval_every == 0 and step + 1 < recipe.train.steps:
        metrics.update(run.evaluate(step + 1, f"step{step + 1}"))
    metrics["time/step"] = time.perf_counter() - t_step
    run.tracker.log(metrics)
    if recipe.tracking.traces and batch is not None:
        run.tracker.write_traces(step + 1, trace_rows(step + 1, collected.rows, collected.groups,
                                                      collected.per_reward, collected.totals, batch.advantages))


def save_checkpoint(run: Run, step: int, pending: Future | None) -> None:
    """7. A checkpoint after ``step``: the policy, optimizer and RNG states, the data cursor, and in
    one-step off-policy mode the next step's rollouts, so that a resumed run continues exactly."""
    extra = {}
    if pending is not None:  # its prompts are past the cursor already; keep them with the checkpoint
        extra["pending_rollouts.pkl"] = pickle.dumps(pending.result())
    path = run.dir / "checkpoints" / f"step_{step}"
    saved = run.policy.save.remote(str(path), {"step": step, "cursor": run.source.cursor,
                                               **before_state(run.before)}, extra)
    ray.get(saved)


def saved_rollouts(ckpt: Path | None) -> Future | None:
    """The rollouts an off-policy run had sampled ahead when it checkpointed, as a finished future."""
    if ckpt is None or not (ckpt / "pending_rollouts.pkl").is_file():
        return None
    future: Future = Future()
    future.set_result(pickle.loads((ckpt / "pending_rollouts.pkl").read_bytes()))
    return future


def before_state(before: dict) -> dict:
    """The accuracy before RL as ``summary.json`` and checkpoints keep it."""
    return {"accuracy_before_rl": before["accuracy"],
            **({"sampled_accuracy_before_rl": before["accuracy/sampled"]} if "accuracy/sampled" in before else {})}


def finish(run: Run, started: float) -> dict:
    """Held-out accuracy after RL, the last metrics line, ``summary.json``; the workers closed."""
    recipe = run.recipe
    say("scoring the held-out set after RL")
    after = run.evaluate(recipe.train.steps, "after")
    run.tracker.log({"step": recipe.train.steps, **after, **before_state(run.before)})
    run.tracker.close()
    ray.get(run.reward.close.remote())
    summary = {"run_dir": str(run.dir), **before_state(run.before), "accuracy_after_rl": after["accuracy"],
               **({"sampled_accuracy_after_rl": after["accuracy/sampled"]} if "accuracy/sampled" in after else {}),
               "steps": recipe.train.steps, "wall_seconds": round(time.perf_counter() - started, 1),
               "rollout_engine": recipe.rollout.engine}
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"held-out accuracy after SFT: {describe_accuracy(run.before)}; after {recipe.train.steps} RL steps: "
        f"{describe_accuracy(after)}")
    say(f"run directory: {run.dir}  (traces: rlwhf.traces.load({str(run.dir)!r}))")
    return summary
