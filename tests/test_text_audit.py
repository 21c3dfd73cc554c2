"""Text explains the software, not the history of its development.

Code, docs, README, benchmarks, scripts, tests and the notebook's cells are read for phrases
that narrate how the project got here instead of what the software does: work-session
numbers ("stop 17"), references to a tracker entry ("the issue's goal"), before/after
stories ("before the memory fix", "was 13.1 GB"), first-person notes ("I read …") and the
alias names once kept for older code. A measured figure says when and at which commit it
was measured instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOLDERS = ("docs", "persona_refusal", "analysis", "tests", "scripts", "bench", "notebooks")
FILES = ("README.md", "BENCHMARKS.md")
SUFFIXES = {".py", ".md", ".sh", ".ipynb", ".toml"}
"""Text the project writes; data files (prompt sets, persona files, results) are not read."""

PHRASES: dict[str, re.Pattern] = {
    "a work-session number": re.compile(r"\bstop[- ]\d+\b", re.I),
    "a tracker entry": re.compile(r"\bthe issue(?:'s)?\b", re.I),
    "a before-the-fix story": re.compile(r"\bbefore the\b[^.\n]{0,40}\bfix(?:es|ed)?\b", re.I),
    "an old size": re.compile(r"\bwas \d+(?:\.\d+)? ?[GM]i?B\b", re.I),
    "a first-person note": re.compile(r"\bI (?:read|ran|chose|made|measured|tried|found|wrote|changed|fixed)\b"),
    "names kept for older code": re.compile(r"\b(?:first|old) names\b", re.I),
    "an alias of the gating study": re.compile(r"\b(?:run_gating_study|GatingConfig|GatingStudy)\b"),
}


def _files() -> list[Path]:
    out = [ROOT / f for f in FILES]
    for folder in FOLDERS:
        out += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in SUFFIXES]
    return [p for p in out if p.resolve() != Path(__file__).resolve() and ".ipynb_checkpoints" not in p.parts]


def _text(path: Path) -> str:
    """A file's text; for a notebook, its cells' sources only (outputs are what a model printed)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return path.read_text(errors="replace")


def _hits(text: str) -> list[tuple[str, str]]:
    return [(what, m.group(0)) for what, pattern in PHRASES.items() for m in pattern.finditer(text)]


def test_no_text_narrates_the_projects_history():
    found = []
    for path in _files():
        for n, line in enumerate(_text(path).splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {what}: {hit!r}" for what, hit in _hits(line)]
    assert not found, "history in the text (say what the software does; a figure keeps its date and commit):\n" \
        + "\n".join(found)


def test_the_audit_reads_every_folder():
    seen = {p.relative_to(ROOT).parts[0] for p in _files()}
    assert set(FOLDERS) | set(FILES) <= seen


@pytest.mark.parametrize("text", [
    "measured at stop 21 on an idle machine", "the stop-19 rows", "as the issue asks", "the issue's goal",
    "measured before the first-load memory fix", "1.87 (4.5 GB; was 13.1 GB)", "I read the lengths mid-run",
    "the study under its first names", "run_gating_study(GatingConfig())",
])
def test_history_phrases_are_caught(text):
    assert _hits(text)


@pytest.mark.parametrize("text", [
    "early stop / full: 0.81", "stop_at_layer when later layers are not needed", "`--early-stop` stops a reply",
    "the first load peaks at 4.5 GB", "measured at commit 9f80588 (2026-12-04)", "I/O errors", "a stop token",
    "How do I undo my last commit", "the refusal study's goal", "the first 64 prompts",
])
def test_plain_text_passes(text):
    assert not _hits(text)
