"""Comparison of answer trees, shared by the exact in-process path and the sympy path: lists,
sets, tuples, relations, percents and degrees are taken apart here; each path supplies how two
scalars (and two sets) are decided."""

from __future__ import annotations

import re
from fractions import Fraction

from rewards.math.options import Options


class Undecided(Exception):
    """The in-process path cannot decide this item; the sympy helper must."""


def _expand_pm(node):
    """``a \\pm b`` stands for two answers; a tree with one ``pm`` becomes two trees."""
    found = []

    def walk(n, sign):
        if isinstance(n, tuple):
            if n[0] == "pm" and not found:
                found.append(1)
                return ("+", [walk(n[1], sign), n[2] if sign > 0 else ("neg", n[2])])
            return tuple(walk(x, sign) if isinstance(x, (tuple, list)) else x for x in n)
        if isinstance(n, list):
            return [walk(x, sign) for x in n]
        return n

    plus = walk(node, 1)
    if not found:
        return [node]
    found.clear()
    minus = walk(node, -1)
    return [plus] + [m for m in _expand_pm(minus)][:3]


def _contains(node, kind) -> bool:
    if isinstance(node, tuple):
        return node[0] == kind or any(_contains(x, kind) for x in node[1:] if isinstance(x, (tuple, list)))
    if isinstance(node, list):
        return any(_contains(x, kind) for x in node)
    return False


def _items(node) -> list:
    if node[0] == "list":
        out = []
        for item in node[1]:
            out.extend(_items(item))
        return out
    if node[0] == "set":
        return node[1]
    if _contains(node, "pm"):
        return _expand_pm(node)
    return [node]


def _is_label(node) -> bool:
    """A name for the answer, as in ``x = 2``, ``f(x) = 2``, ``|AB| = 1``, ``(p, q) = (3, 2)``."""
    kind = node[0]
    if kind == "s":
        return True
    if kind == "f":
        return node[1] not in ("sqrt", "exp") and all(_is_label(a) or a[0] == "n" for a in node[2])
    if kind in ("*", "tuple"):
        return all(_is_label(f) for f in node[1])
    if kind == "/":
        return _is_label(node[1]) and _is_label(node[2])
    if kind == "^":
        return _is_label(node[1])
    return False


def _has_symbols(node) -> bool:
    return (
        _contains(node, "s")
        or _contains(node, "text")
        or any(isinstance(n, tuple) and n[0] == "f" and n[1] in "fghpqPQFG" for n in _walk(node))
    )


def _walk(node):
    if isinstance(node, tuple):
        yield node
        for x in node[1:]:
            yield from _walk(x)
    elif isinstance(node, list):
        for x in node:
            yield from _walk(x)


