"""`rlwhf plan`: the policy's size and each device's memory before anything starts, for every shipped recipe."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlwhf.commands.plan import load_model_config, model_size, plan_text, trainer_memory
from rlwhf.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))


def plan(recipe: str, *args: str, fits: bool = True) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "plan", str(ROOT / "recipes" / recipe), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == (0 if fits else 1), proc.stderr  # exit 1: a device cannot hold its part
    return proc.stdout


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_has_a_plan(recipe):
    text = plan_text(load_recipe(ROOT / "recipes" / recipe))
    assert "parameters" in text and "peak" in text and "KV cache" in text and "placement:" in text


def test_the_30b_recipes_say_plainly_that_one_gpu_cannot_hold_them():
    text = plan("qwen3-30b-a3b-dapo.yaml", "--gpu-memory", "80")
    assert "Qwen/Qwen3-30B-A3B-Base: 30.53B parameters, 3.35B active per token (8 of 128 experts)" in text
    one_gpu = plan("qwen3-30b-a3b-dapo.yaml", "resources.policy_workers=1", "--gpu-memory", "141", fits=False)
    assert "does NOT fit" in one_gpu and "shard the policy over at least 4 such GPUs" in one_gpu
    # As shipped: 2 nodes x 8 GPUs, the policy over 12, one 4-GPU engine.
    assert "trainer: " in text and "available: fits" in text and "16 GPUs in all" in text
    eight = plan(
        "qwen3-30b-a3b-dapo.yaml",
        "resources.policy_workers=8",
        "resources.rollout_engines=2",
        "--gpu-memory",
        "80",
        fits=False,
    )
    assert "16 GPUs in all" in eight and "does NOT fit" in eight


def test_plan_refuses_a_gpu_memory_that_is_no_size():
    proc = subprocess.run(
        [sys.executable, "-m", "rlwhf.cli", "plan", str(ROOT / "recipes" / "tiny.yaml"), "--gpu-memory", "-5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "--gpu-memory" in proc.stderr and "Traceback" not in proc.stderr


def test_parameter_counts_are_the_real_models_and_the_estimate_follows_the_settings(tiny_model):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(None, [f"model.path={tiny_model}", "sft.enabled=false"])
    size = model_size(load_model_config(recipe))
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert size.total == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert size.active == size.total - experts + experts * 2 // 8  # top-2 of 8 experts
    whole = trainer_memory(recipe, size)
    assert trainer_memory(recipe, size, micro_batch_tokens=1024).activations < whole.activations
    assert trainer_memory(recipe, size, gradient_checkpointing=True).activations < whole.activations
    assert whole.weights == whole.gradients == 4 * size.total and whole.optimizer == 8 * size.total


def test_a_hub_model_that_cannot_be_read_offline_is_refused_with_what_would_work():
    recipe = load_recipe(None, ["model.path=someone/unknown-model", "sft.enabled=false"])
    with pytest.raises(ValueError, match="no local directory, no copy in the Hugging Face cache"):
        load_model_config(recipe)


def test_the_one_gpu_example_of_the_docs_plans_offline(tmp_path):
    """docs/real-models.md's recipe, planned as its reader would, with no Hub in reach."""
    import re

    page = (ROOT / "docs" / "real-models.md").read_text()
    example = tmp_path / "my-recipe.yaml"
    example.write_text(re.findall(r"```yaml\n(.*?)```", page, re.S)[0])
    text = plan_text(load_recipe(example), 80.0)
    assert "Qwen/Qwen2.5-1.5B-Instruct: 1.54B parameters" in text and "fits" in text and "NOT" not in text
