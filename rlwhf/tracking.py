"""Metrics (console, metrics.jsonl, wandb) and the trace writer (Parquet, one row per completion)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


class Tracker:
    def __init__(self, run_dir: Path, *, use_wandb: bool = False, project: str = "rlwhf",
                 run_name: str = "run", config: dict | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.traces_dir = self.run_dir / "traces"
        self.traces_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if use_wandb:
            os.environ.setdefault("WANDB_MODE", "offline")  # never needs a network or an account
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(project=project, name=run_name, dir=str(self.run_dir), config=config,
                                    resume="allow" if resume else None, id=run_name if resume else None)

    def log(self, metrics: dict) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def write_traces(self, step: int, rows: list[dict], *, tag: str = "train") -> Path:
        frame = pd.DataFrame(rows)
        path = self.traces_dir / f"{tag}_step_{step:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.rename(path)  # a crash never leaves half a file under the final name
        if self.wandb is not None and tag == "train":
            import wandb

            sample = frame.head(16)
            columns = [c for c in ("prompt", "completion", "reward", "advantage") if c in sample]
            self.wandb.log({"traces": wandb.Table(dataframe=sample[columns])}, step=step)
        return path

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
