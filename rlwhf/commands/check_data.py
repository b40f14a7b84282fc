"""``rlwhf data check``: a prompt data set, or the rows a procedural task generates, checked before
a long run with every check in ``rlwhf.data.rows`` (the costly ones too: the prompt rendered for the
recipe's tokenizer, the math verifier on each gold answer, reference solutions in the sandbox), and a
cleaned copy written on request.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from rewards.gym import score_entry
from rlwhf.commands import output
from rlwhf.config import DATA_FILE_SUFFIXES
from rlwhf.data.prompts import PromptRenderer
from rlwhf.data.rows import KINDS, ROW_NUMBERS, DataReport, Problem, check_rows, math_reward_used, short_repr
from rlwhf.data.source import load_task, read_table, table_rows
from rlwhf.models.gguf import local_model_path
from rlwhf.models.tokenizer import build_tokenizer


def renderer_for(recipe, notes: list[str]):
    """The recipe's prompt renderer: the tiny model's tokenizer built locally, else the model's own
    (None, with a note, when it cannot be loaded)."""
    if recipe.model.path == "tiny":
        return PromptRenderer(build_tokenizer(recipe.model.tiny.chat_format), recipe.data)
    try:
        return PromptRenderer.from_pretrained(local_model_path(recipe.model.path), recipe.data)
    except Exception as exc:
        notes.append(
            f"overlong_prompt: not checked, the tokenizer of {recipe.model.path!r} cannot be loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        )
        return None


def check_dataset(
    source: str,
    recipe,
    *,
    split: str | None = None,
    subset: str | None = None,
    code: bool = True,
    tests_column: str = "tests",
    solution_column: str = "solution",
) -> tuple[DataReport, object]:
    """Read ``source`` (a local data file or an HF dataset name) as the recipe would and check every
    row. Returns the report and the ``datasets.Dataset`` read (for a cleaned copy)."""
    split = split or recipe.data.split
    table = read_table(source, subset, split)
    rows = table_rows(table, source)
    cfg = recipe.data
    report = DataReport(source, split, len(rows), list(table.column_names))
    missing = [c for c in dict.fromkeys((cfg.prompt_column, cfg.answer_column)) if c not in table.column_names]
    for column in missing:
        which = "prompt" if column == cfg.prompt_column else "answer"
        report.problems.append(
            Problem(
                None,
                "missing_column",
                f"no {which} column {column!r} (data.{which}_column); columns: {', '.join(table.column_names)}",
            )
        )
    if cfg.prompt_column in missing:
        report.notes.append("row checks: not run, there is no prompt column")
        return report, table
    uses_math = math_reward_used(recipe)
    answer_column = None if cfg.answer_column in missing else cfg.answer_column
    renderer = renderer_for(recipe, report.notes)
    if not code:
        report.notes.append("failing_reference: not checked (--no-code)")
    report.problems += check_rows(
        rows,
        prompt_column=cfg.prompt_column,
        answer_column=answer_column,
        needs_answer=uses_math,
        math=uses_math,
        renderer=renderer,
        max_prompt_tokens=recipe.rollout.max_prompt_tokens,
        code=code,
        tests_column=tests_column,
        solution_column=solution_column,
        notes=report.notes,
    )
    return report, table


def check_generated_task(recipe, split: str = "train") -> DataReport:
    """The rows a procedural ``data.task`` (reasoning_gym) generates for ``split`` (``train`` or
    ``test``: held-out), checked as a file's would be; for reasoning-gym, each gold answer is also
    scored by its task's own verifier, which must give it full marks."""
    if split not in ("train", "test"):
        raise ValueError(f"--split {split!r}: a generated task has the splits 'train' and 'test' (held-out)")
    task = load_task(recipe.data, recipe.run.seed)
    rows = task.train if split == "train" else task.test
    names = ", ".join(s.name for s in recipe.data.gym)
    report = DataReport(f"reasoning_gym ({names})", split, len(rows), list(rows[0]) if rows else [])
    found = check_rows(
        rows,
        needs_answer=True,
        renderer=renderer_for(recipe, report.notes),
        max_prompt_tokens=recipe.rollout.max_prompt_tokens,
        notes=report.notes,
    )
    repeats = sum(p.kind == "duplicate_prompt" for p in found)
    if repeats:  # a small task's training rows repeat questions by design (none of them is held out)
        report.notes.append(
            f"{repeats} {split} rows repeat an earlier question (the task has few at this "
            "difficulty); not a problem, no held-out question is among them"
        )
    report.problems += [p for p in found if p.kind != "duplicate_prompt"]
    for i, row in enumerate(rows):
        entry = {"question": row["prompt"], "answer": row["answer"], "metadata": json.loads(row["gym_metadata"])}
        if score_entry(row["answer"], row["gym_dataset"], entry) < 1.0:
            report.problems.append(
                Problem(
                    i,
                    "gold_not_accepted",
                    f"{row['gym_dataset']}'s score_answer gives the gold {short_repr(row['answer'])} less than 1",
                )
            )
    order = {kind: k for k, kind in enumerate(KINDS)}
    report.problems.sort(key=lambda p: (-1 if p.row is None else p.row, order[p.kind]))
    return report


