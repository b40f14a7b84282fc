"""The sympy path, run in helper processes: trees become sympy objects, compared by exact
difference, random numeric probes, then ``simplify``."""

from __future__ import annotations

from fractions import Fraction

from rewards.math.compare import Undecided, _approx_equal, _Comparer, _has_symbols, _is_label
from rewards.math.options import Options


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
        table = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "sec": sp.sec, "csc": sp.csc, "cot": sp.cot,
                 "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan, "asin": sp.asin, "acos": sp.acos,
                 "atan": sp.atan, "arccot": sp.acot, "asec": sp.asec, "acsc": sp.acsc, "arcsec": sp.asec,
                 "arccsc": sp.acsc, "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "exp": sp.exp,
                 "sqrt": sp.sqrt, "abs": sp.Abs, "ln": sp.log, "binomial": sp.binomial,
                 "lg": lambda x: sp.log(x, 10), "log": sp.log}
        if name in table:
            return table[name](*args)
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

_PROBES = (("0.5772156649", "2.3247179572", "1.2182818284", "0.3183098861", "2.6180339887", "0.8360679775"),
           ("2.9142135623", "0.6931471805", "0.3415926535", "1.2020569031", "0.9159655941", "2.4320508075"),
           ("1.1892071150", "3.3598856662", "0.4342944819", "2.1544346900", "1.8392867552", "0.7071067811"))

def _zero(expr, sp) -> bool | None:
    """Is ``expr`` identically zero? True/False, or None when the probes cannot tell."""
    if expr == 0:
        return True
    if isinstance(expr, sp.MatrixBase):
        return all(_zero(e, sp) for e in expr)
    free = sorted(expr.free_symbols, key=str)
    if not free:
        value = sp.N(expr, 40)
        if value.is_number and not value.has(sp.nan, sp.zoo):
            mag = abs(complex(value)) if value.is_finite else float("inf")
            return mag < 1e-25
        return None
    try:
        if sp.expand(expr) == 0:
            return True
    except Exception:
        pass
    verdicts = []
    for probe in _PROBES:
        point = {s: sp.Float(probe[k % len(probe)], 30) for k, s in enumerate(free)}
        try:
            value = complex(sp.N(expr.subs(point), 30))
            scale = sum(abs(complex(sp.N(t.subs(point), 15))) for t in sp.Add.make_args(expr))
        except (TypeError, ValueError):
            return None
        if value != value or abs(value) == float("inf") or scale != scale:
            return None
        verdicts.append(abs(value) <= 1e-12 * max(1.0, scale))
    if not all(verdicts):
        return False
    return True

def _sympy_equal(a, b, options: Options, sp, symbols) -> bool:
    if a[0] == b[0] == "eqn":  # equations: l1 - r1 a nonzero constant multiple of l2 - r2
        d1 = _sympy_of(a[1], sp, symbols) - _sympy_of(a[2], sp, symbols)
        d2 = _sympy_of(b[1], sp, symbols) - _sympy_of(b[2], sp, symbols)
        if _zero(d2, sp) or _zero(d1, sp):
            return False
        ratio = sp.cancel(sp.together(d1 / d2))
        return not ratio.free_symbols and ratio != 0 and ratio.is_finite is not False
    x, y = _sympy_of(a, sp, symbols), _sympy_of(b, sp, symbols)
    if isinstance(x, sp.MatrixBase) or isinstance(y, sp.MatrixBase):
        if not (isinstance(x, sp.MatrixBase) and isinstance(y, sp.MatrixBase)) or x.shape != y.shape:
            return False
        return all(_zero(e, sp) for e in (x - y))
    if x.has(sp.zoo, sp.nan) or y.has(sp.zoo, sp.nan):
        return False  # 12:00 is not 1:00 although both divide by zero
    if x == y:
        return True
    verdict = _zero(x - y, sp)
    if verdict is None:
        verdict = sp.simplify(x - y) == 0
    if verdict:
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
        return sp.Interval(_sympy_of(node[2], sp, symbols), _sympy_of(node[3], sp, symbols),
                           left_open=not node[1], right_open=not node[4])
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
        labels = [s for s in sides if _is_label(s)]
        var = sp.Dummy("v")
        if labels:  # 0 < f(x) < 1: the label is the variable
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

def _decide_sympy(gold, pred, options: Options) -> bool:
    import sympy as sp

    symbols: dict = {}

    def scalar(a, b):
        return _sympy_equal(a, b, options, sp, symbols)

    def sets(a, b):
        return _sympy_sets_equal(a, b, sp, symbols)

    try:
        return _Comparer(scalar, sets, options).equal(gold, pred)
    except Undecided:
        return False
