"""Deciding one item in the calling process: option letters, normalised strings, the exact
path; what is left becomes work for the helper processes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.math.compare import Undecided, _contains
from rewards.math.exact import _decide_exact
from rewards.math.extraction import _BOX_JOINER, _NUMBER, _answer_spans, _boxes, _final_text
from rewards.math.options import MAX_ANSWER_CHARS, Options
from rewards.math.parsing import ParseError, _key, _undouble, parse

_CHOICE_GOLD = re.compile(
    r"\s*(?:\\text(?:bf)?\{\s*)?(?:\(([A-E])\)(?:\s*\})?(?:\s+[^\n=<>]*)?"
    r"|([A-E])(?:\s*\})?(?:[\s.)]+[A-Za-z][A-Za-z\s]*)?)\s*"
)


@dataclass
class _Gold:
    """A gold answer prepared once: its key, tree (or None) and kind."""

    raw: str
    key: str
    tree: object
    choice: str | None
    is_text: bool


def _gold_boxes(gold: str) -> str | None:
    """The boxed part of a gold answer; boxes at the end joined by punctuation, "and", "or" or a
    short phrase with one of them ("\\boxed{1} papers and \\boxed{2} bins") are all of it."""
    boxes = _boxes(gold)
    if not boxes:
        return None
    first = len(boxes) - 1
    while first > 0:
        between = gold[boxes[first - 1][1] : boxes[first][0]]
        if not (
            _BOX_JOINER.match(between)
            or len(between) <= 40
            and "\n" not in between
            and re.search(r"[,;]|\b(?:and|or)\b", between)
        ):
            break
        first -= 1
    return ", ".join(b[2].strip() for b in boxes[first:])


def _prepare_gold(gold: str) -> _Gold:
    gold = _undouble(str(gold)[: MAX_ANSWER_CHARS * 4].strip())
    gold = _gold_boxes(gold) or gold
    m = _CHOICE_GOLD.fullmatch(gold)
    choice = (m.group(1) or m.group(2)) if m and not re.fullmatch(r"\s*[A-E]\s*[=<>].*", gold) else None
    try:
        tree = parse(gold)
    except ParseError:
        tree = None
        # a worked solution as the gold: its final answer ("... The final answer is $28\%$.")
        got = _answer_spans(gold, Options(last_number_fallback=False)) if choice is None else None
        if got and got[0] in ("phrase", "tag"):
            try:
                gold = ", ".join(got[1])
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
    if text is None or not gold.key:  # an empty gold pays nothing, not even an empty box
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
            if not (
                _contains(tree, "s") or _contains(tree, "c") or _contains(gold.tree, "s") or _contains(gold.tree, "c")
            ):
                continue  # rationals decided it: False, no helper needed
        except Undecided:
            pass
        work.append(tree)
    if not work:
        return True, False, []
    return False, False, work
