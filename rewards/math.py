"""Math answer checking: extract the final answer from a model's output and compare it with gold.

``verify(gold, prediction)`` never raises and never blocks past ``timeout_s``: cheap checks
(normalised strings, exact rational numbers) run in-process; symbolic equivalence (sympy) runs in
a killable helper process, so a hazard such as ``9^{9^{9^9}}`` costs at most the limit and scores
False, from any thread or Ray worker (no signals involved).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import re
import threading
from fractions import Fraction

from rewards import reward

DEFAULT_TIMEOUT_S = 2.0
MAX_ANSWER_CHARS = 512  # a longer "answer" is not an answer; never hand it to a parser

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PHRASES = re.compile(r"(?:final answer|the answer is|\*\*answer:?\*\*|answer:)\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _boxed_contents(text: str) -> list[str]:
    out, i = [], 0
    while True:
        starts = [p for p in (text.find("\\boxed{", i), text.find("\\fbox{", i)) if p >= 0]
        if not starts:
            return out
        start = min(starts)
        j = text.index("{", start) + 1
        depth, k = 1, j
        while k < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            k += 1
        if depth:
            return out
        out.append(text[j:k - 1])
        i = k


def extract_answer(text: str, *, last_number_fallback: bool = True) -> str | None:
    """The final answer as written: last ``\\boxed{}``/``\\fbox{}``, ``<answer>`` tag, a closing
    phrase ("the answer is", "Final answer:"), else the last number. Two different boxed answers
    mean no answer."""
    if not isinstance(text, str):
        return None
    text = text.replace("\x00", "")
    boxed = _boxed_contents(text)
    if boxed:
        if len({_normalise(b) for b in boxed}) > 1:
            return None
        return boxed[-1].strip()
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    phrases = _PHRASES.findall(text)
    if phrases:
        return phrases[-1].strip().rstrip(".").strip("$ ").strip()
    if last_number_fallback:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


def _normalise(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|!|,|;|:)", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"^[a-zA-Z]\s*=", "", s)  # "x=2" answers "2"
    return s


def _as_fraction(s: str) -> Fraction | None:
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        if re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?", s) and len(s) < 64:
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _symbolic_equal(a: str, b: str) -> bool:
    """Runs in the helper process: parse both sides with sympy and test the difference for zero."""
    import sympy
    from sympy.parsing.latex import parse_latex
    from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    transformations = standard_transformations + (implicit_multiplication_application,)

    def parse(s: str):
        try:
            return parse_expr(s.replace("^", "**"), transformations=transformations, evaluate=True)
        except Exception:
            return parse_latex(s)

    try:
        return bool(sympy.simplify(parse(a) - parse(b)) == 0)
    except Exception:
        return False


def _serve(conn) -> None:
    while True:
        try:
            a, b = conn.recv()
        except EOFError:
            return
        conn.send(_symbolic_equal(a, b))


class _SymbolicWorker:
    """One helper process; a call past its limit kills it and the next call starts another."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = self._conn = None
        atexit.register(self._kill)

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.join(timeout=2)
            except (AttributeError, ValueError):  # already reaped by multiprocessing at exit
                pass
        self._proc = self._conn = None

    def equal(self, a: str, b: str, timeout_s: float) -> bool:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                ctx = mp.get_context("spawn")
                self._conn, child = ctx.Pipe()
                self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
                self._proc.start()
                child.close()
            try:
                self._conn.send((a, b))
                if self._conn.poll(timeout_s):
                    return bool(self._conn.recv())
            except (EOFError, OSError):
                pass
            self._kill()
            return False


_symbolic = _SymbolicWorker()


def answers_equal(gold: str, answer: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    g, a = _normalise(gold), _normalise(answer)
    if g == a:
        return True
    fg, fa = _as_fraction(g), _as_fraction(a)
    if fg is not None and fa is not None:
        return fg == fa
    if len(g) > MAX_ANSWER_CHARS or len(a) > MAX_ANSWER_CHARS:
        return False
    return _symbolic.equal(g, a, timeout_s)


def verify(gold: str, prediction: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the final answer extracted from ``prediction`` equals ``gold``. Never raises."""
    try:
        answer = extract_answer(prediction)
        return answer is not None and answers_equal(str(gold), answer, timeout_s=timeout_s)
    except Exception:
        return False


def verify_batch(golds: list[str], predictions: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[bool]:
    return [verify(g, p, timeout_s=timeout_s) for g, p in zip(golds, predictions)]


@reward("math_accuracy")
def math_accuracy(completions: list[str], *, answer: list[str], **_) -> list[float]:
    """1.0 when the completion's final answer equals the gold ``answer`` column (symbolically)."""
    return [1.0 if ok else 0.0 for ok in verify_batch(answer, completions)]
