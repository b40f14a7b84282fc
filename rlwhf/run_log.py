"""What a run writes as it goes: metrics (console, metrics.jsonl, wandb) and the traces (Parquet, one
row per completion). ``rlwhf.traces`` reads them back.

The console gets one live progress bar per phase (drawn by the loop), a metrics line every
``tracking.console_every`` steps, and each distinct warning once; ``metrics.jsonl`` gets every
step, and the workers' own output goes to ``logs/`` in the run directory.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from rlwhf.traces import reward_of


def say(msg: str) -> None:
    """One line on the console, above any live progress bar."""
    tqdm.write(f"[rlwhf] {msg}")


def console_line(metrics: dict, total_steps: int) -> str:
    """A training step's metrics in one line: rewards, length, groups kept, errors, held-out accuracy, time."""
    parts = [f"step {metrics['step']}/{total_steps}"]
    if metrics.get("update/skipped"):
        parts.append("no update (every group scored the same)")
    parts.append(f"reward {metrics['reward/mean']:.3f}")
    for key, value in metrics.items():
        if key.startswith("reward/") and key.endswith("/mean") and key != "reward/mean":
            parts.append(f"{reward_of(key)} {value:.3f}")
    if "response_length/mean" in metrics:
        parts.append(f"length {metrics['response_length/mean']:.1f}")
    if metrics.get("groups/sampling_rounds", 1) > 1:
        parts.append(f"{metrics['groups/sampling_rounds']} sampling rounds")
    for key, value in metrics.items():
        if key.startswith("reward/") and key.endswith("/errors") and value:
            parts.append(f"{reward_of(key)} errors {value}")
    if "accuracy" in metrics:
        held_out = f"held-out {metrics['accuracy']:.1%} greedy"
        if "accuracy/sampled" in metrics:
            held_out += f", {metrics['accuracy/sampled']:.1%} sampled"
        parts.append(held_out)
    if "time/step" in metrics:
        parts.append(f"{metrics['time/step']:.1f} s")
    return " | ".join(parts)


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        *,
        use_wandb: bool = False,
        project: str = "rlwhf",
        run_name: str = "run",
        config: dict | None = None,
        console_every: int = 1,
        total_steps: int = 0,
    ):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.traces_dir = self.run_dir / "traces"
        self.traces_dir.mkdir(parents=True, exist_ok=True)
        self.console_every, self.total_steps = console_every, total_steps
        self._warned: set[str] = set()
        self.wandb = None
        if use_wandb:
            os.environ.setdefault("WANDB_MODE", "offline")  # never needs a network or an account
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            # One wandb run per run directory: a resumed run logs to the same id.
            id_file = self.run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.wandb = wandb.init(
                project=project, name=run_name, dir=str(self.run_dir), config=config, id=run_id, resume="allow"
            )

    def log(self, metrics: dict) -> None:
        """Append one step's metrics to ``metrics.jsonl`` (and wandb); a console line every ``console_every`` steps."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))
        step = int(metrics["step"])
        shown = step % self.console_every == 0 or step == self.total_steps or metrics.get("update/skipped")
        if "reward/mean" in metrics and shown:
            tqdm.write(console_line(metrics, self.total_steps))

    def warn_once(self, key: str, message: str) -> None:
        """Print ``message`` the first time ``key`` is seen in this run; later ones are only counted in metrics."""
        if key not in self._warned:
            self._warned.add(key)
            say(message)

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
