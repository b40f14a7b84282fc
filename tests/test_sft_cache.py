"""The cold-start SFT cache: a second run with the same inputs reuses the SFT'd model; sft.cache=false
trains afresh; a changed SFT setting gets its own entry."""

from pathlib import Path

from rlwhf.config import load_recipe
from rlwhf.data.source import load_task
from rlwhf.starting_policy import prepare_policy, sft_cache_dir

ROOT = Path(__file__).resolve().parent.parent


def recipe_in(out: Path, *overrides: str):
    return load_recipe(
        ROOT / "recipes" / "tiny.yaml",
        [
            f"run.output_dir={out}",
            "data.num_train=40",
            "data.num_test=4",
            "sft.steps=2",
            "sft.batch_size=4",
            *overrides,
        ],
    )


def prepare(recipe):
    run_dir = recipe.run.dir
    run_dir.mkdir(parents=True, exist_ok=True)
    return Path(prepare_policy(recipe, run_dir, load_task(recipe.data, recipe.run.seed).train))


def test_sft_cache_is_reused_only_when_enabled_and_inputs_match(tmp_path, local_ray):
    first = recipe_in(tmp_path, "run.name=first")
    sft = prepare(first)
    cached = sft_cache_dir(first)
    assert (sft / "config.json").is_file() and (cached / "config.json").is_file()
    # Mark the cache entry so a copy of it can be told apart from a fresh SFT.
    (cached / "from_cache").write_text("1")

    assert (prepare(recipe_in(tmp_path, "run.name=second")) / "from_cache").is_file()
    no_cache = recipe_in(tmp_path, "run.name=third", "sft.cache=false")
    assert sft_cache_dir(no_cache) == cached  # the switch itself is not part of the key
    assert not (prepare(no_cache) / "from_cache").exists()
    other = recipe_in(tmp_path, "run.name=fourth", "sft.learning_rate=1e-3")
    assert sft_cache_dir(other) != cached
    assert not (prepare(other) / "from_cache").exists()


def test_sft_cache_key_ignores_what_the_sft_does_not_read_and_changes_only_on_purpose(tmp_path):
    base = recipe_in(tmp_path)
    # The SFT trains in float32 whatever the RL's dtype: a bfloat16 run reuses the float32 run's SFT.
    assert sft_cache_dir(recipe_in(tmp_path, "model.dtype=bfloat16")) == sft_cache_dir(base)
    assert sft_cache_dir(recipe_in(tmp_path, "model.tiny.arch=deepseek_v3")) != sft_cache_dir(base)
    # The demo's key: a change of it makes every user's `make demo` redo its SFT, so it changes only with
    # SFT_CACHE_VERSION (a new recipe field changes it too: then raise the version, and this value).
    assert (
        sft_cache_dir(load_recipe(ROOT / "recipes" / "tiny.yaml", ["run.output_dir=runs"])).name == "b497fba3858d8516"
    )
