"""Extraction: the final answer as written in a model's whole output (boxes, answer tags,
closing phrases, a last math block or number)."""

from __future__ import annotations

import re

from rewards.math.options import MAX_ANSWER_CHARS, Options
from rewards.math.parsing import ParseError, _braced, _key, _undouble, parse

_STOP_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")
_PHRASE = re.compile(
    r"(?:final\s+answer(?:\s+is)?|the\s+(?:correct\s+)?answer\s+is|\banswer\s*(?:is)?\s*:|"
    r"\*\*\s*answer\s*:?\s*\*\*|^\s*#{1,4}\s*answer\b|^\s*answer\b|^####)\s*:?\s*",
    re.IGNORECASE | re.MULTILINE,
)
# 1,234.5 | 1 000 | 1,22 (decimal comma) | 12.5 | .4, then an optional /denominator
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?(?![\d,])"
    r"|\d+,\d\d(?![\d,])|\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?"
)
_BARE_LATEX = re.compile(r"[-+]?(?:[\w.^{}()\[\]/*+-]|\\[A-Za-z]+)+")  # no spaces, $, = or commas
_BOX_WORD = re.compile(r"[^\s$]+")
_MATH_OPENER = re.compile(r"\$|\\[\[(]")
_BOX_JOINER = re.compile(
    r"^(?:[\s,;.$]|\\quad|\\qquad|\\[,;:! ]|\\text\{[^{}]*\band\b[^{}]*\}|\\text\{\s*,?\s*\}|\band\b|&|[A-Za-z](?:_\{?\w+\}?)?\s*=|\\\]|\\\[|\\\(|\\\))*$"
)
_MATH_OPEN = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}


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
            word = _BOX_WORD.match(text, m.end())  # match at a position: no copy of the rest
            if word:
                out.append((m.start(), word.end(), word.group(0)))
    return out


def _segment_after(text: str, pos: int) -> str:
    """The answer written after an answer phrase ending at ``pos``: one math block, else the line."""
    rest = text[pos : pos + 4 * MAX_ANSWER_CHARS].lstrip()
    for opener, closer in _MATH_OPEN.items():
        if rest.startswith(opener):
            end = len(opener) - 1
            while True:
                end = rest.find(closer, end + 1)
                if end < 0 or rest[end - 1] != "\\" or closer != "$":
                    break
            after = rest[end + len(closer) :]
            if end >= 0 and (not after.strip(" .\t")[:1].isalnum() or re.match(r"[ \t]*[.!]\s", after)):
                return rest[len(opener) : end]  # the block ends the phrase, or its sentence
            break
    line = rest.split("\n", 1)[0]
    line = re.split(r"\.\s+I hope|\s+I hope it is correct", line)[0]
    line = re.sub(r"[.\s]+$", "", line).replace('\\"', "").replace('"', "")
    # "The largest $n$ is 34." -> "34"
    parts = re.split(r"\s(?:is|are|equals|=)\s(?![^$]*\$(?:[^$]*\$[^$]*\$)*[^$]*$)", line)
    return parts[-1] if len(parts) > 1 else line


def _last_math_block(text: str) -> tuple[int, str] | None:
    """(end, content) of the last ``$$..$$``, ``\\[..\\]``, ``\\(..\\)`` or ``$..$`` block, read left
    to right as a regex scan would, but in linear time: the next closer of each kind is looked up
    once and reused until the scan passes it."""
    nxt: dict[str, int] = {}

    def closer(token: str, start: int) -> int:
        if nxt.get(token, -2) != -1 and nxt.get(token, -2) < start:
            nxt[token] = text.find(token, start)
        return nxt[token]

    last, pos = None, 0
    for m in _MATH_OPENER.finditer(text):
        p = m.start()
        if p < pos:
            continue
        if text.startswith("$$", p):
            end = closer("$$", p + 3)
            if end >= 0:
                last, pos = (end + 2, text[p + 2 : end]), end + 2
                continue
        if text.startswith(("\\[", "\\("), p):
            end = closer("\\]" if text[p + 1] == "[" else "\\)", p + 3)
            if end >= 0:
                last, pos = (end + 2, text[p + 2 : end]), end + 2
            continue
        if p > 0 and text[p - 1] in "\\$":
            continue
        end = closer("$", p + 1)
        if end > p + 1 and text[end - 1] != "\\":
            last, pos = (end + 1, text[p + 1 : end]), end + 1
    return last


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


