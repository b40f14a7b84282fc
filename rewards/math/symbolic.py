"""The sympy path, run in helper processes: trees become sympy objects, compared by exact
difference, random numeric probes, then ``simplify``."""

from __future__ import annotations

import signal
import threading
from fractions import Fraction

from rewards.math.compare import Undecided, _approx_equal, _Comparer, _has_symbols, _is_label
from rewards.math.options import Options

# function names in trees -> sympy's names (lg is log base 10)
_FUNCTIONS = {
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "sec": "sec",
    "csc": "csc",
    "cot": "cot",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "asin": "asin",
    "acos": "acos",
    "atan": "atan",
    "arccot": "acot",
    "asec": "asec",
    "acsc": "acsc",
    "arcsec": "asec",
    "arccsc": "acsc",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "exp": "exp",
    "sqrt": "sqrt",
    "abs": "Abs",
    "ln": "log",
    "binomial": "binomial",
    "lg": "log",
    "log": "log",
}


def _sympy_of(node, sp, cache_symbols: dict):
    """A sympy object for a tree (evaluate=True arithmetic; huge powers are the caller's risk)."""
    rec = lambda n: _sympy_of(n, sp, cache_symbols)  # noqa: E731
    kind = node[0]
    if kind == "n":
        return sp.Rational(node[1].numerator, node[1].denominator)
    if kind == "s":
        name = node[1]
        if name in ("e",):
            return sp.E
        if name == "i":
            return sp.I
        if name not in cache_symbols:
            cache_symbols[name] = sp.Symbol(name)
        return cache_symbols[name]
    if kind == "c":
        return {"pi": sp.pi, "oo": sp.oo}[node[1]]
    if kind == "neg":
        return -rec(node[1])
    if kind == "+":
        out = rec(node[1][0])
        for t in node[1][1:]:
            out = out + rec(t)
        return out
    if kind == "*":
        out = rec(node[1][0])
        for f in node[1][1:]:
            out = out * rec(f)
        return out
    if kind == "/":
        return rec(node[1]) / rec(node[2])
    if kind == "^":
        base = rec(node[1])
        exponent = rec(node[2])
        if isinstance(base, sp.MatrixBase):
            return base ** int(exponent)
        return sp.Pow(base, exponent)
    if kind == "!":
        return sp.factorial(rec(node[1]))
    if kind == "%":
        return rec(node[1]) / 100
    if kind == "deg":
        return rec(node[1]) * sp.pi / 180
    if kind == "f":
        name, args = node[1], [rec(a) for a in node[2]]
        if name in _FUNCTIONS:
            f = getattr(sp, _FUNCTIONS[name])
            return f(*args) if name != "lg" else sp.log(*args, 10)
        return sp.Function(name)(*args)
    if kind == "big":
        _, name, body, var, lo, hi = node
        cls = sp.Sum if name == "sum" else sp.Product
        return cls(rec(body), (rec(var), rec(lo), rec(hi)))
    if kind == "mat":
        return sp.Matrix([[rec(c) for c in row] for row in node[1]])
    if kind == "tuple":
        return sp.Matrix([rec(x) for x in node[1]])
    raise Undecided


# Probe points. A value is given to each free symbol at every probe: both signs, magnitudes from
# near zero to beyond 10, never an integer, so that |x| and x, log(x^2) and 2 log(x), asin(sin x)
# and x, (-1)^n and cos(pi n) are told apart. The sign of symbol j at probe k is bit j of k, so
# up to three symbols meet every combination of signs.
_PROBE_MAGNITUDES = (
    "0.5772156649",
    "1.3247179572",
    "2.3247179572",
    "0.0173205081",
    "0.0931163470",
    "2.7182818285",
    "6.1803398875",
    "0.8360679775",
    "1.1892071150",
    "7.3890560989",
    "13.7035999084",
    "0.3183098862",
    "4.1231056256",
    "17.2325878410",
)
_MIN_DEFINED_PROBES = 6  # fewer probes where both sides are defined decide nothing
_RELATIVE_TOLERANCE = 1e-12  # values are computed to 30 digits


class _OutOfBudget(BaseException):
    """A symbolic proof ran out of its time (raised by the helper's interval timer). Not an
    ``Exception``, so that sympy's own ``except Exception`` clauses do not swallow it."""


def _probe_points(free, sp) -> list[dict]:
    points = []
    for k in range(len(_PROBE_MAGNITUDES)):
        point = {}
        for j, sym in enumerate(free):
            magnitude = _PROBE_MAGNITUDES[(k + 5 * j) % len(_PROBE_MAGNITUDES)]
            sign = "-" if (k >> (j % 4)) & 1 else ""
            point[sym] = sp.Float(sign + magnitude, 30)
        points.append(point)
    return points


