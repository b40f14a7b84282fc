"""The driver: one readable loop over GRPO steps (single controller).

Per step, as in DESIGN.md: take B prompts; sample G completions each with their log-probs; score
every completion with every reward; group-relative advantages; clipped policy-gradient updates;
push the new weights into the running rollout engine; write metrics, traces and checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from rlwhf.algo import group_advantages, overlong_penalty, scale_negative, zero_variance_groups
from rlwhf.config import Recipe
from rlwhf.data.source import PromptSource, load_task
from rlwhf.reward_runner import GroupToScore
from rlwhf.rollout.base import SamplingSettings
from rlwhf.tracking import Tracker
from rlwhf.train.batch import pack
from rlwhf.workers import PolicyWorker, RewardWorker, RolloutWorker, cold_start_sft_task, init_ray, remote


def say(msg: str) -> None:
    tqdm.write(f"[rlwhf] {msg}")


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return ckpts[-1] if ckpts else None


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    run_dir = recipe.run.dir
    if run_dir.exists() and not resume:
        if not recipe.run.overwrite:
            raise FileExistsError(f"run directory {run_dir} exists; resume it with `rlwhf train --resume "
                                  f"{run_dir}`, pick another run.name, or set run.overwrite=true")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(recipe.to_yaml())
    return run_dir


def prepare_policy(recipe: Recipe, run_dir: Path, train_rows: list[dict]) -> str:
    """The starting policy: build the tiny model if asked, then the cold-start SFT (both cached)."""
    from rlwhf.models.tiny import build_tiny_moe

    path = recipe.model.path
    if path == "tiny":
        path = str(run_dir / "model" / "init")
        if not Path(path, "config.json").exists():
            say(f"building a tiny Qwen3-MoE policy and tokenizer in {path}")
            build_tiny_moe(path, recipe.model.tiny, seed=recipe.run.seed)
    if not recipe.sft.enabled:
        return path
    sft_dir = run_dir / "model" / "sft"
    use_cache = recipe.sft.cache and recipe.model.path == "tiny"
    cached = sft_cache_dir(recipe)
    if use_cache and not (sft_dir / "config.json").exists() and (cached / "config.json").exists():
        say(f"cold-start SFT: reusing {cached} (same model, data, SFT settings and seed)")
        shutil.copytree(cached, sft_dir, dirs_exist_ok=True)
    if not (sft_dir / "config.json").exists():
        rows = [r for r in train_rows if r.get("solution")][: recipe.sft.num_examples]
        if not rows:
            raise ValueError("sft.enabled needs training rows with a 'solution' column; set sft.enabled=false")
        say(f"cold-start SFT: {recipe.sft.steps} steps on {len(rows)} solver traces")
        t0 = time.perf_counter()
        threads = ray.get(cold_start_sft_task.remote(
            path, rows, str(sft_dir), steps=recipe.sft.steps, batch_size=recipe.sft.batch_size,
            learning_rate=recipe.sft.learning_rate, seed=recipe.run.seed))
        say(f"cold-start SFT done in {time.perf_counter() - t0:.0f} s on {threads} threads")
        if use_cache:
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.copytree(sft_dir, tmp, dirs_exist_ok=True)
            tmp.rename(cached)
    return str(sft_dir)


# Part of the SFT cache key: raise it when a change makes the same settings train a different model
# (2: the SFT runs on every core, which rounds differently from one).
SFT_CACHE_VERSION = 2


def sft_cache_dir(recipe: Recipe) -> Path:
    """Where an SFT'd tiny model is kept for reuse by runs with the same model, data, SFT and seed."""
    key = json.dumps([recipe.model.model_dump(mode="json"), recipe.data.model_dump(mode="json"),
                      recipe.sft.model_dump(mode="json", exclude={"cache"}), recipe.run.seed, SFT_CACHE_VERSION],
                     sort_keys=True)
    return Path(recipe.run.output_dir) / ".sft-cache" / hashlib.sha256(key.encode()).hexdigest()[:16]


def columns_of(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("prompt", "solution")}


def sample_and_score(rollout, reward, rows, sampling):
    t0 = time.perf_counter()
    groups = ray.get(rollout.generate.remote([r["prompt"] for r in rows], sampling))
    t1 = time.perf_counter()
    scores = ray.get(reward.score.remote([
        GroupToScore(g.prompt, [c.text for c in g.completions], columns_of(r)) for g, r in zip(groups, rows)]))
    return groups, scores, t1 - t0, time.perf_counter() - t1


