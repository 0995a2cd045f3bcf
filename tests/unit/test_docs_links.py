"""Every relative link in the repository's Markdown (README, docs/, bench/) names a file that exists, and every
``#anchor`` a heading of that file, so moving a document or renaming a section cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")
SKIP_DIRS = {".git", ".venv", "data", ".dvc", "node_modules"}


def markdown_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.md")
                  if not SKIP_DIRS & set(p.relative_to(root).parts) and not p.parts[-2].endswith(".egg-info"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def dead_links(path: Path) -> list[str]:
    dead = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                dead.append(f"{target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
                dead.append(f"{target} (no such heading)")
    return dead


def test_every_relative_link_in_the_docs_resolves():
    files = markdown_files(REPO)
    assert REPO / "README.md" in files and len(files) > 5
    dead = [f"{path.relative_to(REPO)}: {link}" for path in files for link in dead_links(path)]
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Results: N = 4, the paper's gain\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#results-n--4-the-papers-gain) [ok](a.md#twice-1) ![gone](pic.png) [x](a.md#nope)\n"
                   "```\n[in code](ignored.md)\n```\n[web](https://example.com/x)\n")
    assert dead_links(doc) == ["pic.png (no such file)", "a.md#nope (no such heading)"]
