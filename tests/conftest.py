import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "plugins"))  # reward plugins the tests name by module path
os.environ.setdefault("PYTHONPATH", str(ROOT / "tests" / "plugins"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny Qwen3-MoE and its tokenizer, saved in HF format."""
    from rlwhf.models.tiny import build_tiny_moe

    return str(build_tiny_moe(tmp_path_factory.mktemp("tiny_moe")))