def trace_rows(step, rows, groups, scores, advantages=None):
    out, i = [], 0
    for p, (row, g) in enumerate(zip(rows, groups)):
        for k, c in enumerate(g.completions):
            rec = {"step": step, "prompt_index": p, "sample_index": k, "prompt": g.prompt, "completion": c.text,
                   "answer": str(row.get("answer", "")), "reward": scores.total[i],
                   "advantage": float(advantages[i]) if advantages is not None else float("nan"),
                   "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason}
            for name, values in scores.per_reward.items():
                rec[f"reward_{name}"] = values[i]
            out.append(rec)
            i += 1
    return out


def evaluate(recipe, rollout, reward, rows, tracker, step, tag) -> dict:
    """Held-out accuracy over ``eval.num_prompts`` prompts: ``accuracy`` is greedy decoding's;
    ``accuracy/sampled`` the mean over ``eval.samples`` completions per prompt at the rollout
    temperature (what the policy gradient optimises), when asked for."""
    rows = rows[: recipe.eval.num_prompts]
    acc = recipe.rewards.accuracy
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=recipe.eval.max_new_tokens, seed=0)
    groups, scores, _, _ = sample_and_score(rollout, reward, rows, greedy)
    tracker.write_traces(step, trace_rows(step, rows, groups, scores), tag=f"eval_{tag}")
    out = {"accuracy": float(np.mean([s or 0.0 for s in scores.per_reward[acc]]))}
    if recipe.eval.samples:
        rc = recipe.rollout
        sampled = SamplingSettings(n=recipe.eval.samples, temperature=rc.temperature, top_p=rc.top_p,
                                   max_new_tokens=recipe.eval.max_new_tokens, seed=1)
        _, scores, _, _ = sample_and_score(rollout, reward, rows, sampled)
        out["accuracy/sampled"] = float(np.mean([s or 0.0 for s in scores.per_reward[acc]]))
    return out


def describe_accuracy(result: dict) -> str:
    text = f"{result['accuracy']:.1%} greedy"
    return text + (f", {result['accuracy/sampled']:.1%} sampled" if "accuracy/sampled" in result else "")


