"""The documentation holds together: the README stays short, and no relative link is broken.

A relative link must lead to a file or folder in the checkout, and a link with a #fragment to
a heading of that Markdown file (GitHub's anchors). Links to other sites are not followed.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 12 * 1024  # bytes: the README introduces; the pages in docs/ explain

PAGES = sorted(
    [ROOT / "README.md", ROOT / "bench" / "README.md"]
    + list((ROOT / "docs").rglob("*.md"))
    + list((ROOT / "deploy").glob("*/README.md"))
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(text):
    """The Markdown without code blocks and code spans, where a link is only an example."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _links(text):
    prose = _prose(text)
    return [*_INLINE_LINK.findall(prose), *_REFERENCE.findall(prose)]


def _anchors(markdown):
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors, seen = set(), {}
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _problem(page, target):
    """Why the relative link target on page leads nowhere, or None."""
    path_part, _, fragment = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    if not destination.exists():
        return f"{target}: there is no {destination}"
    if fragment and destination.suffix == ".md" and destination.is_file():
        if fragment not in _anchors(destination.read_text(encoding="utf-8")):
            return f"{target}: {destination.name} has no heading with the anchor #{fragment}"
    return None


def test_readme_is_at_most_12_kb():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, (f"README.md is {size} bytes, over {README_LIMIT}: "
                                  "move the detail into a page under docs/ and link to it")


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_leads_to_a_file_that_exists(page):
    text = page.read_text(encoding="utf-8")
    relative = [target for target in _links(text) if not _SCHEME.match(target)]
    broken = [problem for problem in (_problem(page, target) for target in relative) if problem]
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_links_and_anchors():
    """The checker itself: it finds links outside code only, and reads GitHub's anchors."""
    text = ("See [ops](docs/operations.md#tls-and-dns) and ![x](a.png) and [ref].\n\n"
            "[ref]: ../bench/README.md\n\n`[not](a-link.md)`\n\n```\n[nor](this.md)\n```\n")
    assert _links(text) == ["docs/operations.md#tls-and-dns", "a.png", "../bench/README.md"]
    headings = "# One machine: `make run`\n## The `berth` command\n## Metrics\n## Metrics\n"
    assert _anchors(headings) == {"one-machine-make-run", "the-berth-command", "metrics", "metrics-1"}
