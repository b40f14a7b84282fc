"""The README and docs/ hold together: every relative link and image resolves, anchors name real
headings (GitHub's slug rules), the README stays a short front page, and the code points only at
docs that exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of brackets.
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else INLINE_CODE.sub("", line))
    return out


def links(path: Path) -> list[tuple[int, bool, str]]:
    """(line number, is image, target) for every markdown link and image outside code."""
    found = []
    for number, line in enumerate(prose_lines(path.read_text()), 1):
        for match in LINK.finditer(line):
            found.append((number, match.group(1) == "!", match.group(3)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I))  # http:, https:, mailto:, ...


def test_slugs_follow_githubs_rules():
    assert slug("Math answers: `rewards.math`") == "math-answers-rewardsmath"
    assert slug("Weights & Biases") == "weights--biases"
    assert slug("The variant recipes, measured") == "the-variant-recipes-measured"
    assert slug("Tuning the RL settings (worked-only cold start)") == "tuning-the-rl-settings-worked-only-cold-start"


def test_link_parser_skips_code_and_reads_images_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "See [a](b.md#c) and ![pic](img.png).\n`[not](a-link.md)`\n```\n[nor](this.md)\n```\n"
        "[external](https://example.org) [[nested] text](d.md)\n"
    )
    assert links(page) == [
        (1, False, "b.md#c"),
        (1, True, "img.png"),
        (6, False, "https://example.org"),
        (6, False, "d.md"),
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for number, image, target in links(page):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not resolved.exists():
            broken.append(
                f"{where}: no such file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}"
            )
        elif image and not resolved.is_file():
            broken.append(f"{where}: an image must be a file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(
                f"{where}: no heading with anchor #{anchor} in {resolved.name}; "
                f"anchors there: {', '.join(sorted(anchors(resolved)))}"
            )
    assert not broken, "\n".join(broken)


def test_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} and move details to a page in docs/"
    )


def test_every_docs_page_is_linked_from_the_readme():
    targets = {(ROOT / t.partition("#")[0]).resolve() for _, _, t in links(ROOT / "README.md") if not is_external(t)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in targets]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_the_code_names_only_docs_that_exist():
    mentioned = re.compile(r"\b(docs/[\w./-]+\.(?:md|png))")
    missing = []
    for folder in ("rlwhf", "rewards", "recipes", "benchmarks", "notebooks"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in {".py", ".yaml", ".ipynb"} or "__pycache__" in path.parts:
                continue
            for name in mentioned.findall(path.read_text(errors="replace")):
                if not (ROOT / name).exists():
                    missing.append(f"{path.relative_to(ROOT)} mentions {name}, which does not exist")
    assert not missing, "\n".join(missing)


def test_every_shipped_recipe_is_in_the_recipes_table():
    table = (ROOT / "docs" / "recipes.md").read_text().split("## The recipes in", 1)[1].split("\n## ", 1)[0]
    missing = [p.name for p in sorted((ROOT / "recipes").glob("*.yaml")) if f"`{p.name}`" not in table]
    assert not missing, f"recipes not in docs/recipes.md's table: {missing}"
