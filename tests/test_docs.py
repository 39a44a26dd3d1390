"""The design pages under docs/ and the citations of them in the code stay in step.

Docstrings and comments cite ``docs/<page>.md §N`` (also ``§N.M``); every cited section
must exist as a heading of that page, and no file may cite the specification pages a clone
of the repository does not have (``model.md``, ``training.md``, ``data-formats.md``,
``api.md`` without the ``docs/`` folder).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("architecture", "training", "file-formats")
CITE = re.compile(r"docs/(architecture|training|file-formats)\.md\s+§(\d+)(?:\.(\d+))?")
# a spec page named without the docs/ folder (and not as part of a longer name)
OUTSIDE = re.compile(r"(?<![\w/.-])(model|training|data-formats|api)\.md")


def _tracked(patterns: tuple[str, ...]) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        files = [ROOT / f for f in out]
    except (OSError, subprocess.CalledProcessError):  # an export without .git
        files = [p for pat in patterns for p in ROOT.rglob(pat) if ".venv" not in p.parts]
    return [f for f in files if f.is_file()]


def _sections(page: str) -> set[tuple[int, int | None]]:
    """(N, None) for '## N.' headings and (N, M) for '### N.M' headings of a page."""
    found = set()
    for line in (ROOT / "docs" / f"{page}.md").read_text().splitlines():
        m = re.match(r"#{2,3} (\d+)\.(?:(\d+))?\s", line)
        if m:
            found.add((int(m[1]), int(m[2]) if m[2] else None))
    return found


def test_pages_exist_and_are_linked():
    for page in PAGES:
        assert (ROOT / "docs" / f"{page}.md").is_file()
    for guide in ("README.md", "DEVELOPERS.md"):
        text = (ROOT / guide).read_text()
        assert all(f"(docs/{page}.md)" in text for page in PAGES), guide


def test_every_cited_section_exists():
    sections = {page: _sections(page) for page in PAGES}
    bad = []
    for path in _tracked(("*.py", "*.sh", "*.md")):
        text = path.read_text(errors="replace")
        for m in CITE.finditer(text):
            page, n, sub = m[1], int(m[2]), int(m[3]) if m[3] else None
            # "§3.5" may be step 5 of §3 (training.md numbers its steps inside §3)
            ok = (n, sub) in sections[page] or (n, None) in sections[page]
            if not ok:
                line = text[: m.start()].count("\n") + 1
                bad.append(f"{path.relative_to(ROOT)}:{line}: {m[0]}")
    assert bad == []


def test_no_citation_of_pages_outside_the_repository():
    bad = []
    for path in _tracked(("*.py", "*.sh", "README.md", "DEVELOPERS.md")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "benchmarks" or rel == Path("tests/test_docs.py"):
            continue  # the benchmarks compare with the original's measured costs
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert bad == []


@pytest.mark.parametrize("page", PAGES)
def test_sections_are_numbered_in_order(page):
    tops = sorted(n for n, sub in _sections(page) if sub is None)
    assert tops == list(range(1, len(tops) + 1))
