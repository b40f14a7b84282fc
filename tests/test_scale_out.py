"""The distributed path on this CPU: the policy sharded over two workers, two rollout engines, weights
streamed to them in buckets, a rollout engine that dies mid-step, and a resume onto one worker."""

import json
from pathlib import Path

import pytest
import ray
from conftest import SHORT, run_cli

from rlwhf.actors import RewardScorer, RolloutEngines, _actor, reserve
from rlwhf.config import load_recipe
from rlwhf.reward_runner import GroupToScore
from rlwhf.rollout import SamplingSettings
from rlwhf.workers import PolicyWorker, init_ray

ROOT = Path(__file__).resolve().parent.parent


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_sharded_recipe_trains_survives_a_dying_engine_and_resumes_onto_one_worker(tmp_path):
    # Two policy workers (FSDP2 over gloo) and two vLLM engines; one engine is killed with SIGKILL
    # during its 4th sampling call (step 2: the held-out evaluation made two calls before step 1).
    common = [*SHORT, "sync.bucket_mb=1", f"run.output_dir={tmp_path}"]
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-sharded.yaml",
        *common,
        "train.steps=3",
        cwd=tmp_path,
        env={"RLWHF_FAULT": "engine@4", "RLWHF_FAULT_MARK": str(tmp_path / "engine-killed")},
    )
    run = tmp_path / "tiny-sharded"
    assert (tmp_path / "engine-killed").is_file(), "the engine was not killed: the test tested nothing"
    steps = [m for m in metrics_of(run) if "reward/mean" in m and not m.get("update/skipped")]
    assert steps and max(m["workers/restarts"] for m in steps) >= 1
    assert all(m["sync/buckets"] > 1 and m["sync/bytes"] > 0 for m in steps)  # 1 MiB buckets of a 7 MiB model
    assert (run / "logs" / "policy-0.log").is_file() and (run / "logs" / "rollout-1.log").is_file()
    # The sharded checkpoint resumes onto a single policy worker and one engine.
    run_cli(
        "train",
        "--resume",
        run,
        "train.steps=4",
        "resources.policy_workers=1",
        "resources.rollout_engines=1",
        cwd=tmp_path,
    )
    assert [m["step"] for m in metrics_of(run) if "reward/mean" in m] == [1, 2, 3, 4]


@pytest.mark.slow
def test_completions_do_not_depend_on_the_number_of_engines(tiny_model, local_ray, tmp_path):
    prompts = [f"Q: {a}+{b}=?\n" for a, b in [(12, 34), (905, 77), (5, 5), (640, 12), (3, 999)]]
    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    completions = []
    for engines in (1, 2):
        recipe = load_recipe(None, [f"resources.rollout_engines={engines}", "sft.enabled=false"])
        group = RolloutEngines(recipe, tiny_model, None, tmp_path, seed=0, max_model_len=128)
        completions.append([[c.token_ids for c in g.completions] for g in group.generate(prompts, sampling)])
        for engine in group.engines:
            ray.kill(engine)
    assert completions[0] == completions[1]
    assert len({tuple(c) for g in completions[0] for c in g}) > 5  # they are samples, not one repeated string


@pytest.mark.slow
def test_a_reward_worker_killed_mid_call_is_restarted_and_asked_again(tmp_path, monkeypatch):
    # The reward worker SIGKILLs itself in its first call (once: the mark file spares its successor).
    mark = tmp_path / "reward-killed"
    monkeypatch.setenv("RLWHF_FAULT", "reward@1")
    monkeypatch.setenv("RLWHF_FAULT_MARK", str(mark))
    ray.shutdown()
    init_ray(None, 2)  # its workers inherit the environment above
    try:
        group = RewardScorer(load_recipe(None, ["sft.enabled=false"]), tmp_path)
        right, wrong = "<think>\n12+34=46\n</think><answer>46</answer>", "<think>\n</think><answer>47</answer>"
        scores = group.score([GroupToScore("Q: 12+34=?\n", [right, wrong], {"answer": "46"})])
        assert mark.is_file(), "the reward worker was not killed: the test tested nothing"
        assert group.restarts == 1
        assert scores.per_reward["math_accuracy"] == [1.0, 0.0]
    finally:
        ray.shutdown()


def test_workers_that_reserve_cpus_are_placed_in_one_placement_group_that_must_fit():
    ray.shutdown()
    init_ray(None, 2)  # a node of 2 CPUs
    try:
        fits = load_recipe(
            None,
            [
                "resources.policy_workers=2",
                "resources.cpus_per_policy_worker=0.5",
                "resources.cpus_per_rollout_engine=1",
            ],
        ).resources
        assert reserve(load_recipe(None, []).resources) is None  # nothing reserved: no group
        pg = reserve(fits, timeout_s=60)
        assert [b["CPU"] for b in pg.bundle_specs] == [0.5, 0.5, 1]
        ranks = [_actor(PolicyWorker, 0.5, 0, (pg, 0), rank).remote() for rank in range(2)]
        assert all(port > 0 for _, port in ray.get([r.address.remote() for r in ranks]))
        table = ray.util.placement_group_table(pg)
        assert table["state"] == "CREATED"
        for actor in ranks:
            ray.kill(actor)
        ray.util.remove_placement_group(pg)
        too_many = load_recipe(None, ["resources.policy_workers=3", "resources.cpus_per_policy_worker=1"]).resources
        with pytest.raises(RuntimeError, match="cannot hold the workers"):
            reserve(too_many, timeout_s=5)
    finally:
        ray.shutdown()
