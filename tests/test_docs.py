"""The manual (README.md and docs/*.md): every relative link and anchor resolves, every page is listed
in the README, no issue number or "not measured" filler appears, and every figure the README quotes is
in the generated benchmark page it names."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a ``#`` there is a comment, not a heading)."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            lines.append("")
            continue
        lines.append("" if inside else line)
    return "\n".join(lines)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to
    hyphens (github-slugger's rule)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    kept = []
    for ch in text:
        if ch in " -_" or unicodedata.category(ch)[0] in "LN":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered as GitHub numbers them) and
    explicit ``id``/``name`` attributes."""
    text = _prose(page.read_text())
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in text.splitlines():
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", text))
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text()))


def test_the_slug_rule_matches_githubs_on_known_headings():
    assert github_slug("LabOR's order of work: a label-free warm-up before round 1") == (
        "labors-order-of-work-a-label-free-warm-up-before-round-1"
    )
    assert github_slug("MCD's `num_k`") == "mcds-num_k"
    assert github_slug("Coordinates: the grid and the original image") == "coordinates-the-grid-and-the-original-image"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or anchor '{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_readme_documentation_table_lists_every_page_with_a_description():
    readme = _prose((ROOT / "README.md").read_text())
    section = readme[readme.index("\n## Documentation\n") :].split("\n## ")[1]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\|\s*\[[^\]]*\]\((docs/[^)#]+\.md)\)\s*\|\s*(.*?)\s*\|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    pages = [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]
    missing = [p for p in pages if p not in rows]
    assert not missing, f"README.md's documentation table does not list: {', '.join(missing)}"
    assert all(rows[p] for p in pages), "every page in README.md's documentation table needs a description"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_or_unmeasured_filler(page):
    text = page.read_text()
    bad = []
    for pattern in (r"\bissues?\s*#?\d+", r"(?<![\w&/])#\d+\b", r"\bnot (?:been )?measured\b"):
        bad += [m.group(0) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    assert not bad, f"{page.relative_to(ROOT)} says: {bad}"


def test_every_figure_the_readme_quotes_is_in_the_generated_page_it_names():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- figures:start -->", "<!-- figures:end -->"
    block = readme[readme.index(start) + len(start) : readme.index(end)]
    sources = [t for t in LINK.findall(block) if t.endswith(".md")]
    assert sources, "the README's figures block names no generated page"
    generated = "".join((ROOT / t).read_text() for t in sources)
    figures = re.findall(r"[+-]?\d+\.\d+", block)
    assert figures, "the README's figures block quotes no figure"
    missing = [f for f in figures if f not in generated]
    assert not missing, f"README figures not in {', '.join(sources)}: {missing}"
    for source in sources:
        assert re.search(r"\bWritten by `python -m benchmarks\.\w+", (ROOT / source).read_text()), (
            f"{source} was not written by a benchmark"
        )
