"""One error message for every string option in ``rlwhf.algo``."""

from __future__ import annotations


def check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the option, the bad value and the allowed values."""
    if value not in allowed:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(repr(a) for a in allowed)}")
