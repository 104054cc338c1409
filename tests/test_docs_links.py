"""Every relative link in the README and the docs pages resolves: the file exists, and an anchor
names a heading of the page it points at (GitHub's slugs). Links inside code are not links."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGES = ("kubernetes.md", "scale-out.md", "serving.md", "configuration.md", "data-contracts.md",
              "bad-input.md", "benchmarks.md", "results.md")
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
         "k8s/README.md", "serving_client/README.md"]

FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str):
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images in ``text``, outside code."""
    return [target for line in _prose_lines(text) for target in LINK.findall(CODE_SPAN.sub("", line))]


def broken_links(page: Path) -> list[str]:
    """The relative link targets of ``page`` whose file is missing or whose anchor is not a heading there."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue  # http(s), mailto: not this test's business
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: str) -> None:
    assert broken_links(ROOT / page) == []


def test_the_topic_pages_exist() -> None:
    assert set(DOCS_PAGES) <= {Path(p).name for p in PAGES if p.startswith("docs/")}


def test_a_missing_file_or_anchor_is_reported_and_code_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `esmm` command, step by step\n", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok](other.md#the-esmm-command-step-by-step) ![ok](img.png) [ok](#page)\n"
        "[gone](missing.md) ![gone](missing.png) [bad anchor](other.md#nope) [bad local](#elsewhere)\n"
        "[web](https://example.com/x.md) `[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8")
    assert broken_links(page) == ["missing.md", "missing.png", "other.md#nope", "#elsewhere"]


def test_github_slugs() -> None:
    assert github_slug("The `esmm` command") == "the-esmm-command"
    assert github_slug("Training on N workers (tf.distribute)") == "training-on-n-workers-tfdistribute"
    assert github_slug("Canary and stable, step by step") == "canary-and-stable-step-by-step"
    assert github_slug("The paper's comparison (Table 2 and Figure 3)") == "the-papers-comparison-table-2-and-figure-3"
    assert github_slug("[Flink](https://flink.apache.org) on Kubernetes") == "flink-on-kubernetes"


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n## Notes\n\n```\n# not a heading\n```\n", encoding="utf-8")
    assert anchors(page) == {"notes", "notes-1"}
