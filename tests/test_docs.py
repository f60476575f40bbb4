"""The documents' links to files in the repository (pictures, benchmark results, scripts) resolve."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "BENCHMARKS.md"]
# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
LINK = re.compile(r"\]\(([^)\s]+)")


def local_links(markdown: str):
    """The link targets of `markdown` that name files in the repository, without their anchors."""
    for target in LINK.findall(markdown):
        if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):  # a URL or an anchor in the same page
            yield target.split("#", 1)[0]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_local_links_point_at_files_that_exist(name):
    document = ROOT / name
    links = list(local_links(document.read_text(encoding="utf-8")))
    assert links, f"{name} has no links to files: the pattern no longer matches its links"
    missing = [target for target in links if not (document.parent / target).exists()]
    assert not missing, f"{name} links to files that do not exist: {missing}"


def test_link_pattern_finds_pictures_and_skips_urls():
    text = "![a](docs/x.png) [b](https://example.org/y) [c](#anchor) [d](benchmarks/z.py#L3)"
    assert list(local_links(text)) == ["docs/x.png", "benchmarks/z.py"]