def _value(expr, point, sp) -> complex | None:
    """``expr`` at a point (principal branches), or None where it is undefined there."""
    try:
        v = expr.evalf(30, subs=point)
        if not v.is_number or v.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
            return None
        c = complex(v)
    except (TypeError, ValueError, ArithmeticError, AttributeError, RecursionError):
        return None
    return c if c == c and abs(c) != float("inf") else None


def _term_scale(expr, point, sp) -> float:
    """Sum of the terms' magnitudes: the size of the rounding error a zero result may carry."""
    total = 0.0
    for term in sp.Add.make_args(expr):
        v = _value(term, point, sp)
        total += abs(v) if v is not None else 0.0
    return total


def _probe(x, y, free, sp) -> bool | None:
    """False when a probe tells ``x`` and ``y`` apart (including a point where only one of them is
    defined), True when enough probes agree, None when too few probes are defined on both sides.
    A point where neither is defined counts for nothing."""
    agreeing = 0
    for point in _probe_points(free, sp):
        a, b = _value(x, point, sp), _value(y, point, sp)
        if a is None and b is None:
            continue
        if a is None or b is None:
            return False
        gap = abs(a - b)
        if gap > _RELATIVE_TOLERANCE * max(abs(a), abs(b)):
            scale = max(_term_scale(x, point, sp), _term_scale(y, point, sp))
            if gap > _RELATIVE_TOLERANCE * scale + 1e-25:
                return False
        agreeing += 1
    return True if agreeing >= _MIN_DEFINED_PROBES else None


def _simplify_real(d):
    """``simplify`` with every symbol real (answers are real unless they say i): that proves
    |x| = sqrt(x^2) and ln(e^x) = x, which hold for every real x."""
    import sympy as sp

    reals = {s: sp.Dummy(s.name, real=True) for s in d.free_symbols if s.is_real is None}
    return sp.simplify(d.subs(reals))


