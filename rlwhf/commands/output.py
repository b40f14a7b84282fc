"""What the commands print with: a console, and numbers as the tables show them."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def console() -> Console:
    """Piped output (tests, ``| less``) gets 120 columns unless COLUMNS says otherwise."""
    return Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)


def fmt(value, spec: str = ".3f") -> str:
    """``value`` formatted by ``spec``; a dash for none, NaN or text."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if value != value else format(value, spec)


def steps_text(steps) -> str:
    """Step (or prompt) numbers, as a range where they are one: ``0..9``, else listed."""
    steps = sorted(int(s) for s in set(steps))
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}..{steps[-1]}" if len(steps) > 1 else str(steps[0])
    return ", ".join(map(str, steps))
