"""Weight sync through vLLM's weight-transfer API (``sync.transport: collective``) on this CPU: the
same round vLLM's NCCL trainer engine drives on GPUs, over gloo, into two real vLLM engines."""

import json
from pathlib import Path

import pytest
import ray
import torch
from conftest import SHORT, run_cli

from rlwhf.actors import RolloutEngines
from rlwhf.config import load_recipe
from rlwhf.rollout import SamplingSettings
from rlwhf.train.distributed import free_address

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Q: 12+34=?\n", "Q: 905+77=?\n", "Q: 5+5=?\n", "Q: 640+12=?\n"]


def trainer_model(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    model.config.output_router_logits = False
    return model


def hf_logprobs(model, prompt_ids, completion_ids):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt_ids + completion_ids])).logits[0, :-1].float(), -1)
    start = len(prompt_ids) - 1
    return [logp[start + i, t].item() for i, t in enumerate(completion_ids)]


def perturb(model, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def test_the_weight_source_yields_the_checkpoint_layout_it_declares(tiny_model):
    from transformers.core_model_loading import revert_weight_conversion

    from rlwhf.sync.weight_transfer import CheckpointLayoutSource

    model = trainer_model(tiny_model)
    source = CheckpointLayoutSource(model, torch.bfloat16)
    sent = list(source)
    assert [(m.name, m.dtype, m.shape) for m in source.metadata()] == [(n, t.dtype, tuple(t.shape)) for n, t in sent]
    whole = revert_weight_conversion(model, {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    assert sorted(n for n, _ in sent) == sorted(whole)  # per layer, the same conversion as of the whole model
    assert any(".experts.3.gate_proj." in n for n, _ in sent)  # fused experts split back into the checkpoint's
    for name, tensor in sent:
        assert torch.equal(tensor, whole[name]), name


@pytest.mark.slow
def test_the_trainer_broadcasts_its_weights_into_two_engines_and_reconnects(tiny_model, local_ray, tmp_path):
    from rlwhf.sync.weight_transfer import connect

    recipe = load_recipe(None, ["resources.rollout_engines=2", "sft.enabled=false", "sync.transport=collective"])
    group = RolloutEngines(recipe, tiny_model, None, tmp_path, seed=0, max_model_len=128, weight_transfer=True)
    model = trainer_model(tiny_model)
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    before = [g.completions[0].token_ids for g in group.generate(PROMPTS, greedy)]
    for round_ in range(2):  # the second time in a new group, as after an engine restart
        transfer = connect(model, torch.float32, group.engines, 1, rank=0, address=free_address(), device_type="cpu")
        perturb(model, round_)
        transfer.send_weights()
        groups = group.generate(PROMPTS, greedy)  # two prompts from each engine
        for g in groups:
            c = g.completions[0]
            assert c.logprobs == pytest.approx(hf_logprobs(model, g.prompt_ids, c.token_ids), abs=2e-3)
        transfer.shutdown()
    assert [g.completions[0].token_ids for g in groups] != before
    for engine in group.engines:
        ray.kill(engine)


def rewards_of(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in rows if "reward/mean" in m]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_collective_sync_trains_like_the_object_store_and_survives_a_dying_engine(tmp_path):
    # Two FSDP2 policy workers and two vLLM engines; in the collective run an engine is killed with
    # SIGKILL during its 4th sampling call (step 2), so the transfer group is formed again.
    common = [*SHORT, "train.steps=3", "train.save_every=0"]
    run_cli(
        "train", ROOT / "recipes" / "tiny-sharded.yaml", *common, f"run.output_dir={tmp_path / 'store'}", cwd=tmp_path
    )
    run_cli(
        "train",
        ROOT / "recipes" / "tiny-sharded.yaml",
        *common,
        f"run.output_dir={tmp_path / 'collective'}",
        "sync.transport=collective",
        cwd=tmp_path,
        env={"RLWHF_FAULT": "engine@4", "RLWHF_FAULT_MARK": str(tmp_path / "engine-killed")},
    )
    assert (tmp_path / "engine-killed").is_file(), "the engine was not killed: the test tested nothing"
    store, collective = (rewards_of(tmp_path / kind / "tiny-sharded") for kind in ("store", "collective"))
    assert [m["reward/mean"] for m in collective] == [m["reward/mean"] for m in store]
    assert [m["loss"] for m in collective] == pytest.approx([m["loss"] for m in store], abs=1e-6)
    assert max(m["workers/restarts"] for m in collective) >= 1
    # the same weights travel either way: checkpoint layout in the broadcast, in-memory in the buckets
    assert all(m["sync/bytes"] > 0 and "sync/buckets" not in m for m in collective)
