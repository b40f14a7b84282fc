"""The run directory on disk: creating it, and finding the checkpoint a resumed run starts from."""

from __future__ import annotations

import shutil
from pathlib import Path

from rlwhf.config import Recipe


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


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return ckpts[-1] if ckpts else None
