"""Reading a run's traces into pandas, for notebooks and ``rlwhf inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def load(run_dir: str | Path, tag: str = "train") -> pd.DataFrame:
    """All traces of a run (one row per completion), sorted by step; ``tag='eval'`` for evaluations."""
    files = sorted((Path(run_dir) / "traces").glob(f"{tag}_step_*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {tag} traces under {Path(run_dir) / 'traces'}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values(
        ["step", "prompt_index", "sample_index"], kind="stable", ignore_index=True)


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame, one row per step."""
    path = Path(run_dir) / "metrics.jsonl"
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
