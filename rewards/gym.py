"""reasoning-gym's verifiers as a reward: each task scores an answer with its own ``score_answer``.

The answer is taken from the completion by an extractor (``extract``):

- ``tags``: the last ``<answer>...</answer>``;
- ``boxed``: the last ``\\boxed{...}``;
- ``phrase``: what follows the last "final answer is" / "the answer is" / "Answer:" on its line;
- ``last_line``: the last non-empty line;

(for the last two, the right side of an equation and without markup or a full stop: "41 * 52 = 2132."
gives "2132");
- ``auto`` (default): the first of tags, boxed, phrase, last line that finds something.

Text after an end-of-turn marker is ignored, and so is a ``<think>`` block when an answer follows it.
reasoning-gym pays partial credit on some tasks (the gold as a substring of a longer answer scores 0.5
on several); ``partial_credit: false`` (default) pays 1.0 only for a full score and 0.0 otherwise.
"""

from __future__ import annotations

import json
from functools import cache

from rewards import reward, text_of
from rewards.math.extraction import _PHRASE, _boxes, _final_text, _last_answer_tag, _segment_after

EXTRACTORS = ("auto", "tags", "boxed", "phrase", "last_line")


def _phrase(text: str) -> str | None:
    found = list(_PHRASE.finditer(text))
    return _segment_after(text, found[-1].end()).strip() if found else None


def _boxed(text: str) -> str | None:
    boxes = _boxes(text)
    return boxes[-1][2].strip() if boxes else None


def _tags(text: str) -> str | None:
    tag = _last_answer_tag(text)
    return tag.strip() if tag is not None else None


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _tidy(answer: str) -> str:
    """An answer without its equation's left side ("41 * 52 = 2132" -> "2132") or the markup and
    full stop around it."""
    if "=" in answer and not answer.rstrip().endswith("="):
        answer = answer.rsplit("=", 1)[1]
    return answer.strip().strip("*$`").strip().removesuffix(".").strip()


_BY_NAME = {"tags": _tags, "boxed": _boxed, "phrase": _phrase, "last_line": _last_line}


def extract_answer(completion: str, how: str = "auto") -> str | None:
    """The answer a completion gives, found as ``how`` says (module docstring); None if there is none."""
    if how not in EXTRACTORS:
        raise ValueError(f"extract={how!r}: expected one of {', '.join(EXTRACTORS)}")
    text = _final_text(completion.replace("\x00", ""))
    for name in ("tags", "boxed", "phrase", "last_line") if how == "auto" else (how,):
        found = _BY_NAME[name](text)
        if found and name in ("phrase", "last_line"):
            found = _tidy(found)
        if found:
            return found
    return None


@cache
def _scorer(dataset: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


def score_entry(answer: str | None, dataset: str, entry: dict, partial_credit: bool = False) -> float:
    """reasoning-gym's score of ``answer`` for ``entry`` of task ``dataset``; exact-or-nothing unless
    ``partial_credit``."""
    if answer is None:
        return 0.0
    score = float(_scorer(dataset)(answer, entry) or 0.0)
    return score if partial_credit else float(score >= 1.0)


@reward("reasoning_gym")
def reasoning_gym_accuracy(
    completions: list,
    *,
    prompts: list | None = None,
    answer: list[str],
    gym_dataset: list[str],
    gym_metadata: list[str],
    extract: str = "auto",
    partial_credit: bool = False,
    **_,
) -> list[float]:
    """Each completion's answer (``extract``) scored by its reasoning-gym task's own ``score_answer``
    against the row's gold ``answer`` and metadata (columns written by ``data.task: reasoning_gym``)."""
    out = []
    for i, completion in enumerate(completions):
        entry = {
            "question": text_of(prompts[i]) if prompts else "",
            "answer": answer[i],
            "metadata": json.loads(gym_metadata[i]),
        }
        out.append(score_entry(extract_answer(text_of(completion), extract), gym_dataset[i], entry, partial_credit))
    return out
