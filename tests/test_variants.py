"""The default recipe and each optimizer-variant recipe run a short real GRPO loop (Ray, vLLM, rewards in processes).

The 20-step SFT model of the short settings never answers correctly, so these runs add the
length reward, whose values differ within a group: every variant then takes real updates.
"""

import json
from pathlib import Path

import pytest
from conftest import SHORT, run_cli

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["tiny", "tiny-grpo", "tiny-dr-grpo", "tiny-dapo", "tiny-gspo", "tiny-rloo", "tiny-async"]
VARYING_REWARD = (
    "rewards.funcs=[{name: math_accuracy}, {name: format, weight: 0.1}, "
    "{name: length_penalty, weight: 1.0, kwargs: {max_chars: 80}}]"
)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("variants")  # shared, so the SFT cache serves every variant


def step_metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "reward/mean" in m]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_recipe_runs_and_updates(variant, runs_dir):
    run_cli(
        "train",
        ROOT / "recipes" / f"{variant}.yaml",
        *SHORT,
        VARYING_REWARD,
        "train.steps=3",
        "train.learning_rate=3e-3",
        "train.warmup_steps=0",
        f"run.output_dir={runs_dir}",
        cwd=runs_dir,
    )
    run_dir = runs_dir / variant
    lines = step_metrics(run_dir)
    assert [m["step"] for m in lines] == [1, 2, 3]
    # At temperature 0.4 the short SFT model's samples of a prompt often all score the same; when
    # every group of a step does, even after resampling, DAPO skips that step's update (and says so).
    metrics = [m for m in lines if not m.get("update/skipped")]
    assert metrics, "every step was skipped"
    assert variant in ("tiny", "tiny-dapo") or len(metrics) == 3, "only dynamic sampling may skip a step"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
    assert any(m["grad_norm"] > 0 for m in metrics), "no variant step had a gradient"
    for key in (
        "clip_fraction_low",
        "clip_fraction_high",
        "ratio_mean",
        "ratio_max",
        "approx_kl",
        "entropy",
        "advantage/std",
        "groups/zero_variance_frac",
        "rollout/logp_diff_abs_mean",
        "tokens_per_s/rollout",
        "tokens_per_s/train",
        "moe/max_load_ratio",
    ):
        assert key in metrics[0], key
    # Expert load: every layer's shares over its 8 experts sum to one.
    for layer in range(4):
        assert sum(metrics[0][f"moe/load/L{layer}/E{e}"] for e in range(8)) == pytest.approx(1.0)

    mismatch = [m["rollout/logp_diff_abs_mean"] for m in metrics]
    if variant == "tiny-async":
        # Steps 2 and 3 were sampled before the previous step's update: where that update changed
        # the weights, the rollout log-probs are stale.
        after_update = [mismatch[i] for i in (1, 2) if metrics[i - 1]["grad_norm"] > 0]
        assert after_update and min(after_update) > 1e-3, mismatch
    else:
        assert max(mismatch) < 1e-3, mismatch  # synchronous: same weights, only kernel noise
    # GSPO's one ratio per completion reached the loss: its tokens never disagree, even in the second
    # minibatch, where the ratio has moved away from 1; token-level ratios there do disagree.
    moved = [m for m in metrics if m["ratio_max"] > 1 + 1e-6]
    if variant == "tiny-gspo":
        assert moved and all(m["ratio_spread"] == 0.0 for m in metrics), metrics
    elif variant == "tiny-dapo":
        assert moved and any(m["ratio_spread"] > 0.0 for m in moved)
    if variant in ("tiny", "tiny-dapo"):  # the default recipe is DAPO at a lower temperature
        assert all(m["groups/sampling_rounds"] >= 1 for m in metrics)
        assert (run_dir / "config.yaml").read_text().count("dynamic_sampling: true") == 1


@pytest.mark.slow
def test_dapo_step_without_signal_is_still_logged_evaluated_and_checkpointed(runs_dir):
    # A reward that scores every completion 0: every group is all-equal, so dynamic sampling finds
    # nothing to learn from in any round and every update is skipped.
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-dapo.yaml",
        *SHORT,
        "run.name=no-signal",
        "train.steps=2",
        "train.eval_every=1",
        "algo.overlong_penalty=false",
        "rewards.accuracy=length_penalty",
        "rewards.funcs=[{name: length_penalty, kwargs: {max_chars: 100000}}]",
        f"run.output_dir={runs_dir}",
        cwd=runs_dir,
        paying=(),
    )
    run_dir = runs_dir / "no-signal"
    lines = step_metrics(run_dir)
    assert [(m["step"], m["update/skipped"]) for m in lines] == [(1, 1), (2, 1)]
    assert all(m["reward/mean"] == 0.0 and m["groups/zero_variance_frac"] == 1.0 for m in lines)
    assert lines[0]["groups/sampling_rounds"] == 3 and "accuracy" in lines[0]
    assert (run_dir / "checkpoints" / "step_2" / "config.json").exists()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_kl_folded_into_the_reward_lowers_it_by_the_policys_distance_from_the_reference(runs_dir):
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-grpo.yaml",
        *SHORT,
        VARYING_REWARD,
        "run.name=kl-in-reward",
        "train.steps=2",
        "train.learning_rate=3e-3",
        "train.warmup_steps=0",
        "algo.kl_in_reward=true",
        "algo.kl_coef=0.5",
        f"run.output_dir={runs_dir}",
        cwd=runs_dir,
    )
    second = step_metrics(runs_dir / "kl-in-reward")[1]
    unpenalised = (
        second["reward/math_accuracy/mean"] + 0.1 * second["reward/format/mean"] + second["reward/length_penalty/mean"]
    )
    # Step 1 trained the policy away from the reference, so step 2's summed k3 estimates are positive.
    assert second["reward/mean"] < unpenalised - 1e-4, second
    assert second["kl"] == 0.0  # folded into the reward, not added to the loss
