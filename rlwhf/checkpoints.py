"""The run directory on disk: creating it, writing checkpoints that are complete or absent,
rewinding a resumed run to its last checkpoint so that every step is recorded exactly once, and
stopping cleanly on a preemption notice.

A checkpoint is written into ``step_N.tmp``, every file fsynced, then renamed to ``step_N`` (a rename
within one file system is atomic), so a run killed at any moment leaves either the whole checkpoint
or a ``.tmp`` folder, which resuming removes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from rlwhf.models.gguf import PACKAGE_PREFIX, converted_dir, is_gguf

if TYPE_CHECKING:
    from rlwhf.config import Recipe

_CHECKPOINT = re.compile(r"step_(\d+)")


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    run_dir = recipe.run.dir
    if run_dir.exists() and not resume:
        if failed_start(run_dir):
            print(f"[rlwhf] replacing {run_dir}: a start that failed before its first step left it", flush=True)
        elif not recipe.run.overwrite:
            if newest_checkpoint(run_dir) is None:  # a run stopped after some steps but before its first save
                raise FileExistsError(
                    f"run directory {run_dir} holds steps but no checkpoint to resume; set run.overwrite=true "
                    "to start it again, or pick another run.name"
                )
            raise FileExistsError(
                f"run directory {run_dir} exists; resume it with `rlwhf train --resume "
                f"{run_dir}`, pick another run.name, or set run.overwrite=true"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(recipe.to_yaml())
    return run_dir


def failed_start(run_dir: Path) -> bool:
    """A run directory that records no step and holds no checkpoint: what a start that failed leaves
    (its config and logs). A new start replaces it without asking."""
    metrics = run_dir / "metrics.jsonl"
    stepped = metrics.is_file() and metrics.stat().st_size > 0
    return (run_dir / "config.yaml").is_file() and not stepped and newest_checkpoint(run_dir) is None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_directory(tmp: Path, final: Path) -> Path:
    """Make the finished folder ``tmp`` appear as ``final`` in one step, its contents on disk first.
    An older ``final`` is replaced; a crash part-way leaves it or the new one, never a mix."""
    for file in tmp.rglob("*"):
        if file.is_file():
            _fsync(file)
    _fsync(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _fsync(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run. Folders a killed save left behind (``step_N.tmp``,
    ``step_N.old``) are removed, after putting back a ``.old`` whose replacement never arrived."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    for old in folder.glob("step_*.old"):
        final = old.with_name(old.name.removesuffix(".old"))
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)
    for tmp in folder.glob("step_*.tmp"):
        shutil.rmtree(tmp)
    return newest_checkpoint(run_dir)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """A run's newest complete checkpoint (``step_N`` holding its ``loop_state.json``), touching
    nothing: a run still training keeps the ``step_N.tmp`` it is writing."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    complete = [p for p in folder.iterdir() if _CHECKPOINT.fullmatch(p.name) and (p / "loop_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("_")[1]), default=None)


def resolve_model(source: str | Path) -> Path:
    """The model folder that ``source`` names, for commands that read a model (eval, export, distill,
    data filter): a model folder in Hugging Face format (``config.json`` and weights) such as a
    checkpoint, a run directory, meaning its newest complete checkpoint (``newest_checkpoint``), or a
    GGUF file (a path or ``package:PKG/file.gguf``), meaning its converted folder (``rlwhf.models.gguf``)."""

    if is_gguf(source) or str(source).startswith(PACKAGE_PREFIX):
        return converted_dir(source)
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"{source}: no such file or directory; expected a checkpoint "
            "(runs/NAME/checkpoints/step_N), a run directory (runs/NAME) or a model folder"
        )
    if not source.is_dir():
        raise ValueError(
            f"{source} is a file; expected a checkpoint folder (runs/NAME/checkpoints/step_N), "
            "a run directory (runs/NAME) or a model folder with config.json"
        )
    if (source / "config.json").is_file():
        if not [*source.glob("*.safetensors"), *source.glob("pytorch_model*.bin")]:
            raise ValueError(
                f"{source}: config.json but no weights (*.safetensors or pytorch_model*.bin); "
                "expected a complete model folder or checkpoint"
            )
        return source
    if (source / "checkpoints").is_dir() or (source / "config.yaml").is_file():
        ckpt = newest_checkpoint(source)
        if ckpt is None:
            hint = (
                f"; the model it started RL from is {source / 'model' / 'sft'}"
                if (source / "model" / "sft" / "config.json").is_file()
                else ""
            )
            raise FileNotFoundError(
                f"{source}: a run directory without a complete checkpoint (expected "
                f"{source / 'checkpoints'}/step_N/ holding loop_state.json; a run writes one "
                f"every train.save_every steps and at its end){hint}"
            )
        return ckpt
    raise ValueError(
        f"{source}: neither a model folder (no config.json) nor a run directory (no checkpoints/ or "
        "config.yaml); expected runs/NAME/checkpoints/step_N, runs/NAME or an HF model folder"
    )


def rewind_run_dir(run_dir: Path, step: int) -> None:
    """Forget what a run recorded after checkpoint ``step``, which the resumed run will record again:
    metrics lines of later steps and the final evaluation's line, traces of later steps and the
    final evaluation's, and the summary of a run that had finished."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        kept = []
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            # A training step's line has its rewards; the line without them at the last step is the
            # held-out evaluation after RL, which the resumed run will write again at its own end.
            if record.get("step", 0) < step or (record.get("step") == step and "reward/mean" in record):
                kept.append(line)
        tmp = metrics.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(metrics)
    for trace in (run_dir / "traces").glob("*_step_*"):
        tag, _, number = trace.name.partition("_step_")
        later = int(number.split(".")[0]) > step if number.split(".")[0].isdigit() else True
        if later or tag == "eval_after" or trace.suffix == ".tmp":
            trace.unlink()
    (run_dir / "summary.json").unlink(missing_ok=True)


def save_checkpoint(policy, run_dir: Path, step: int, state: dict, pending: Future | None = None) -> None:
    """Checkpoint after ``step`` through the policy (``rlwhf.actors.PolicyRanks``): the policy,
    optimizer and RNG states, the loop's ``state`` (data cursor, accuracy before RL) and, in one-step
    off-policy mode, the next step's rollouts (``pending``), so that a resumed run continues exactly."""
    extra = {}
    if pending is not None:  # its prompts are past the cursor already; keep them with the checkpoint
        extra["pending_rollouts.pkl"] = pickle.dumps(pending.result())
    policy.save(str(Path(run_dir) / "checkpoints" / f"step_{step}"), {"step": step, **state}, extra)


def saved_rollouts(ckpt: Path | None) -> Future | None:
    """The rollouts an off-policy run had sampled ahead when it checkpointed, as a finished future."""
    if ckpt is None or not (ckpt / "pending_rollouts.pkl").is_file():
        return None
    future: Future = Future()
    future.set_result(pickle.loads((ckpt / "pending_rollouts.pkl").read_bytes()))
    return future
