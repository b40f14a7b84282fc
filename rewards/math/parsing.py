"""Parsing: a small LaTeX/plain-text parser (no ``eval``, bounded depth and length) from an
answer string to a tree of numbers, symbols, operators and structures."""

from __future__ import annotations

import re
from fractions import Fraction

from rewards.math.options import MAX_ANSWER_CHARS, MAX_DEPTH


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the ``{...}`` group opening at ``text[start]`` and the index after it."""
    depth = 0
    for k in range(start, len(text)):
        c = text[k]
        if c == "{" and text[k - 1] != "\\":
            depth += 1
        elif c == "}" and text[k - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : k], k + 1
    return None


class ParseError(ValueError):
    pass


_FUNCS = {
    "sin",
    "cos",
    "tan",
    "sec",
    "csc",
    "cot",
    "arcsin",
    "arccos",
    "arctan",
    "sinh",
    "cosh",
    "tanh",
    "log",
    "ln",
    "exp",
    "sqrt",
    "abs",
    "lg",
    "asin",
    "acos",
    "atan",
    "arccot",
}
_CONST_WORDS = {"pi": "pi", "inf": "oo", "infty": "oo", "infinity": "oo", "oo": "oo"}
_UNITS = set(
    """cm mm km m kg g mg lb lbs oz s sec secs second seconds min mins minute minutes h hr hrs
hour hours day days week weeks month months year years dollar dollars cent cents yuan euro euros
unit units inch inches ft feet foot yard yards mile miles mph kmh km/h meter meters metre metres
liter liters litre litres l ml sq square cubic degree degrees deg rad radian radians people person
students points point ways times apples marbles""".split()
)
_TEXT_CMDS = {
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "mbox",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "operatorname",
    "mathbb",
    "mathcal",
    "boldsymbol",
    "rm",
    "bf",
}
_RELOPS = {
    "=": "=",
    "==": "=",
    "<": "<",
    ">": ">",
    "<=": "<=",
    ">=": ">=",
    "!=": "!=",
    "\\le": "<=",
    "\\leq": "<=",
    "\\leqslant": "<=",
    "\\ge": ">=",
    "\\geq": ">=",
    "\\geqslant": ">=",
    "\\lt": "<",
    "\\gt": ">",
    "\\ne": "!=",
    "\\neq": "!=",
    "\\in": "in",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
}
_SKIP_CMDS = {
    "left",
    "right",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "displaystyle",
    "quad",
    "qquad",
    "limits",
    "nolimits",
    "mathop",
    "hfill",
    "cdots",
    "ldots",
    "dots",
    "middle",
    "textstyle",
    "it",
    "boxed",
    "fbox",
}

_TOKEN = re.compile(
    r"""
  (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+(?![A-Za-z]))?|\.\d+)
 |(?P<cmd>\\[A-Za-z]+|\\[{}|,;:!%$ ]|\\\\)
 |(?P<op><=|>=|!=|==|\*\*|[-+*/^_=<>!(),\[\]{}|;:%'≤≥≠±·×÷√π∞∪])
 |(?P<word>[A-Za-z]+)
 |(?P<ws>\s+)
 |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)

_MATRIX = re.compile(r"\\begin\{(p|b|v|V|B|small)?matrix\}|\\begin\{array\}\{[^{}]*\}")


_APPROX = re.compile(r"\\approx|≈|\\sim(?![a-z])")
_LONE_LABEL = re.compile(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*")
_DECIMAL_COMMA = re.compile(r"\s*-?(?:\d+,\d{2}|0,\d{3,})\s*")  # "1,22", "0,111"
# (pattern, replacement) applied in order; compiled once, since _prepare runs several times per item
_CLEANUPS = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"(?<!\\)\\[][()]", " "),  # \( \) \[ \] left around an answer
        (r"\\(?:[dtc]frac)", r"\\frac"),
        (r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b|\\circ\b", r" \\deg "),
        (r"\\%|%|\b(?:percent(?:age)?|pct)\b", " % "),
        (r"\\\$|\$|€|£|¥|\\euro\b|\\pounds\b", " "),
        (r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)", ""),
        (r",\\!\s*(?=\d{3})", ","),
        (r"(?<!\\)\\(?:[,;:! ]|quad|qquad)|~", " "),
        # thousands: "1,234,567" and "1 000" (a group of 0 is no thousands group: "0,111")
        (r"(?<![\d.(\[,])([1-9]\d{0,2})((?:,\d{3})+)(?![\d,)\]])", lambda m: m.group(1) + m.group(2).replace(",", "")),
        (r"(?<![\w.,^_{}])([1-9]\d{0,2})((?: \d{3})+)(?!\d|,\d)", lambda m: m.group(1) + m.group(2).replace(" ", "")),
    )
)


