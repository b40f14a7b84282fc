"""What counts as equal, and the limits every path shares."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 2.0
MAX_ANSWER_CHARS = 1000  # a longer extracted "answer" is not an answer; it never reaches a parser
MAX_DEPTH = 100  # nesting depth the parser accepts
STARTUP_TIMEOUT_S = 60.0  # a helper process that is not ready by then counts as failed
HELPER_MEMORY_BYTES = 2 << 30  # address-space limit of a helper process (RLIMIT_AS)


@dataclass(frozen=True)
class Options:
    """What counts as equal. ``percent_lenient``: ``10\\%`` equals both ``10`` and ``0.1``
    (else only ``0.1``). ``approx_digits``: a decimal with at least this many digits after the
    point equals a value it rounds or truncates (``0.0833333`` = ``1/12``; ``0.33`` != ``1/3``).
    ``last_number_fallback``: with no boxed answer, tag or answer phrase, take the last number."""

    percent_lenient: bool = True
    approx_digits: int = 4
    last_number_fallback: bool = True


DEFAULTS = Options()
