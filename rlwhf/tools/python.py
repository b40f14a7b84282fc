"""The built-in ``python`` tool: the model's program run in ``rewards.sandbox`` (no network, no host
files, its own processes), with the sandbox's limits; what the program prints is the observation."""

from __future__ import annotations

from rewards import sandbox
from rlwhf.tools.base import ToolFailed, tool

# Output past this many bytes kills the program (the sandbox's cap); the environment then cuts what
# the model reads to ``rollout.max_observation_chars``.
OUTPUT_BYTES = 64 * 1024


@tool(
    "python",
    description="Run a Python program in a sandbox (standard library only, no network, no files) "
    "and return what it prints.",
    parameters={
        "type": "object",
        "properties": {"code": {"type": "string", "description": "the program"}},
        "required": ["code"],
    },
)
def python(code: str, timeout_s: float = sandbox.DEFAULT_TIMEOUT_S) -> str:
    result = sandbox.run(code, timeout_s=timeout_s, output_bytes=OUTPUT_BYTES)
    if result.status == "ok":
        return result.stdout if not result.truncated else result.stdout + "\n[output cut]"
    if result.status == "blocked":
        raise ToolFailed(result.stderr.strip() or "the sandbox refused to run the program", "refused")
    if result.status == "timeout":
        raise ToolFailed(f"the program ran past its {timeout_s:g} s limit", "timeout")
    if result.status == "memory":
        raise ToolFailed("the program ran out of memory", "error")
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    raise ToolFailed(result.stdout + "\n".join(lines[-3:]) if lines else result.stdout or "the program failed", "error")