def _last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>``. Found from the end in linear time: a regex
    scan is quadratic on many unclosed tags."""
    low = text.lower()
    end = low.rfind("</answer>")
    start = low.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end] if start >= 0 else None


def _answer_spans(text: str, options: Options) -> tuple[str, list[str]] | None:
    """(kind, answers): kind is 'boxed', 'tag', 'phrase' or 'number'. Several answers come from a
    run of adjacent boxes; ``None`` when nothing is found or the boxes disagree."""
    text = _undouble(_final_text(text.replace("\x00", "")))
    tag = _last_answer_tag(text)
    if tag is not None:
        inner = _answer_spans(tag, Options(last_number_fallback=False))
        return ("tag", inner[1]) if inner else ("tag", [tag.strip()])
    boxes = _boxes(text)
    phrases = list(_PHRASE.finditer(text))
    last_box_end = boxes[-1][1] if boxes else -1
    if phrases and phrases[-1].end() > last_box_end:
        seg = _segment_after(text, phrases[-1].end()).strip()
        if seg and not seg.startswith("\\boxed"):
            return "phrase", [seg]
    if boxes:
        first = len(boxes) - 1  # the run of adjacent boxes at the end is boxes[first:]
        while first > 0:
            between = text[boxes[first - 1][1] : boxes[first][0]]
            if len(between) > 200 or not _BOX_JOINER.match(between):
                break
            first -= 1
        run = boxes[first:]
        answers = [b[2].strip() for b in run]
        if len(answers) > 1 and re.search(r"\bor\b", text[run[0][0] : run[-1][1]]):
            return None  # "\boxed{3} or \boxed{5}": hedging is not an answer
        if len(run) < len(boxes):
            before = boxes[len(boxes) - len(run) - 1]
            gap = text[before[1] : run[0][0]]
            if (
                len(gap) < 80
                and "\n" not in gap
                and not re.search(r"[.!?]\s", gap)
                and _key(before[2]) not in {_key(a) for a in answers}
            ):
                return None  # two different answers side by side
        return "boxed", answers
    if phrases:
        seg = _segment_after(text, phrases[-1].end()).strip()
        if seg:
            return "phrase", [seg]
    if options.last_number_fallback:
        tail = text[-20000:]
        numbers = list(_NUMBER.finditer(tail))
        last = _last_math_block(tail)
        if last and (not numbers or numbers[-1].start() < last[0]):
            block = last[1].strip()
            if block and len(block) <= MAX_ANSWER_CHARS:
                return "math", [block]
        if numbers:
            latex = _latex_around(tail, numbers[-1])
            return ("math", [latex]) if latex else ("number", [numbers[-1].group(0)])
    return None


def _latex_around(text: str, number: re.Match) -> str | None:
    """The LaTeX expression written without delimiters around a number, as in ``x = \\frac{10}{9}``
    (whose last number is 9); None when the number stands alone."""
    start = text.rfind(" ", 0, number.start()) + 1
    for m in _BARE_LATEX.finditer(text, start, min(len(text), number.end() + 200)):
        if m.start() <= number.start() and m.end() >= number.end():
            span = m.group(0).rstrip(".")
            break
    else:
        return None
    if (
        span == number.group(0)
        or len(span) > MAX_ANSWER_CHARS
        or not re.search(r"\\[A-Za-z]|\^|\{", span)
        or span.count("{") != span.count("}")
    ):
        return None
    try:
        parse(span)
    except ParseError:
        return None
    return span


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
