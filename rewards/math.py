"""Math answer checking: extract a model's final answer and decide whether it equals the gold answer.

    verify(gold, prediction) -> bool        one completion (the whole output) against a gold answer
    verify_batch(golds, predictions)        many at once; each distinct gold is parsed once
    extract_answer(text) -> str | None      the final answer as written
    math_accuracy                           the registered reward (1.0 / 0.0)

How it works. The answer strings are parsed by a small LaTeX/plain-text parser written here (no
``eval``, bounded depth and length) into a tree of numbers, symbols, operators and structures
(lists, tuples, sets, intervals, relations, matrices, text). Items whose trees are plain rational
numbers (or lists, tuples, intervals of them) are decided in-process with exact fractions: no
sympy, no IPC, well under a millisecond. Everything else goes to a small pool of helper processes
that build sympy expressions and compare them (exact difference, random numeric probes, then
``simplify``). Each item gets ``timeout_s``; a helper that overruns is killed (SIGKILL) and
replaced, and the item scores False. No signals are used in the calling process, so this works
from any thread, any Ray actor and inside daemonic worker processes (helpers are started with
``subprocess``, not ``multiprocessing``). Helpers die with their parent (PR_SET_PDEATHSIG, EOF on
their pipe, and an ``atexit`` hook).

Starting a helper (a Python interpreter importing sympy, about a second) is not charged to an
item's limit; call ``warm_up()`` to start one ahead of the first call.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait

from rewards import reward

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

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_STOP_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_PHRASE = re.compile(
    r"(?:final\s+answer(?:\s+is)?|the\s+(?:correct\s+)?answer\s+is|\banswer\s*(?:is)?\s*:|"
    r"\*\*\s*answer\s*:?\s*\*\*|^\s*#{1,4}\s*answer\b|^\s*answer\b|^####)\s*:?\s*",
    re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+,\d\d(?![\d,])|\d+(?:\.\d+)?)(?:\s*/\s*\d+)?")
_MATH_BLOCK = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$([^$]+?)(?<!\\)\$", re.DOTALL)
_BOX_JOINER = re.compile(r"^(?:[\s,;.$]|\\quad|\\qquad|\\[,;:! ]|\\text\{[^{}]*\band\b[^{}]*\}|\\text\{\s*,?\s*\}|\band\b|&|[A-Za-z](?:_\{?\w+\}?)?\s*=|\\\]|\\\[|\\\(|\\\))*$")
_MATH_OPEN = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}


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
                return text[start + 1:k], k + 1
    return None


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every ``\\boxed{}``/``\\fbox{}``/``\\boxed X``, in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text):
        if m.start() < (out[-1][1] if out else 0):
            continue  # nested inside the previous box
        if m.group(1):
            got = _braced(text, m.end() - 1)
            if got is None:
                break  # unbalanced: nothing after this is trustworthy
            out.append((m.start(), got[1], got[0]))
        else:
            word = re.match(r"[^\s$]+", text[m.end():])
            if word:
                out.append((m.start(), m.end() + word.end(), word.group(0)))
    return out


def _segment_after(text: str, pos: int) -> str:
    """The answer written after an answer phrase ending at ``pos``: one math block, else the line."""
    rest = text[pos:pos + 4 * MAX_ANSWER_CHARS].lstrip()
    for opener, closer in _MATH_OPEN.items():
        if rest.startswith(opener):
            end = len(opener) - 1
            while True:
                end = rest.find(closer, end + 1)
                if end < 0 or rest[end - 1] != "\\" or closer != "$":
                    break
            if end >= 0 and not rest[end + len(closer):].strip(" .\t")[:1].isalnum():
                return rest[len(opener):end]
            break
    line = rest.split("\n", 1)[0]
    line = re.split(r"\.\s+I hope|\s+I hope it is correct", line)[0]
    line = re.sub(r"[.\s]+$", "", line).replace('\\"', "").replace('"', "")
    # "The largest $n$ is 34." -> "34"
    parts = re.split(r"\s(?:is|are|equals|=)\s(?![^$]*\$(?:[^$]*\$[^$]*\$)*[^$]*$)", line)
    return parts[-1] if len(parts) > 1 else line


def _final_text(text: str) -> str:
    for marker in _STOP_MARKERS:
        cut = text.find(marker)
        if cut > 0:
            text = text[:cut]
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        if after.strip():
            text = after
    return text


def _answer_spans(text: str, options: Options) -> tuple[str, list[str]] | None:
    """(kind, answers): kind is 'boxed', 'tag', 'phrase' or 'number'. Several answers come from a
    run of adjacent boxes; ``None`` when nothing is found or the boxes disagree."""
    text = _final_text(text.replace("\x00", ""))
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = _answer_spans(tags[-1], Options(last_number_fallback=False))
        return ("tag", inner[1]) if inner else ("tag", [tags[-1].strip()])
    boxes = _boxes(text)
    phrases = list(_PHRASE.finditer(text))
    last_box_end = boxes[-1][1] if boxes else -1
    if phrases and phrases[-1].end() > last_box_end:
        seg = _segment_after(text, phrases[-1].end()).strip()
        if seg and not seg.startswith("\\boxed"):
            return "phrase", [seg]
    if boxes:
        run = [boxes[-1]]
        for box in reversed(boxes[:-1]):
            between = text[box[1]:run[0][0]]
            if len(between) > 200 or not _BOX_JOINER.match(between):
                break
            run.insert(0, box)
        answers = [b[2].strip() for b in run]
        if len(answers) > 1 and re.search(r"\bor\b", text[run[0][0]:run[-1][1]]):
            return None  # "\boxed{3} or \boxed{5}": hedging is not an answer
        if len(run) < len(boxes):
            before = boxes[len(boxes) - len(run) - 1]
            gap = text[before[1]:run[0][0]]
            if len(gap) < 80 and "\n" not in gap and not re.search(r"[.!?]\s", gap) \
                    and _key(before[2]) not in {_key(a) for a in answers}:
                return None  # two different answers side by side
        return "boxed", answers
    if phrases:
        seg = _segment_after(text, phrases[-1].end()).strip()
        if seg:
            return "phrase", [seg]
    if options.last_number_fallback:
        tail = text[-20000:]
        numbers = list(_NUMBER.finditer(tail))
        blocks = list(_MATH_BLOCK.finditer(tail))
        if blocks and (not numbers or numbers[-1].start() < blocks[-1].end()):
            block = next(g for g in blocks[-1].groups() if g is not None).strip()
            if block and len(block) <= MAX_ANSWER_CHARS:
                return "math", [block]
        if numbers:
            return "number", [numbers[-1].group(0)]
    return None


def extract_answer(text: str, *, last_number_fallback: bool = True) -> str | None:
    """The final answer as written: the last ``\\boxed{}``/``\\fbox{}`` (adjacent boxes joined with
    ", "), an ``<answer>`` tag, a closing phrase ("the answer is", "Final answer:", "**Answer:**")
    written after the last box, else the last number. Two boxes offered as alternatives, or a box
    that never closes, give ``None``."""
    try:
        if not isinstance(text, str):
            return None
        got = _answer_spans(text, Options(last_number_fallback=last_number_fallback))
        if not got:
            return None
        answer = ", ".join(a for a in got[1])
        answer = answer.strip().strip("$").strip()
        return answer or None
    except (RecursionError, MemoryError):
        return None


# --------------------------------------------------------------------------------------------
# Parsing answers into trees
# --------------------------------------------------------------------------------------------


class ParseError(ValueError):
    pass


_FUNCS = {"sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "log", "ln", "exp", "sqrt", "abs", "lg", "asin", "acos", "atan", "arccot"}
_CONST_WORDS = {"pi": "pi", "inf": "oo", "infty": "oo", "infinity": "oo", "oo": "oo"}
_UNITS = set("""cm mm km m kg g mg lb lbs oz s sec secs second seconds min mins minute minutes h hr hrs
hour hours day days week weeks month months year years dollar dollars cent cents yuan euro euros
unit units inch inches ft feet foot yard yards mile miles mph kmh km/h meter meters metre metres
liter liters litre litres l ml sq square cubic degree degrees deg rad radian radians people person
students points point ways times apples marbles""".split())
_TEXT_CMDS = {"text", "textbf", "textit", "textrm", "textnormal", "mbox", "mathrm", "mathbf",
              "mathit", "mathsf", "operatorname", "mathbb", "mathcal", "boldsymbol", "rm", "bf"}
_RELOPS = {"=": "=", "==": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "!=": "!=", "\\le": "<=",
           "\\leq": "<=", "\\leqslant": "<=", "\\ge": ">=", "\\geq": ">=", "\\geqslant": ">=",
           "\\lt": "<", "\\gt": ">", "\\ne": "!=", "\\neq": "!=", "\\in": "in", "≤": "<=", "≥": ">=",
           "≠": "!="}
_SKIP_CMDS = {"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr",
              "displaystyle", "quad", "qquad", "limits", "nolimits", "mathop", "hfill", "cdots",
              "ldots", "dots", "middle", "textstyle", "it", "boxed", "fbox"}

_TOKEN = re.compile(r"""
  (?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+(?![A-Za-z]))?|\.\d+)
 |(?P<cmd>\\[A-Za-z]+|\\[{}|,;:!%$ ]|\\\\)
 |(?P<op><=|>=|!=|==|\*\*|[-+*/^_=<>!(),\[\]{}|;:%'≤≥≠±·×÷√π∞∪])
 |(?P<word>[A-Za-z]+)
 |(?P<ws>\s+)
 |(?P<other>.)""", re.VERBOSE | re.DOTALL)

_MATRIX = re.compile(r"\\begin\{(p|b|v|V|B|small)?matrix\}|\\begin\{array\}\{[^{}]*\}")


def _prepare(s: str) -> str:
    """String-level clean-up before tokenising: delimiters, spacing commands, thousands separators,
    degree and percent spellings."""
    s = s.replace("\x00", "").strip()
    s = re.split(r"\\approx|≈|\\sim(?![a-z])", s)[0]
    s = re.sub(r"\\(?:[dtc]frac)", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b|\\circ\b", r" \\deg ", s)
    s = re.sub(r"\\%|%|\b(?:percent(?:age)?|pct)\b", " % ", s)
    s = re.sub(r"\\\$|\$|€|£|¥|\\euro\b|\\pounds\b", " ", s)
    s = s.replace("²", "^2").replace("³", "^3").replace("−", "-").replace("–", "-")
    s = re.sub(r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)", "", s)
    s = re.sub(r",\\!\s*(?=\d{3})", ",", s)
    s = re.sub(r"(?<!\\)\\(?:[,;:! ]|quad|qquad)|~", " ", s)
    s = re.sub(r"(?<![\d.(\[,])(\d{1,3})((?:,\d{3})+)(?![\d,)\]])", lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    if re.fullmatch(r"\s*-?\d{1,3}(?: \d{3})+(?:\.\d+)?\s*", s):
        s = s.replace(" ", "")
    if re.fullmatch(r"\s*\d+,\d{2}\s*", s):  # "1,22": a decimal comma
        s = s.replace(",", ".")
    return s.strip().rstrip(".").strip()


def _tokens(s: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _MATRIX.match(s, pos)
        if m:
            env = re.escape(s[m.start() + 7:s.index("}", m.start() + 7)])
            end = re.compile(r"\\end\{" + env + r"\}").search(s, m.end())
            if end is None:
                raise ParseError("unclosed matrix")
            out.append(("mat", s[m.end():end.start()]))
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
                group = _braced(s, pos) if s[pos:pos + 1] == "{" else None
                if group is None:
                    continue
                content, pos = group
                inner = content.strip()
                if inner.lower() in ("and", "or", ",", "or equivalently"):
                    out.append(("op", ","))
                elif inner.lower() in _UNITS or re.fullmatch(r"[A-Za-z]+(?:\s+[A-Za-z]+)+|[A-Za-z]{4,}", inner) \
                        and inner.lower() not in _FUNCS and inner.lower() not in _CONST_WORDS:
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
                if (len(factors) == 1 and prev[0] == "n" and prev[2] == -1 and tok[1] == "\\frac"
                        and factor[0] == "/" and factor[1][0] == factor[2][0] == "n"):
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
            return text not in _RELOPS and text not in ("\\pm", "\\mp", "\\cdot", "\\times", "\\div",
                                                        "\\cup", "\\}", "\\ast", "\\notin", "\\\\")
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


_GREEK = set("""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu
xi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega""".split())


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


# --------------------------------------------------------------------------------------------
# Comparison, shared by the exact in-process path and the sympy path
# --------------------------------------------------------------------------------------------


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
    return _contains(node, "s") or _contains(node, "text") or any(
        isinstance(n, tuple) and n[0] == "f" and n[1] in "fghpqPQFG" for n in _walk(node))


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
            if g[1] == p[1] == ["="] and _is_label(g[2][0]) and g[2][0] == p[2][0]:
                return self.equal(g[2][1], p[2][1])
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


# The exact in-process path: rational arithmetic with bounds -------------------------------

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
        if exp.denominator != 1 or abs(exp) > 256 or (base != 0 and abs(base.numerator).bit_length() * abs(exp) > _MAX_EXACT_BITS):
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


def _approx_equal(a, x, b, y, options: Options) -> bool:
    """A long decimal equals the value it rounds or truncates to (``0.08333`` = ``1/12``)."""
    for node, dec, other in ((a, x, y), (b, y, x)):
        digits = node[2] if node[0] == "n" else (node[1][2] if node[0] == "neg" and node[1][0] == "n" else -1)
        if digits >= options.approx_digits and abs(dec - other) <= Fraction(1, 10 ** digits):
            return True
    return False


def _exact_sets(a, b) -> bool:
    raise Undecided


def _decide_exact(gold, pred, options: Options) -> bool:
    """True/False when rationals decide it; raises Undecided otherwise."""
    return _Comparer(lambda a, b: _exact_equal(a, b, options), _exact_sets, options).equal(gold, pred)


# --------------------------------------------------------------------------------------------
# The sympy path (runs in helper processes)
# --------------------------------------------------------------------------------------------


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


_gold_cache: dict[str, object] = {}


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


# --------------------------------------------------------------------------------------------
# Deciding one item: normalised strings, exact path, then the helper
# --------------------------------------------------------------------------------------------

_CHOICE_GOLD = re.compile(r"\s*(?:\\text(?:bf)?\{\s*)?(?:\(([A-E])\)(?:\s*\})?(?:\s+[^\n=<>]*)?"
                          r"|([A-E])(?:\s*\})?(?:[\s.)]+[A-Za-z][A-Za-z\s]*)?)\s*")


def _key(s: str) -> str:
    s = _prepare(s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|textnormal|mathbf)\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+", "", s).casefold() if re.fullmatch(r"[A-Za-z][A-Za-z\s'.-]*", s) else re.sub(r"\s+", "", s)


@dataclass
class _Gold:
    """A gold answer prepared once: its key, tree (or None) and kind."""

    raw: str
    key: str
    tree: object
    choice: str | None
    is_text: bool


def _prepare_gold(gold: str) -> _Gold:
    gold = str(gold)[:MAX_ANSWER_CHARS * 4].strip()
    boxed = _boxes(gold)
    if boxed:
        gold = boxed[-1][2]
    m = _CHOICE_GOLD.fullmatch(gold)
    choice = (m.group(1) or m.group(2)) if m and not re.fullmatch(r"\s*[A-E]\s*[=<>].*", gold) else None
    try:
        tree = parse(gold)
    except ParseError:
        tree = None
    is_text = tree is not None and tree[0] == "text"
    return _Gold(gold, _key(gold), tree, choice, is_text)


def _choice_of(prediction: str, options: Options) -> str | None:
    """The option letter a prediction picks (for gold answers such as ``C`` or ``(D) Alina``)."""
    text = _final_text(prediction)
    got = _answer_spans(text, Options(last_number_fallback=False))
    letter = r"(?<![A-Za-z\\])\(?([A-E])\)?(?![A-Za-z])"
    if got:
        answer = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}", r"\1", ", ".join(got[1]))
        m = re.search(letter, answer)
        return m.group(1) if m else None
    m = re.match(r"\s*\(?([A-E])\)?(?:[.):,]|\s*$)", text)
    if m:
        return m.group(1)
    found = re.findall(letter, text[-2000:])
    return found[-1] if found else None


def _prediction_trees(prediction: str, gold: _Gold, options: Options):
    """Candidate trees for a prediction: the extracted answer, and for a gold number, the last
    number inside a wordy phrase answer ("Jane started 3 hours ago")."""
    got = _answer_spans(prediction, options)
    if not got:
        return None, []
    kind, answers = got
    text = ", ".join(answers)
    trees = []
    try:
        trees.append(parse(text))
    except ParseError:
        pass
    wordy = re.search(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}", re.sub(r"\$[^$]*\$|\\[A-Za-z]+", " ", text))
    if kind == "phrase" and (not trees or wordy) and gold.tree is not None and gold.tree[0] == "n":
        numbers = _NUMBER.findall(text)
        if numbers:
            try:
                trees.append(parse(numbers[-1]))
            except ParseError:
                pass
    return text, trees


def _fast(gold: _Gold, prediction: str, options: Options):
    """(decided, verdict, work): decided items need no helper; otherwise ``work`` lists the
    (gold, answer) string pairs for the helper to try."""
    if gold.choice is not None:
        return True, _choice_of(prediction, options) == gold.choice, []
    text, trees = _prediction_trees(prediction, gold, options)
    if text is None:
        return True, False, []
    key = _key(text)
    if key == gold.key:
        return True, True, []
    if gold.is_text:
        return True, False, []
    if gold.tree is None:
        return True, False, []
    work = []
    for tree in trees:
        try:
            if _decide_exact(gold.tree, tree, options):
                return True, True, []
            if not (_contains(tree, "s") or _contains(tree, "c") or _contains(gold.tree, "s") or _contains(gold.tree, "c")):
                continue  # rationals decided it: False, no helper needed
        except Undecided:
            pass
        work.append(tree)
    if not work:
        return True, False, []
    return False, False, work


# --------------------------------------------------------------------------------------------
# Helper processes
# --------------------------------------------------------------------------------------------


def _helper_main(read_fd: int, write_fd: int, memory_bytes: int) -> None:
    """Entry point of a helper process: serve jobs until the pipe closes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except Exception:
        pass
    sys.setrecursionlimit(5000)
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    import sympy  # noqa: F401  (imported before "ready": start-up is not charged to a call)

    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            gold, trees_per_item, options = conn_in.recv()
        except (EOFError, OSError):
            os._exit(0)
        for k, trees in enumerate(trees_per_item):
            verdict = False
            for tree in trees:
                try:
                    if _decide_sympy(gold, tree, options):
                        verdict = True
                        break
                except Exception:  # MemoryError, RecursionError, sympy's own errors: not equal
                    pass
            conn_out.send(("r", k, verdict))


class _Helper:
    """One helper process and its pipes."""

    def __init__(self, spawn):
        self.proc, self.conn_in, self.conn_out = spawn()
        self.ready = False

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for c in (self.conn_in, self.conn_out):
            try:
                c.close()
            except OSError:
                pass


class _Pool:
    """Lazily started helper processes; a job past its limit kills its helper."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.pid = os.getpid()
        self.idle: list[_Helper] = []
        self.count = 0
        self.cv = threading.Condition()
        self.spawn_requests: queue.Queue = queue.Queue()
        self.all: set[_Helper] = set()
        # Helpers are started from one long-lived thread: PR_SET_PDEATHSIG fires when the
        # *thread* that started a process exits, so it must not be a caller's short-lived thread.
        threading.Thread(target=self._spawner, name="rewards.math-spawner", daemon=True).start()

    def _spawner(self) -> None:
        while True:
            reply = self.spawn_requests.get()
            try:
                reply.put(self._popen())
            except Exception as exc:  # reported to the caller
                reply.put(exc)

    def _popen(self):
        r1, w1 = os.pipe()  # parent -> helper
        r2, w2 = os.pipe()  # helper -> parent
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        code = "import sys; from rewards.math import _helper_main; _helper_main(*map(int, sys.argv[1:]))"
        try:
            proc = subprocess.Popen([sys.executable, "-c", code, str(r1), str(w2), str(HELPER_MEMORY_BYTES)],
                                    pass_fds=(r1, w2), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env, close_fds=True)
        finally:
            os.close(r1)
            os.close(w2)
        return proc, Connection(r2, writable=False), Connection(w1, readable=False)

    def _spawn(self):
        reply: queue.Queue = queue.Queue()
        self.spawn_requests.put(reply)
        got = reply.get()
        if isinstance(got, Exception):
            raise got
        return got

    def acquire(self, want: int) -> list[_Helper]:
        """Up to ``want`` helpers (at least one), starting new ones while under ``size``."""
        with self.cv:
            while not self.idle and self.count >= self.size:
                self.cv.wait()
            got = self.idle[:want]
            del self.idle[:len(got)]
            fresh = min(want - len(got), self.size - self.count)
            self.count += fresh
        for _ in range(fresh):
            try:
                helper = _Helper(self._spawn)
                self.all.add(helper)
                got.append(helper)
            except Exception:
                with self.cv:
                    self.count -= 1
                    self.cv.notify()
        return got

    def release(self, helper: _Helper, alive: bool) -> None:
        with self.cv:
            if alive:
                self.idle.append(helper)
            else:
                helper.kill()
                self.all.discard(helper)
                self.count -= 1
            self.cv.notify()

    def replace(self, helper: _Helper) -> _Helper | None:
        helper.kill()
        self.all.discard(helper)
        try:
            fresh = _Helper(self._spawn)
        except Exception:
            with self.cv:
                self.count -= 1
                self.cv.notify()
            return None
        self.all.add(fresh)
        return fresh

    def shutdown(self) -> None:
        for helper in list(self.all):
            helper.kill()
        self.all.clear()


_pool: _Pool | None = None
stats = {"helper_items": 0, "timeouts": 0}  # counters for this process (benchmarks, metrics)
_pool_lock = threading.Lock()


def _default_workers() -> int:
    env = os.environ.get("RLWHF_MATH_WORKERS")
    if env and env.isdigit():
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # a forked child gets its own helpers
            _pool = _Pool(_default_workers())
        return _pool


@atexit.register
def shutdown() -> None:
    """Kill the helper processes (also runs at interpreter exit)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool.pid == os.getpid():
            _pool.shutdown()
        _pool = None


def warm_up() -> None:
    """Start one helper process now, so the first symbolic comparison does not wait for it."""
    pool = _get_pool()
    helpers = pool.acquire(1)
    for h in helpers:
        alive = _await_ready(h)
        pool.release(h, alive)


def _await_ready(helper: _Helper) -> bool:
    if helper.ready:
        return True
    try:
        if helper.conn_in.poll(STARTUP_TIMEOUT_S) and helper.conn_in.recv()[0] == "ready":
            helper.ready = True
            return True
    except (EOFError, OSError):
        pass
    return False


def _run_jobs(jobs: list[tuple[object, list[list]]], options: Options, timeout_s: float) -> list[list[bool]]:
    """Each job is (gold tree, [trees of one item, ...]); returns verdicts per job and item.
    Every item gets ``timeout_s`` from when its helper starts on it; one that overruns scores
    False and its helper is replaced."""
    results = [[False] * len(items) for _, items in jobs]
    pending = []  # (job index, first item, items): chunks not yet sent
    n_items = sum(len(items) for _, items in jobs)
    if n_items == 0:
        return results
    stats["helper_items"] += n_items
    pool = _get_pool()
    helpers = pool.acquire(min(pool.size, n_items))
    if not helpers:
        return results
    chunk = max(1, -(-n_items // len(helpers)))
    for j, (_, items) in enumerate(jobs):
        for start in range(0, len(items), chunk):
            pending.append((j, start, items[start:start + chunk]))
    pending.reverse()
    busy: dict[_Helper, list] = {}  # helper -> [job, first, items, next index, deadline]
    idle = list(helpers)
    try:
        while pending or busy:
            while pending and idle:
                helper = idle.pop()
                if not _await_ready(helper):
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
                    elif not idle and not busy:
                        return results
                    continue
                j, first, items = pending.pop()
                try:
                    helper.conn_out.send((jobs[j][0], items, options))
                except (OSError, ValueError):
                    pending.append((j, first, items))
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
                    continue
                busy[helper] = [j, first, items, 0, time.monotonic() + timeout_s]
            if not busy:
                break
            now = time.monotonic()
            soonest = min(state[4] for state in busy.values())
            ready = wait([h.conn_in for h in busy], timeout=max(0.0, soonest - now))
            by_conn = {h.conn_in: h for h in busy}
            for conn in ready:
                helper = by_conn[conn]
                state = busy[helper]
                try:
                    _, k, verdict = conn.recv()
                except (EOFError, OSError):  # died (memory limit): this item is False
                    _requeue_after(state, pending)
                    del busy[helper]
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
                    continue
                results[state[0]][state[1] + k] = bool(verdict)
                state[3] = k + 1
                state[4] = time.monotonic() + timeout_s
                if state[3] == len(state[2]):
                    del busy[helper]
                    idle.append(helper)
            now = time.monotonic()
            for helper, state in list(busy.items()):
                if state[4] <= now and helper.conn_in not in ready:
                    stats["timeouts"] += 1
                    _requeue_after(state, pending)
                    del busy[helper]
                    fresh = pool.replace(helper)
                    if fresh is not None:
                        idle.append(fresh)
        return results
    finally:
        for helper in idle:
            pool.release(helper, True)
        for helper in busy:  # interrupted mid-job (KeyboardInterrupt): never reuse out of step
            pool.release(helper, False)


def _requeue_after(state, pending) -> None:
    """The item in progress scored False; the rest of its chunk goes back in the queue."""
    j, first, items, done = state[:4]
    rest = items[done + 1:]
    if rest:
        pending.append((j, first + done + 1, rest))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def verify_batch(golds: list[str], predictions: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 options: Options = DEFAULTS) -> list[bool]:
    """``verify`` for many pairs at once: each distinct gold is prepared once, items decided by
    exact arithmetic never leave the process, and the rest run in the helper pool in parallel,
    each under ``timeout_s``. Never raises on odd inputs (non-strings score False)."""
    if len(golds) != len(predictions):
        raise ValueError(f"verify_batch: {len(golds)} golds for {len(predictions)} predictions")
    out = [False] * len(predictions)
    prepared: dict[str, _Gold | None] = {}
    jobs: dict[str, tuple[object, list, list]] = {}  # gold key -> (tree, items, output indices)
    for i, (gold, prediction) in enumerate(zip(golds, predictions)):
        try:
            if not isinstance(prediction, str) or gold is None:
                continue
            g = str(gold)
            if g not in prepared:
                prepared[g] = _prepare_gold(g)
            decided, verdict, work = _fast(prepared[g], prediction, options)
            if decided:
                out[i] = verdict
            else:
                jobs.setdefault(g, (prepared[g].tree, [], []))
                jobs[g][1].append(work)
                jobs[g][2].append(i)
        except (RecursionError, MemoryError, ParseError, ValueError, TypeError, ArithmeticError):
            out[i] = False
    if jobs:
        ordered = list(jobs.values())
        verdicts = _run_jobs([(tree, items) for tree, items, _ in ordered], options, timeout_s)
        for (_, _, indices), vs in zip(ordered, verdicts):
            for i, v in zip(indices, vs):
                out[i] = v
    return out


def verify(gold: str, prediction: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, options: Options = DEFAULTS) -> bool:
    """True when the final answer in ``prediction`` (a model's whole output) equals ``gold``.
    Never raises; returns within ``timeout_s`` (plus helper start-up on first use)."""
    try:
        return verify_batch([gold], [prediction], timeout_s=timeout_s, options=options)[0]
    except Exception:
        return False


def answers_equal(gold: str, answer: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Compare two bare answers (no extraction)."""
    return verify(gold, f"\\boxed{{{answer}}}", timeout_s=timeout_s)


@reward("math_accuracy")
def math_accuracy(completions: list[str], *, answer: list[str], **_) -> list[float]:
    """1.0 when the completion's final answer equals the gold ``answer`` column, else 0.0."""
    return [1.0 if ok else 0.0 for ok in verify_batch(list(answer), list(completions))]