def write_clean(table, report: DataReport, out: Path) -> int:
    """Every row without a problem (of duplicates, the first), with the file's own columns, to
    ``out`` (jsonl or json lines, or parquet, by its suffix). Returns the rows written."""
    bad = report.bad_rows()
    keep = [i for i in range(len(table)) if i not in bad]
    clean = table.select(keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        clean.to_parquet(str(out))
    else:
        clean.to_json(str(out), lines=True, force_ascii=False)
    return len(keep)


def print_report(report: DataReport, console, show: int = 5) -> None:
    """A table of counts per kind, then the first ``show`` rows of each kind with the reason."""

    console.print(Text(f"{report.source} ({report.split} split): {report.rows} rows; {ROW_NUMBERS}", style="bold"))
    counts = report.counts()
    if not counts:
        console.print("no problems: every row passed every check that ran")
    table = Table()
    table.add_column("problem")
    table.add_column("rows", justify="right")
    table.add_column("meaning")
    for kind, meaning in KINDS.items():
        if kind in counts:
            table.add_row(kind, str(counts[kind]), meaning)
    if "missing_column" not in counts:
        table.add_row(
            Text("rows with a problem", style="bold"),
            Text(str(len(report.bad_rows())), style="bold"),
            f"of {report.rows}; kept by --clean: {report.rows - len(report.bad_rows())}",
        )
    if counts:
        console.print(table)
    for kind in counts:
        found = [p for p in report.problems if p.kind == kind]
        console.print(Text(f"{kind} ({len(found)}):", style="bold"))
        for p in found[:show]:
            where = "file" if p.row is None else f"row {p.row}"
            console.print(Text(f"  {where}: {p.reason}"))
        if len(found) > show:
            console.print(Text(f"  ... and {len(found) - show} more (--show N, or --json PATH for all)", style="dim"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"))


def check_data(
    recipe,
    source: str | None = None,
    *,
    split: str | None = None,
    subset: str | None = None,
    clean: Path | None = None,
    json_path: Path | None = None,
    code: bool = True,
    show: int = 5,
    solution_column: str = "solution",
) -> bool:
    """``rlwhf data check``: check ``source`` (default: the recipe's data set, or the rows its procedural
    task generates), print the report, write it as JSON and a cleaned copy where asked. Returns
    whether every row passed."""
    if source is None and recipe.data.task == "reasoning_gym":
        if clean is not None:
            raise ValueError(
                "--clean: the recipe's task is generated (data.task reasoning_gym), there is no file to copy"
            )
        report = check_generated_task(recipe, split or "train")
        _print_report(report, json_path, show)
        return report.ok
    if source is None:
        if recipe.data.task != "dataset":
            raise ValueError(
                f"no SOURCE given and the recipe's data.task is {recipe.data.task!r}, not 'dataset'; "
                "give a data file or HF dataset name, or a --recipe whose data.task is dataset"
            )
        source, subset = recipe.data.dataset, subset or recipe.data.subset
    if source.rsplit(".", 1)[-1] in DATA_FILE_SUFFIXES and not Path(source).is_file():
        raise ValueError(
            f"{source}: no such file (relative paths start from {Path.cwd()}); expected a local "
            f"{'/'.join(DATA_FILE_SUFFIXES)} file or a Hugging Face dataset name"
        )
    if clean is not None and clean.suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"--clean {clean}: expected a .jsonl or .parquet file name")
    import datasets

    datasets.disable_progress_bars()
    try:
        report, table = check_dataset(
            source, recipe, split=split, subset=subset, code=code, solution_column=solution_column
        )
    except ValueError:  # read_table's, naming the data set
        raise
    except Exception as exc:  # datasets: no such data set or split, a file it cannot read
        raise ValueError(f"{source}: cannot be read: {type(exc).__name__}: {exc}") from None
    console = _print_report(report, json_path, show)
    if clean is not None:
        if any(p.kind == "missing_column" for p in report.problems):
            raise ValueError(f"--clean {clean}: not written, a column the recipe names is missing from every row")
        kept = write_clean(table, report, clean)
        console.print(f"cleaned copy: {clean} ({kept} of {report.rows} rows)")
    return report.ok


def _print_report(report: DataReport, json_path: Path | None, show: int):
    """The report on the console (and as JSON at ``json_path``); returns the console."""
    console = output.console()
    print_report(report, console, show)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2))
        console.print(f"report: {json_path}")
    return console
