"""The README as a front door, and the links of every document.

The README stays short (at most 200 lines), opens with the two commands that CI and a new
user run, has a ``pip install`` line, and its first Python block runs as written on the
tiny model (only the model name is swapped: ``"demo"`` → ``"tiny"``). Every relative link
in README.md, BENCHMARKS.md and docs/ points at a file or folder of the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
"""A Markdown link or image, ``[text](target)`` or ``[text](target "title")``; group 1 is the target."""


def _blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def _documents() -> list[Path]:
    return [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans blanked (links in code are not links)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return re.sub(r"`[^`\n]*`", "``", text)


def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = FENCE.search(text)
    assert first is not None and first.group(1) == "bash"
    commands = [line for line in first.group(2).splitlines() if line and not line.startswith("#")]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]  # .ci/run calls scripts/test.sh
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^pip install ", text, re.M), "the README has a pip install line"


def test_readme_names_existing_extras():
    text = README.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in re.findall(r"^\| `\[([\w-]+)\]` \|", text, re.M):
        assert re.search(rf"^{re.escape(extra)} = \[", pyproject, re.M), extra


def test_links_point_at_files():
    missing = []
    for doc in _documents():
        for target in LINK.findall(_without_code(doc.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # absolute URL, mail address, anchor in the same page
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not missing, "links to missing files:\n" + "\n".join(missing)


def test_link_pattern_finds_links_images_and_anchors():
    found = LINK.findall('see [a](docs/a.md#x), ![img](figures/b.png) and [`c`](c.md "t") | [d](https://e)')
    assert found == ["docs/a.md#x", "figures/b.png", "c.md", "https://e"]
    assert LINK.findall(_without_code("`[not](a link)` and\n```\n[no](link)\n```\n")) == []


def test_readme_python_tour_runs_on_the_tiny_model(tmp_path):
    blocks = _blocks(README.read_text(), "python")
    assert blocks, "the README has a Python block"
    tour = blocks[0]
    assert len(tour.splitlines()) <= 25
    assert tour.count('pr.load_chat_model("demo")') == 1
    script = tmp_path / "tour.py"
    script.write_text(tour.replace('pr.load_chat_model("demo")', 'pr.load_chat_model("tiny")'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_REFUSAL_TYPECHECK")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Direction(" in done.stdout  # print(refusal)
    assert "tensor(" in done.stdout  # the first-token log-odds


@pytest.mark.parametrize("doc", ["results/paper-protocol-1.md", "results/default-protocol.md",
                                 "results/refusal-study.md", "reference/gating-study.md",
                                 "reference/refusal-study.md"])
def test_the_moved_pages_exist(doc):
    assert (ROOT / "docs" / doc).is_file()
