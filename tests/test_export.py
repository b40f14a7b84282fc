"""`rlwhf export`: a checkpoint becomes a plain Hugging Face folder, without trainer state, that
transformers loads with identical weights and vLLM decodes exactly as the trainer's model does."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlwhf.commands.export import export_model
from rlwhf.train.routing import ROUTING_BIAS_FILE

TRAINER_FILES = ("trainer_state.pt", "loop_state.json", "pending_rollouts.pkl", ROUTING_BIAS_FILE)


def fake_checkpoint(model_dir, ckpt: Path, step: int, bias: bool = False) -> Path:
    """A checkpoint's layout: the model's files plus the trainer's (rlwhf.train.policy.PolicyTrainer.save)."""
    shutil.copytree(model_dir, ckpt)
    torch.save({"optimizer": {}, "step": step}, ckpt / "trainer_state.pt")
    (ckpt / "loop_state.json").write_text(json.dumps({"step": step, "cursor": 4 * step}))
    (ckpt / "pending_rollouts.pkl").write_bytes(b"rollouts")
    if bias:
        torch.save(torch.zeros(4, 8), ckpt / ROUTING_BIAS_FILE)
    return ckpt


def same_weights(a: Path, b: Path, dtype=None) -> None:
    from transformers import AutoModelForCausalLM

    left = AutoModelForCausalLM.from_pretrained(a).state_dict()
    right = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        expected = tensor.to(dtype) if dtype else tensor
        assert right[name].dtype == expected.dtype and torch.equal(right[name], expected), name


def test_export_writes_a_plain_hf_folder_with_the_same_weights(tiny_model, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    ckpt = fake_checkpoint(tiny_model, tmp_path / "run" / "checkpoints" / "step_3", 3)
    out = export_model(ckpt, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "export.json",
    } <= names
    assert not names & set(TRAINER_FILES) and not list(tmp_path.glob("export.tmp"))
    same_weights(ckpt, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(ckpt).chat_template
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Q: 1+2=?\n"}], tokenize=False) == "Q: 1+2=?\n"
    generation = GenerationConfig.from_pretrained(out)
    assert (generation.eos_token_id, generation.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    info = json.loads((out / "export.json").read_text())
    assert info["source"] == str(ckpt.resolve()) and info["step"] == 3 and info["dtype"] == "float32"


def test_a_run_directory_exports_its_latest_complete_checkpoint(tiny_model, tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(tiny_model, run / "checkpoints" / "step_2", 2)
    fake_checkpoint(tiny_model, run / "checkpoints" / "step_10", 10)
    shutil.copytree(tiny_model, run / "checkpoints" / "step_12.tmp")  # a save still under way
    out = export_model(run, tmp_path / "export", dtype="bfloat16")
    info = json.loads((out / "export.json").read_text())
    assert info["step"] == 10 and info["dtype"] == "bfloat16"
    assert (run / "checkpoints" / "step_12.tmp").is_dir()  # exporting leaves a running run's save alone
    same_weights(run / "checkpoints" / "step_10", out, dtype=torch.bfloat16)


def test_export_refuses_bad_sources_and_outputs(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such file"):
        export_model(tmp_path / "nowhere", tmp_path / "out")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: {}\n")
    with pytest.raises(
        FileNotFoundError,
        match=r"run directory without a complete checkpoint .*step_N/ holding "
        r"loop_state.json",
    ):
        export_model(run, tmp_path / "out")
    (run / "checkpoints" / "step_1").mkdir(parents=True)  # killed before its loop state was written
    with pytest.raises(FileNotFoundError, match="without a complete checkpoint"):
        export_model(run, tmp_path / "out")
    with pytest.raises(ValueError, match="neither a model folder"):
        export_model(tmp_path, tmp_path / "elsewhere" / "out")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        export_model(tiny_model, tmp_path / "out", dtype="int8")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy exists and is not empty.*--overwrite"):
        export_model(tiny_model, busy)
    assert (busy / "notes.txt").read_text() == "mine"
    export_model(tiny_model, busy, overwrite=True)
    assert (busy / "model.safetensors").is_file() and not (busy / "notes.txt").exists()
    with pytest.raises(ValueError, match="overlaps the source"):
        export_model(busy, busy / "inner", overwrite=True)
    (tmp_path / "empty").mkdir()
    export_model(tiny_model, tmp_path / "empty")  # an empty folder is fine without --overwrite


def test_export_refuses_a_routing_bias_unless_told_to_drop_it(tiny_model, tmp_path):
    ckpt = fake_checkpoint(tiny_model, tmp_path / "step_5", 5, bias=True)
    with pytest.raises(ValueError, match=r"routing_bias.pt.*route without it.*--ignore-routing-bias"):
        export_model(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    with pytest.warns(UserWarning, match="exporting without it"):
        out = export_model(ckpt, tmp_path / "out", ignore_routing_bias=True)
    assert not (out / ROUTING_BIAS_FILE).exists()
    assert json.loads((out / "export.json").read_text())["routing_bias_dropped"] is True


def test_the_cli_prints_what_it_wrote_and_how_to_load_it(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from rlwhf.cli import app

    runner = CliRunner()
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", tiny_model, str(out), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output and "as bfloat16" in result.output
    assert f"vllm.LLM('{out}')" in result.output
    assert f"AutoModelForCausalLM.from_pretrained('{out}')" in result.output
    result = runner.invoke(app, ["export", tiny_model, str(out)])
    assert result.exit_code == 2 and "is not empty" in result.output
    ckpt = fake_checkpoint(tiny_model, tmp_path / "step_5", 5, bias=True)
    result = runner.invoke(app, ["export", str(ckpt), str(tmp_path / "biased")])
    assert result.exit_code == 2 and "--ignore-routing-bias" in result.output
    result = runner.invoke(app, ["export", str(ckpt), str(tmp_path / "biased"), "--ignore-routing-bias"])
    assert result.exit_code == 0 and "warning:" in result.output and "(step 5)" in result.output


@pytest.mark.slow
def test_vllm_decodes_the_export_of_a_real_run_as_the_trainers_model_does(short_run_dir, tmp_path):
    from conftest import run_cli
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlwhf.checkpoints import latest_checkpoint
    from rlwhf.rollout import SamplingSettings
    from rlwhf.rollout.vllm_engine import VLLMEngine

    ckpt = latest_checkpoint(short_run_dir)
    out = tmp_path / "exported"
    proc = run_cli("export", short_run_dir, out, cwd=tmp_path)
    assert f"(step {ckpt.name.split('_')[1]})" in proc.stdout and "vllm.LLM(" in proc.stdout
    assert not {p.name for p in out.iterdir()} & set(TRAINER_FILES)

    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = [
        f"Q: {a}+{b}=?\n"
        for a, b in [(12, 34), (905, 77), (348, 586), (61, 250), (7, 93), (480, 519), (23, 808), (999, 1)]
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id

    def until_eos(tokens):
        tokens = list(tokens)
        return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens

    trainer_model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for p in ids:
            generated = trainer_model.generate(
                torch.tensor([p]), do_sample=False, max_new_tokens=24, pad_token_id=tokenizer.pad_token_id
            )
            expected.append(until_eos(generated[0, len(p) :].tolist()))

    engine = VLLMEngine(str(out), dtype="float32", max_model_len=128)
    try:
        groups = engine.generate(ids, SamplingSettings(n=1, temperature=0.0, max_new_tokens=24, seed=0))
    finally:
        engine.close()
    got = [until_eos(g.completions[0].token_ids) for g in groups]
    assert got == expected
    assert all(len(t) > 4 for t in got)  # every prompt was answered, not stopped at once