def _proved_zero(d, sp, budget_s: float) -> bool:
    """``d`` is 0 by a symbolic rewrite (cancel, trig expansion, then ``simplify`` over the reals) within
    ``budget_s`` seconds (a SIGALRM timer, in a helper's main thread only)."""

    armed = [budget_s > 0 and threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")]

    def out_of_budget(*_):
        if armed[0]:
            armed[0] = False
            raise _OutOfBudget

    installed = armed[0]
    previous = signal.signal(signal.SIGALRM, out_of_budget) if installed else None
    try:
        try:
            if armed[0]:
                signal.setitimer(signal.ITIMER_REAL, budget_s)
            for rewrite in (lambda e: sp.cancel(sp.together(e)), lambda e: sp.expand(e, trig=True), _simplify_real):
                if rewrite(d) == 0:
                    return True
            return False
        finally:
            armed[0] = False
            if installed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    except _OutOfBudget:  # also when the timer fires on the way out
        return False


def _same(x, y, sp, notes: dict) -> bool:
    """Are the sympy expressions ``x`` and ``y`` equal? Identical trees, an expanded difference of 0,
    a closed-form constant of 0 to 40 digits, or probes that agree and a symbolic proof; when only
    the probes speak for equality, the answer is yes and ``notes["probes"]`` counts it."""
    if x == y:
        return True
    d = x - y
    if d == 0:
        return True
    free = sorted(d.free_symbols | x.free_symbols | y.free_symbols, key=str)
    if not free:
        value = sp.N(d, 40)
        if value.is_number and not value.has(sp.nan, sp.zoo):
            return (abs(complex(value)) if value.is_finite else float("inf")) < 1e-25
        return _proved_zero(d, sp, notes.get("budget_s", 0.5))
    try:
        if sp.expand(d) == 0:
            return True
    except Exception:
        pass
    verdict = _probe(x, y, free, sp)
    if verdict is False:
        return False
    if _proved_zero(d, sp, notes.get("budget_s", 0.5)):
        return True
    if verdict:
        notes["probes"] = notes.get("probes", 0) + 1
    return bool(verdict)


def _sympy_equal(a, b, options: Options, sp, symbols, notes: dict) -> bool:
    if a[0] == b[0] == "eqn":  # equations: l1 - r1 a nonzero constant multiple of l2 - r2
        d1 = _sympy_of(a[1], sp, symbols) - _sympy_of(a[2], sp, symbols)
        d2 = _sympy_of(b[1], sp, symbols) - _sympy_of(b[2], sp, symbols)
        if _same(d2, sp.S.Zero, sp, notes) or _same(d1, sp.S.Zero, sp, notes):
            return False
        ratio = sp.cancel(sp.together(d1 / d2))
        return not ratio.free_symbols and ratio != 0 and ratio.is_finite is not False
    x, y = _sympy_of(a, sp, symbols), _sympy_of(b, sp, symbols)
    if isinstance(x, sp.MatrixBase) or isinstance(y, sp.MatrixBase):
        if not (isinstance(x, sp.MatrixBase) and isinstance(y, sp.MatrixBase)) or x.shape != y.shape:
            return False
        return all(_same(p, q, sp, notes) for p, q in zip(x, y))
    if x.has(sp.zoo, sp.nan) or y.has(sp.zoo, sp.nan):
        return False  # 12:00 is not 1:00 although both divide by zero
    if _same(x, y, sp, notes):
        return True
    if not (x.free_symbols or y.free_symbols) and x.is_finite and y.is_finite:
        try:
            xv, yv = Fraction(str(sp.Rational(sp.N(x, 60)))), Fraction(str(sp.Rational(sp.N(y, 60))))
            return _approx_equal(a, xv, b, yv, options)
        except (TypeError, ValueError):
            return False
    return False


def _sympy_set(node, sp, symbols):
    """A sympy set for an interval, union, finite set, tuple read as an open interval, or a
    univariate inequality (chain)."""
    kind = node[0]
    if kind == "ival":
        return sp.Interval(
            _sympy_of(node[2], sp, symbols),
            _sympy_of(node[3], sp, symbols),
            left_open=not node[1],
            right_open=not node[4],
        )
    if kind == "tuple" and len(node[1]) == 2:
        return sp.Interval.open(_sympy_of(node[1][0], sp, symbols), _sympy_of(node[1][1], sp, symbols))
    if kind == "union":
        return sp.Union(*[_sympy_set(x, sp, symbols) for x in node[1]])
    if kind == "set":
        return sp.FiniteSet(*[_sympy_of(x, sp, symbols) for x in node[1]])
    if kind == "rel":
        ops, sides = node[1], node[2]
        if ops == ["in"]:
            return _sympy_set(sides[1], sp, symbols)
        # 0 < f(x) < 1: the label is the variable; 1 <= |z| <= 2 is solved for z
        labels = [s for s in sides if _is_label(s) and not (s[0] == "f" and s[1] in _FUNCTIONS)]
        var = sp.Dummy("v")
        if labels:
            subs = {_sympy_of(labels[0], sp, symbols): var}
        else:
            exprs = [_sympy_of(s, sp, symbols) for s in sides]
            free = set().union(*[e.free_symbols for e in exprs])
            if len(free) != 1:
                raise Undecided
            subs = {free.pop(): var}
        exprs = [_sympy_of(s, sp, symbols).subs(subs) for s in sides]
        result = sp.S.Reals
        make = {"<": sp.Lt, ">": sp.Gt, "<=": sp.Le, ">=": sp.Ge, "!=": sp.Ne}
        for op, left, right in zip(ops, exprs, exprs[1:]):
            if op not in make:
                raise Undecided
            if op == "!=":
                part = sp.Complement(sp.S.Reals, sp.solveset(sp.Eq(left, right), var, sp.S.Reals))
            else:
                part = sp.solveset(make[op](left, right), var, sp.S.Reals)
            result = sp.Intersection(result, part)
        return result
    raise Undecided


def _sympy_sets_equal(a, b, sp, symbols) -> bool:
    if a[0] == b[0] == "rel" and len(a[2]) != 2 and any(not _is_label(s) and _has_symbols(s) for s in a[2]):
        return False  # f(2) < f(1) < f(4) was compared side by side already
    x, y = _sympy_set(a, sp, symbols), _sympy_set(b, sp, symbols)
    if x == y:
        return True
    return sp.Complement(x, y).is_empty is True and sp.Complement(y, x).is_empty is True


def _decide_sympy(gold, pred, options: Options, notes: dict | None = None) -> bool:
    """True/False for one item. ``notes`` carries ``budget_s`` (time for a symbolic proof) in and
    ``probes`` (equalities that only the probes decided) out."""
    import sympy as sp

    symbols: dict = {}
    notes = {} if notes is None else notes

    def scalar(a, b):
        return _sympy_equal(a, b, options, sp, symbols, notes)

    def sets(a, b):
        return _sympy_sets_equal(a, b, sp, symbols)

    try:
        return _Comparer(scalar, sets, options).equal(gold, pred)
    except Undecided:
        return False
