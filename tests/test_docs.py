"""README.md and docs/*.md are a user's guide: their links resolve and they tell no history.

Every relative link (and `#anchor`, by GitHub's heading slugs) in README.md, docs/*.md and CHANGELOG.md
points at a file and heading that exist; README and docs/ use none of the phrases that narrate
change ("was", "previously", "no longer", ...) outside code: that belongs in CHANGELOG.md. The files
are read as text, so this takes milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_PAGES = [*GUIDE_PAGES, ROOT / "CHANGELOG.md"]
HISTORY_PHRASES = re.compile(
    r"\b(was|previously|changed from|no longer|used to|formerly|they were|not yet)\b", re.IGNORECASE)
FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where commands and values may say anything."""
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", text))


def heading_slugs(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", FENCED_BLOCK.sub("", text), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
            for heading in headings}


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file, or heading after '#', does not exist."""
    broken = []
    for target in LINK.findall(FENCED_BLOCK.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not files of the repository
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_slugs(linked.read_text(encoding="utf-8")):
            broken.append(target)
    return broken


def history_lines(page: Path) -> list[str]:
    return [line for line in prose(page.read_text(encoding="utf-8")).splitlines() if HISTORY_PHRASES.search(line)]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_guide_pages_tell_no_history(page):
    assert history_lines(page) == []


def test_the_checks_find_a_broken_link_a_missing_heading_and_history(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](other.md#other-page) [gone](missing.md) [bad anchor](other.md#nowhere)\n"
                    "[self](#title) [web](https://example.org/x.md)\n"
                    "The default was 2000.\n`a value that was` and\n```\nit was in a code block\n```\n")
    assert broken_links(page) == ["missing.md", "other.md#nowhere"]
    assert history_lines(page) == ["The default was 2000."]


def test_readme_states_the_test_command_ci_runs_verbatim():
    ci_command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci_command.startswith("python3 -m venv .venv")
    assert f"```bash\n{ci_command}\n```" in (ROOT / "README.md").read_text(encoding="utf-8")