class _Comparer:
    """Structural comparison; ``scalar(a, b)`` decides two expressions, ``sets(a, b)`` two
    interval/set/inequality answers (each may raise Undecided)."""

    def __init__(self, scalar, sets, options: Options):
        self.scalar = scalar
        self.sets = sets
        self.options = options

    def equal(self, gold, pred) -> bool:
        if gold == pred:
            return True
        if gold[0] == "tuple" and pred[0] == "list" and len(gold[1]) == len(pred[1]):
            return all(self.equal(x, y) for x, y in zip(gold[1], pred[1]))  # (1, 3) written as 1, 3
        g_items, p_items = _items(gold), _items(pred)
        if len(g_items) > 1 or len(p_items) > 1 or gold[0] == "set" or pred[0] == "set":
            if gold[0] == "set" and pred[0] not in ("set", "list"):
                return self.sets(gold, pred) if pred[0] in ("ival", "union", "rel") else False
            return self.same_collection(g_items, p_items)
        return self.one(g_items[0], p_items[0])

    def same_collection(self, a: list, b: list) -> bool:
        if not a or not b:
            return not a and not b
        if len(a) > 64 or len(b) > 64:
            raise Undecided
        matched_b = [False] * len(b)
        for x in a:
            hits = [j for j, y in enumerate(b) if self.equal(x, y)]
            if not hits:
                return False
            for j in hits:
                matched_b[j] = True
        return all(matched_b) or all(any(self.equal(x, y) for x in a) for y in b)

    def one(self, g, p) -> bool:
        if g == p:
            return True
        gk, pk = g[0], p[0]
        if gk == "text" or pk == "text":
            return gk == pk == "text" and _fold(g[1]) == _fold(p[1])
        if gk == "rel" or pk == "rel":
            return self.relation(g, p)
        if gk in ("ival", "union") or pk in ("ival", "union"):
            if gk == pk == "ival" and g[1] == p[1] and g[4] == p[4]:
                return self.scalar(g[2], p[2]) and self.scalar(g[3], p[3])
            return self.sets(g, p)
        if gk == "tuple" or pk == "tuple" or gk == "mat" or pk == "mat":
            ga, pa = _as_rows(g), _as_rows(p)
            if ga is None or pa is None:
                return self.scalar(g, p) if "mat" in (gk, pk) and "tuple" not in (gk, pk) else False
            if len(ga) != len(pa) or any(len(r) != len(s) for r, s in zip(ga, pa)):
                return False
            return all(self.equal(x, y) for r, s in zip(ga, pa) for x, y in zip(r, s))
        if gk == "%" or pk == "%":
            return self.percent(g, p)
        if gk == "deg" or pk == "deg":
            g0 = g[1] if gk == "deg" else g
            p0 = p[1] if pk == "deg" else p
            if self.scalar(g0, p0):
                return True
            if gk != pk:  # 90° = pi/2
                rad = ("*", [g0 if gk == "deg" else p0, ("/", ("c", "pi"), ("n", Fraction(180), -1))])
                return self.scalar(rad, p0 if gk == "deg" else g0)
            return False
        return self.scalar(g, p)

    def percent(self, g, p) -> bool:
        gv = g[1] if g[0] == "%" else g
        pv = p[1] if p[0] == "%" else p
        if g[0] == p[0] == "%":
            return self.scalar(gv, pv)
        hundredth = ("/", gv if g[0] == "%" else pv, ("n", Fraction(100), -1))
        other = pv if g[0] == "%" else gv
        if self.scalar(hundredth, other):
            return True
        return self.options.percent_lenient and self.scalar(gv, pv)

    def relation(self, g, p) -> bool:
        if g[0] == p[0] == "rel":
            if set(g[1]) == set(p[1]) == {"="} and _is_label(g[2][0]) and g[2][0] == p[2][0]:
                return self.equal(g[2][-1], p[2][-1])  # x = 5+5+1 = 11: the last side is the value
            if g[1] == p[1] and len(g[2]) == len(p[2]) and all(self.equal(x, y) for x, y in zip(g[2], p[2])):
                return True
            if all(op == "=" for op in g[1] + p[1]) and len(g[2]) == len(p[2]) == 2:
                return self.scalar(("eqn", g[2][0], g[2][1]), ("eqn", p[2][0], p[2][1]))
            if "=" not in g[1] + p[1]:
                return self.sets(g, p)
            return False
        rel, other = (g, p) if g[0] == "rel" else (p, g)
        ops, sides = rel[1], rel[2]
        if ops[-1] == "in":
            return self.equal(sides[-1], other) if rel is g else self.equal(other, sides[-1])
        if all(op == "=" for op in ops):
            label = _is_label(sides[0]) or not any(_has_symbols(x) for x in sides)
            if not label:
                return False
            value = sides[-1]
            return self.equal(value, other) if rel is g else self.equal(other, value)
        if other[0] in ("ival", "union", "set", "tuple", "rel"):
            return self.sets(g, p)
        return False


def _fold(text: str) -> str:
    return re.sub(r"[\s.]+", " ", text).strip().casefold()


def _as_rows(node):
    if node[0] == "mat":
        return node[1]
    if node[0] == "tuple":
        return [[x] for x in node[1]]
    return None


def _approx_equal(a, x, b, y, options: Options) -> bool:
    """A long decimal equals the value it rounds or truncates to (``0.08333`` = ``1/12``)."""
    for node, dec, other in ((a, x, y), (b, y, x)):
        digits = node[2] if node[0] == "n" else (node[1][2] if node[0] == "neg" and node[1][0] == "n" else -1)
        if digits >= options.approx_digits and abs(dec - other) <= Fraction(1, 10**digits):
            return True
    return False