def _prepare(s: str) -> str:
    """String-level clean-up before tokenising: delimiters, spacing commands, thousands separators,
    degree and percent spellings."""
    s = s.replace("\x00", "").strip()
    left, *right = _APPROX.split(s)
    # "x \approx 11" names its value; "\sqrt{2} \approx 1.414" keeps the exact form on the left
    s = f"{left} = {right[0]}" if right and _LONE_LABEL.fullmatch(left) else left
    s = s.replace("²", "^2").replace("³", "^3").replace("−", "-").replace("–", "-")
    for pattern, replacement in _CLEANUPS:
        s = pattern.sub(replacement, s)
    if _DECIMAL_COMMA.fullmatch(s):
        s = s.replace(",", ".")
    return s.strip().rstrip(".").strip()


_KNOWN_CMD = r"(?:[dtc]?frac|boxed|sqrt|text|textbf|mathrm|mbox|left|right|pi|cdot|times|le|leq|ge|geq|infty|begin|end|in|cup|pm|circ|approx|neq)(?![A-Za-z])"
_DOUBLED = re.compile(r"(?<!\\)\\\\" + _KNOWN_CMD)
_SINGLE = re.compile(r"(?<!\\)\\" + _KNOWN_CMD)


def _undouble(s: str) -> str:
    """Text whose LaTeX commands are written with doubled backslashes (JSON-escaped data:
    ``\\\\frac{1}{2}``) with each run of 2k backslashes made k long; other text unchanged."""
    if "\\\\" not in s or len(_DOUBLED.findall(s)) <= len(_SINGLE.findall(s)):
        return s
    return re.sub(r"\\+", lambda m: m.group(0)[: len(m.group(0)) // 2] if len(m.group(0)) % 2 == 0 else m.group(0), s)


def _key(s: str) -> str:
    s = _prepare(s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|textnormal|mathbf)\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+", "", s).casefold() if re.fullmatch(r"[A-Za-z][A-Za-z\s'.-]*", s) else re.sub(r"\s+", "", s)


def _tokens(s: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _MATRIX.match(s, pos)
        if m:
            env = re.escape(s[m.start() + 7 : s.index("}", m.start() + 7)])
            end = re.compile(r"\\end\{" + env + r"\}").search(s, m.end())
            if end is None:
                raise ParseError("unclosed matrix")
            out.append(("mat", s[m.end() : end.start()]))
            pos = end.end()
            continue
        m = _TOKEN.match(s, pos)
        kind, text = m.lastgroup, m.group(0)
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "cmd":
            name = text[1:]
            if name in _TEXT_CMDS:
                group = _braced(s, pos) if s[pos : pos + 1] == "{" else None
                if group is None:
                    continue
                content, pos = group
                inner = content.strip()
                if inner.lower() in ("and", "or", ",", "or equivalently"):
                    out.append(("op", ","))
                elif (
                    inner.lower() in _UNITS
                    or re.fullmatch(r"[A-Za-z]+(?:\s+[A-Za-z]+)+|[A-Za-z]{4,}", inner)
                    and inner.lower() not in _FUNCS
                    and inner.lower() not in _CONST_WORDS
                ):
                    out.append(("text", inner))
                else:
                    out.extend(_tokens(inner))
                continue
            if name in _SKIP_CMDS or name in (",", ";", ":", "!", " ", "$"):
                continue
        if kind == "word":
            low = text.lower()
            if low in ("and", "or"):
                out.append(("op", ","))
                continue
            if low in _FUNCS or low in _CONST_WORDS:
                out.append(("word", low))
                continue
            if (low in _UNITS and len(text) >= 2 and text.islower()) or len(text) >= 4 and not text.isupper():
                out.append(("text", text))
                continue
            out.extend(("word", c) for c in text)  # "xy" is x*y, "AB" is A*B
            continue
        out.append((kind if kind != "other" else "op", text))
    return out


def _is(tok, *texts) -> bool:
    return tok is not None and tok[1] in texts and tok[0] in ("op", "cmd", "word")


class _Parser:
    """Recursive descent over tokens. Produces tuples:
    ('n', Fraction, decimals) ('s', name) ('c', name) ('+', [..]) ('*', [..]) ('/', a, b)
    ('^', a, b) ('neg', a) ('!', a) ('%', a) ('deg', a) ('f', name, [args]) ('pm', a, b)
    ('tuple', [..]) ('ival', lclosed, a, b, rclosed) ('set', [..]) ('union', [..]) ('mat', rows)
    ('rel', ops, sides) ('list', [..]) ('text', str)."""

    def __init__(self, tokens):
        self.t = tokens
        self.i = 0
        self.depth = 0

    def peek(self, k=0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def next(self):
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        self.i += 1
        return tok

    def expect(self, *texts):
        tok = self.next()
        if tok[1] not in texts:
            raise ParseError(f"expected {texts}, got {tok[1]!r}")
        return tok

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nested too deeply")

    def parse(self):
        node = self.list_(("",))
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()[1]!r}")
        return node

    def list_(self, closers):
        items = []
        while True:
            while _is(self.peek(), ",", ";"):
                self.next()
            if self.peek() is None or self.peek()[1] in closers:
                break
            items.append(self.relation())
            if not _is(self.peek(), ",", ";"):
                break
        if not items:
            raise ParseError("empty")
        return items[0] if len(items) == 1 else ("list", items)

    def relation(self):
        sides, ops = [self.expr()], []
        while self.peek() is not None and (self.peek()[1] in _RELOPS or _is(self.peek(), "\\notin")):
            op = self.next()[1]
            ops.append(_RELOPS.get(op, op))
            sides.append(self.expr())
        if not ops:
            return sides[0]
        return ("rel", ops, sides)

    def expr(self):
        self.enter()
        if _is(self.peek(), "\\pm", "±"):
            self.next()
            first = ("pm", ("n", Fraction(0), -1), self.term())
        else:
            first = self.term()
        terms = [first]
        while True:
            tok = self.peek()
            if _is(tok, "+"):
                self.next()
                terms.append(self.term())
            elif _is(tok, "-"):
                self.next()
                terms.append(("neg", self.term()))
            elif _is(tok, "\\pm", "±", "\\mp"):
                self.next()
                rest = self.term()
                left = terms[0] if len(terms) == 1 else ("+", terms)
                terms = [("pm", left, rest if tok[1] != "\\mp" else ("neg", rest))]
            elif _is(tok, "\\cup", "∪", "U") and self.peek(1) is not None and self.peek(1)[1] in ("(", "[", "\\{"):
                self.next()
                left = terms[0] if len(terms) == 1 else ("+", terms)
                right = self.expr()
                items = (left[1] if left[0] == "union" else [left]) + (right[1] if right[0] == "union" else [right])
                self.depth -= 1
                return ("union", items)
            else:
                break
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("+", terms)

    def term(self):
        factors = [self.unary()]
        while True:
            tok = self.peek()
            if _is(tok, "*", "\\cdot", "\\times", "·", "×", "\\ast"):
                self.next()
                factors.append(self.unary())
            elif _is(tok, "/", "\\div", "÷", ":"):
                self.next()
                factors = [("/", factors[0] if len(factors) == 1 else ("*", factors), self.unary())]
            elif tok is not None and self.starts_atom(tok):
                factor = self.postfix()
                prev = factors[-1]
                if (
                    len(factors) == 1
                    and prev[0] == "n"
                    and prev[2] == -1
                    and tok[1] == "\\frac"
                    and factor[0] == "/"
                    and factor[1][0] == factor[2][0] == "n"
                ):
                    factors[-1] = ("+", [prev, factor])  # 918\frac{1}{2} is a mixed number
                else:
                    factors.append(factor)
            else:
                break
        real = [f for f in factors if f[0] != "text"]
        if not real:
            return ("text", " ".join(f[1] for f in factors))
        return real[0] if len(real) == 1 else ("*", real)

    def starts_atom(self, tok):
        kind, text = tok
        if kind in ("num", "word", "mat", "text"):
            return True
        if kind == "cmd":
            return text not in _RELOPS and text not in (
                "\\pm",
                "\\mp",
                "\\cdot",
                "\\times",
                "\\div",
                "\\cup",
                "\\}",
                "\\ast",
                "\\notin",
                "\\\\",
            )
        return text in ("(", "[", "{", "√", "π", "∞")

    def unary(self):
        if _is(self.peek(), "-"):
            self.next()
            return ("neg", self.unary())
        if _is(self.peek(), "+"):
            self.next()
            return self.unary()
        return self.postfix()

    def postfix(self):
        node = self.power()
        while True:
            if _is(self.peek(), "!") and not _is(self.peek(1), "="):
                self.next()
                node = ("!", node)
            elif _is(self.peek(), "%"):
                self.next()
                node = ("%", node)
            elif _is(self.peek(), "\\deg"):
                self.next()
                node = ("deg", node)
            elif _is(self.peek(), "'"):
                self.next()
                node = ("s", _name(node) + "'") if node[0] == "s" else node
            else:
                return node

    def power(self):
        base = self.atom()
        if _is(self.peek(), "_") and base[0] == "n":  # 204_5: a numeral in base 5
            self.next()
            sub = self.atom()
            if sub[0] == "n" and base[2] == -1:
                digits, radix = _numeral(base), int(sub[1])
                try:
                    base = ("n", Fraction(int(digits, radix)), -1)
                except ValueError:
                    raise ParseError(f"{digits} is not a base-{radix} numeral") from None
        if _is(self.peek(), "^", "**"):
            self.next()
            if base[0] == "text":  # cm^2: a unit's power is part of the unit
                self.power()
                return base
            self.enter()
            if _is(self.peek(), "-"):
                self.next()
                exponent = ("neg", self.power())
            else:
                exponent = self.power()
            self.depth -= 1
            return ("^", base, exponent)
        return base

    def group(self):
        """A ``{...}`` argument, or a single token (``\\frac12``)."""
        tok = self.peek()
        if _is(tok, "{"):
            self.next()
            self.enter()
            node = self.list_(("}",))
            self.expect("}")
            self.depth -= 1
            return node
        if tok is not None and tok[0] == "num" and re.fullmatch(r"\d{2,}", tok[1]):
            self.next()  # \frac12: a bare multi-digit argument is its first digit
            self.t.insert(self.i, ("num", tok[1][1:]))
            return ("n", Fraction(int(tok[1][0])), -1)
        return self.atom()

    def atom(self):
        self.enter()
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self):
        kind, text = self.next()
        if kind == "num":
            return _number(text)
        if kind == "text":
            return ("text", text)
        if kind == "mat":
            rows = [r for r in re.split(r"\\\\", text) if r.strip() and not re.fullmatch(r"\s*\\hline\s*", r)]
            if not rows or len(rows) > 50:
                raise ParseError("matrix shape")
            cells = [[_parse_tree(c) for c in r.split("&")] for r in rows]
            if len({len(r) for r in cells}) != 1:
                raise ParseError("ragged matrix")
            return ("mat", cells)
        if kind == "word":
            if text in _CONST_WORDS:
                return ("c", _CONST_WORDS[text])
            if text in _FUNCS:
                return self.function(text)
            return self.subscripted(text)
        if text in ("(", "["):
            items = self.list_((")", "]"))
            close = self.next()[1]
            if close not in (")", "]"):
                raise ParseError("unbalanced bracket")
            seq = items[1] if items[0] == "list" else [items]
            if len(seq) == 2 and (text == "[" or close == "]"):
                return ("ival", text == "[", seq[0], seq[1], close == "]")
            if len(seq) == 1:
                return seq[0]
            return ("tuple", seq)
        if text == "{":
            node = self.list_(("}",))
            self.expect("}")
            return node
        if text == "\\{":
            if _is(self.peek(), "\\}"):
                self.next()
                return ("set", [])
            node = self.list_(("\\}",))
            self.expect("\\}")
            return ("set", node[1] if node[0] == "list" else [node])
        if text in ("|", "\\vert", "\\lvert", "\\rvert", "\\|"):
            node = self.expr()
            self.expect("|", "\\vert", "\\rvert", "\\lvert", "\\|")
            return ("f", "abs", [node])
        if text in ("\\pi", "π"):
            return ("c", "pi")
        if text in ("\\infty", "∞", "\\infin"):
            return ("c", "oo")
        if text in ("\\frac", "\\over"):
            num = self.group()
            return ("/", num, self.group())
        if text == "\\binom":
            n = self.group()
            return ("f", "binomial", [n, self.group()])
        if text in ("\\sqrt", "√"):
            if _is(self.peek(), "["):
                self.next()
                index = self.expr()
                self.expect("]")
                return ("^", self.group(), ("/", ("n", Fraction(1), -1), index))
            return ("f", "sqrt", [self.group()])
        if text in ("\\sum", "\\prod"):
            return self.big_operator(text[1:])
        if kind == "cmd" and text[1:] in _FUNCS or text in ("\\arcsec", "\\arccsc"):
            return self.function(text[1:])
        if kind == "cmd" and text[1:] in _GREEK:
            return self.subscripted(text[1:])
        if text == "\\emptyset" or text == "\\varnothing":
            return ("set", [])
        raise ParseError(f"unsupported {text!r}")

    def subscripted(self, name):
        if _is(self.peek(), "_"):
            self.next()
            sub = self.group()
            name = f"{name}_{_name(sub)}"
        if _is(self.peek(), "(") and name in ("f", "g", "h", "p", "q", "P", "Q", "F", "G"):
            self.next()
            args = self.list_((")",))
            self.expect(")")
            return ("f", name, args[1] if args[0] == "list" else [args])
        return ("s", name)

    def function(self, name):
        power = None
        if name == "log" and _is(self.peek(), "_"):
            self.next()
            base = self.group()
            arg = self.function_argument()
            return ("f", "log", [arg, base])
        if _is(self.peek(), "^"):
            self.next()
            power = self.group()
        arg = self.function_argument()
        node = ("f", name, [arg])
        if power is not None:
            if power == ("neg", ("n", Fraction(1), -1)):
                return ("f", "a" + name, [arg])
            return ("^", node, power)
        return node

    def function_argument(self):
        if _is(self.peek(), "(", "{"):
            return self.atom()
        factors = [self.power()]
        while self.peek() is not None and self.peek()[0] in ("num", "word") and self.peek()[1] not in _FUNCS:
            factors.append(self.power())
        return factors[0] if len(factors) == 1 else ("*", factors)

    def big_operator(self, name):
        if not _is(self.peek(), "_"):
            raise ParseError(f"\\{name} without limits")
        self.next()
        lower = self.group()
        self.expect("^")
        upper = self.group()
        if lower[0] != "rel" or lower[1] != ["="] or lower[2][0][0] != "s":
            raise ParseError(f"\\{name} lower limit")
        body = self.term()
        return ("big", name, body, lower[2][0], lower[2][1], upper)


_GREEK = set(
    """alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu
xi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega""".split()
)


def _name(node) -> str:
    if node[0] == "s":
        return node[1]
    if node[0] == "n":
        return _numeral(node)
    if node[0] == "*":
        return "".join(_name(f) for f in node[1])
    return "{" + repr(node) + "}"


def _numeral(node) -> str:
    value = node[1]
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def _number(text: str):
    if len(text) > 400:
        raise ParseError("number too long")
    mantissa, _, exponent = text.lower().partition("e")
    if exponent and abs(int(exponent)) > 400:
        raise ParseError("exponent too large")
    decimals = len(mantissa.split(".", 1)[1]) if "." in mantissa else -1
    return ("n", Fraction(text), decimals)


_TIME = re.compile(r"\s*\d{1,2}:\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?)\s*", re.IGNORECASE)  # 10:30 am


def _parse_tree(s: str):
    if _TIME.fullmatch(s):
        return ("text", s.strip())
    return _Parser(_tokens(_prepare(s))).parse()


def parse(answer: str):
    """The tree of an answer string (see ``_Parser``); raises ParseError on what it cannot read."""
    if len(answer) > MAX_ANSWER_CHARS:
        raise ParseError(f"answer longer than {MAX_ANSWER_CHARS} characters")
    try:
        return _parse_tree(answer)
    except RecursionError:
        raise ParseError("nested too deeply") from None