def train(recipe: Recipe, resume: bool = False) -> dict:
    started = time.perf_counter()
    run_dir = prepare_run_dir(recipe, resume)
    init_ray(recipe.ray.address, recipe.ray.num_cpus)
    data = load_task(recipe.data, recipe.run.seed)
    if recipe.rewards.accuracy not in {s.name for s in recipe.rewards.funcs}:
        raise ValueError(f"rewards.accuracy {recipe.rewards.accuracy!r} is not among rewards.funcs")
    ckpt = latest_checkpoint(run_dir) if resume else None
    state = json.loads((ckpt / "loop_state.json").read_text()) if ckpt else {}
    model_path = str(ckpt) if ckpt else prepare_policy(recipe, run_dir, data.train)

    gpus = 1 if torch.cuda.is_available() else 0
    rc = recipe.rollout
    rollout = remote(RolloutWorker, gpus * 0.5).remote(
        rc.engine, model_path, shared_cores=recipe.train.off_policy_steps > 0, dtype=recipe.model.dtype,
        seed=recipe.run.seed, kv_cache_gib=rc.kv_cache_gib,
        max_model_len=rc.max_prompt_tokens + max(rc.max_new_tokens, recipe.eval.max_new_tokens),
        gpu_memory_utilization=rc.gpu_memory_utilization)
    policy = remote(PolicyWorker, gpus * 0.5).remote(
        model_path, recipe.algo, recipe.train, temperature=rc.temperature, max_new_tokens=rc.max_new_tokens,
        seed=recipe.run.seed, dtype=recipe.model.dtype, resume_from=str(ckpt) if ckpt else None)
    reward = remote(RewardWorker).remote(recipe.rewards.funcs, recipe.rewards.timeout_s, recipe.rewards.num_workers)
    tracker = Tracker(run_dir, use_wandb=recipe.tracking.wandb, project=recipe.tracking.wandb_project,
                      run_name=recipe.run.name, config=recipe.model_dump(mode="json"), resume=bool(ckpt))
    source = PromptSource(data.train, recipe.run.seed, cursor=state.get("cursor", 0))
    start_step = state.get("step", 0)

    if "accuracy_before_rl" in state:
        before = {"accuracy": state["accuracy_before_rl"]}
        if "sampled_accuracy_before_rl" in state:
            before["accuracy/sampled"] = state["sampled_accuracy_before_rl"]
    else:
        before = evaluate(recipe, rollout, reward, data.test, tracker, 0, "before")
        say(f"held-out accuracy before RL: {describe_accuracy(before)}")
    before_state = {"accuracy_before_rl": before["accuracy"],
                    **({"sampled_accuracy_before_rl": before["accuracy/sampled"]} if "accuracy/sampled" in before else {})}
    G, B = rc.group_size, recipe.train.prompts_per_step
    sampling = SamplingSettings(n=G, temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.max_new_tokens)

    def collect(step: int) -> Collected:
        """One step's rollouts and rewards; DAPO dynamic sampling keeps only informative groups."""
        out = Collected()
        while len(out.rows) < B and out.rounds < recipe.algo.max_sampling_rounds:
            batch_rows = source.next_batch(B - len(out.rows) if recipe.algo.dynamic_sampling else B)
            settings = dataclasses.replace(sampling, seed=recipe.run.seed * 1_000_003 + step * 101 + out.rounds)
            g, s, tr, tw = sample_and_score(rollout, reward, batch_rows, settings)
            out.t_rollout, out.t_reward, out.rounds = out.t_rollout + tr, out.t_reward + tw, out.rounds + 1
            for name in s.errors:
                out.errors[name] = out.errors.get(name, 0) + s.errors[name] + s.timeouts[name]
            for m in s.messages[:3]:
                say(m)
            total = torch.tensor(s.total)
            if recipe.algo.overlong_penalty:
                lengths = torch.tensor([len(c.token_ids) for grp in g for c in grp.completions], dtype=torch.float)
                total = total + overlong_penalty(lengths, rc.max_new_tokens, recipe.algo.overlong_cache)
            zero_var = zero_variance_groups(total, G)
            out.seen_totals.extend(total.tolist())
            out.seen_lengths.extend(len(c.token_ids) for grp in g for c in grp.completions)
            if out.rounds == 1:
                out.zero_var_frac = float(zero_var.float().mean())
            for i in range(len(batch_rows)):
                if recipe.algo.dynamic_sampling and zero_var[i]:
                    continue
                out.rows.append(batch_rows[i])
                out.groups.append(g[i])
                out.totals.extend(total[i * G:(i + 1) * G].tolist())
                for name, values in s.per_reward.items():
                    out.per_reward.setdefault(name, []).extend(values[i * G:(i + 1) * G])
            if not recipe.algo.dynamic_sampling:
                break
        return out

    def update(step: int, collected: Collected) -> tuple[dict, torch.Tensor]:
        """Steps 4-6 on one step's kept groups: advantages, the policy update, the weight sync; its metrics."""
        groups, totals, per_reward = collected.groups, collected.totals, collected.per_reward
        completions = [c for grp in groups for c in grp.completions]
        batch = pack([grp.prompt_ids for grp in groups for _ in grp.completions], [c.token_ids for c in completions],
                     [c.logprobs for c in completions], [0.0] * len(completions),
                     [c.finish_reason == "length" for c in completions], pad_id=0)
        rewards_t = torch.tensor(totals)
        if recipe.algo.kl_in_reward and recipe.algo.kl_coef > 0:
            rewards_t = rewards_t - recipe.algo.kl_coef * torch.tensor(ray.get(policy.sequence_kl.remote(batch)))
        # 4. group-relative advantages
        batch.advantages = group_advantages(rewards_t, G, estimator=recipe.algo.advantage, eps=recipe.algo.eps,
                                            batch_std_norm=recipe.algo.batch_std_norm)
        if recipe.algo.negative_scale != 1.0:
            batch.advantages = scale_negative(batch.advantages, recipe.algo.negative_scale)
        # 5. policy update
        t0 = time.perf_counter()
        train_metrics = ray.get(policy.train_on.remote(batch))
        t_train = time.perf_counter() - t0
        train_tokens = int(batch.attention_mask.sum())
        # 6. new weights into the running rollout engine
        t0 = time.perf_counter()
        ray.get(rollout.update_weights.remote(policy.state_dict.remote()))
        t_sync = time.perf_counter() - t0
        lengths = np.array([len(c.token_ids) for c in completions])
        metrics = {"step": step + 1, "reward/mean": float(rewards_t.mean()), "reward/std": float(rewards_t.std()),
                   **{f"reward/{n}/mean": float(np.mean([v or 0.0 for v in vals])) for n, vals in per_reward.items()},
                   **{f"reward/{n}/errors": c for n, c in collected.errors.items()},
                   "response_length/mean": float(lengths.mean()), "response_length/max": int(lengths.max()),
                   "response_length/truncated_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
                   "groups/zero_variance_frac": collected.zero_var_frac, "groups/sampling_rounds": collected.rounds,
                   "advantage/mean": float(batch.advantages.mean()), "advantage/std": float(batch.advantages.std()),
                   **train_metrics,
                   "time/rollout": collected.t_rollout, "time/reward": collected.t_reward, "time/train": t_train,
                   "time/sync": t_sync, "tokens_per_s/rollout": float(lengths.sum() / max(collected.t_rollout, 1e-9)),
                   "tokens_per_s/train": train_tokens / max(t_train, 1e-9)}
        return metrics, batch.advantages

    prefetch = ThreadPoolExecutor(1) if recipe.train.off_policy_steps else None
    pending = None
    bar = tqdm(range(start_step, recipe.train.steps), desc="GRPO", unit="step", initial=start_step,
               total=recipe.train.steps)
    for step in bar:
        t_step = time.perf_counter()
        # 1-3. prompts -> G completions each -> rewards; in one-step off-policy mode these were
        # sampled in the background, by the weights before the previous update, while it trained.
        collected = pending.result() if pending is not None else collect(step)
        trained_cursor = source.cursor  # a checkpoint resumes here, re-reading any prefetched prompts
        pending = prefetch.submit(collect, step + 1) if prefetch and step + 1 < recipe.train.steps else None
        if collected.rows:
            metrics, advantages = update(step, collected)
        else:
            # Every group scored all-equal even after resampling: nothing to learn from, but the step
            # is still logged, evaluated and checkpointed on schedule.
            say(f"step {step + 1}: every group had equal rewards in {collected.rounds} rounds; skipping the update")
            metrics = {"step": step + 1, "update/skipped": 1, "reward/mean": float(np.mean(collected.seen_totals)),
                       **{f"reward/{n}/errors": c for n, c in collected.errors.items()},
                       "response_length/mean": float(np.mean(collected.seen_lengths)),
                       "groups/zero_variance_frac": collected.zero_var_frac,
                       "groups/sampling_rounds": collected.rounds,
                       "time/rollout": collected.t_rollout, "time/reward": collected.t_reward}
        # 7. metrics, traces, checkpoints
        if recipe.train.eval_every and (step + 1) % recipe.train.eval_every == 0 and step + 1 < recipe.train.steps:
            metrics.update(evaluate(recipe, rollout, reward, data.test, tracker, step + 1, f"step{step + 1}"))
        metrics["time/step"] = time.perf_counter() - t_step
        tracker.log(metrics)
        if recipe.tracking.traces and collected.rows:
            tracker.write_traces(step + 1, trace_rows(step + 1, collected.rows, collected.groups,
                                                      _Scores(collected.per_reward, collected.totals), advantages))
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get(f'reward/{recipe.rewards.accuracy}/mean', 0):.2f}",
                        len=f"{metrics['response_length/mean']:.0f}")
        done = step + 1 == recipe.train.steps
        if done or (recipe.train.save_every and (step + 1) % recipe.train.save_every == 0):
            ray.get(policy.save.remote(str(run_dir / "checkpoints" / f"step_{step + 1}"), {
                "step": step + 1, "cursor": trained_cursor, **before_state}))

    if prefetch:
        prefetch.shutdown()
    after = evaluate(recipe, rollout, reward, data.test, tracker, recipe.train.steps, "after")
    tracker.log({"step": recipe.train.steps, **after, **before_state})
    tracker.close()
    ray.get(reward.close.remote())
    summary = {"run_dir": str(run_dir), **before_state, "accuracy_after_rl": after["accuracy"],
               **({"sampled_accuracy_after_rl": after["accuracy/sampled"]} if "accuracy/sampled" in after else {}),
               "steps": recipe.train.steps, "wall_seconds": round(time.perf_counter() - started, 1),
               "rollout_engine": rc.engine}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"held-out accuracy after SFT: {describe_accuracy(before)}; after {recipe.train.steps} RL steps: "
        f"{describe_accuracy(after)}")
    say(f"run directory: {run_dir}  (traces: rlwhf.traces.load({str(run_dir)!r}))")
    return summary


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


class _Scores:
    """The kept groups' scores, in the shape ``trace_rows`` reads."""

    def __init__(self, per_reward, total):
        self.per_reward, self.total = per_reward, total
