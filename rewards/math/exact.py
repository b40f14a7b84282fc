"""The exact in-process path: trees of rationals decided with bounded fraction arithmetic (no
sympy, no IPC)."""

from __future__ import annotations

from fractions import Fraction

from rewards.math.compare import Undecided, _approx_equal, _Comparer
from rewards.math.options import Options

_MAX_EXACT_BITS = 4096


def _exact(node) -> Fraction:
    """Value of a tree built from rationals only; raises Undecided otherwise (or when large)."""
    kind = node[0]
    if kind == "n":
        return node[1]
    if kind == "neg":
        return -_exact(node[1])
    if kind == "+":
        return sum((_exact(t) for t in node[1]), Fraction(0))
    if kind == "*":
        out = Fraction(1)
        for f in node[1]:
            out *= _exact(f)
            if out.numerator.bit_length() + out.denominator.bit_length() > _MAX_EXACT_BITS:
                raise Undecided
        return out
    if kind == "/":
        den = _exact(node[2])
        if den == 0:
            raise Undecided
        return _exact(node[1]) / den
    if kind == "^":
        base, exp = _exact(node[1]), _exact(node[2])
        if (
            exp.denominator != 1
            or abs(exp) > 256
            or (base != 0 and abs(base.numerator).bit_length() * abs(exp) > _MAX_EXACT_BITS)
        ):
            raise Undecided
        if base == 0 and exp < 0:
            raise Undecided
        return base ** int(exp)
    if kind == "!":
        n = _exact(node[1])
        if n.denominator != 1 or not 0 <= n <= 300:
            raise Undecided
        out = 1
        for k in range(2, int(n) + 1):
            out *= k
        return Fraction(out)
    raise Undecided


def _exact_equal(a, b, options: Options) -> bool:
    if a[0] == b[0] == "eqn":
        raise Undecided
    x, y = _exact(a), _exact(b)
    if x == y:
        return True
    return _approx_equal(a, x, b, y, options)


def _exact_sets(a, b) -> bool:
    raise Undecided


def _decide_exact(gold, pred, options: Options) -> bool:
    """True/False when rationals decide it; raises Undecided otherwise."""
    return _Comparer(lambda a, b: _exact_equal(a, b, options), _exact_sets, options).equal(gold, pred)
