"""docs/fsm.md must show the lifecycle exactly as the code renders it: the diagram drifted from the code in
codebases we admire; ours cannot."""

from __future__ import annotations

import re
from pathlib import Path

from legguard.fsm import PROFILES, PROPERTIES, render_mermaid, render_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "fsm.md"


def text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_mermaid_block_is_byte_identical_to_render_mermaid() -> None:
    blocks = re.findall(r"^```mermaid\n(.*?)^```$", text(), flags=re.S | re.M)

    assert len(blocks) == 1, "docs/fsm.md must hold exactly one mermaid block"
    assert blocks[0] == render_mermaid()


def test_transition_table_is_byte_identical_to_render_table() -> None:
    lines = text().splitlines(keepends=True)
    start = lines.index("| source | trigger | dest | when |\n")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))

    assert "".join(lines[start:end]) == render_table()


def test_every_property_and_profile_is_documented() -> None:
    doc = text()
    for prop in PROPERTIES:
        assert f"**{prop}**" in doc, prop
    for profile in PROFILES:
        assert f"**{profile}**" in doc, profile


def test_the_counterexample_shown_is_the_real_one() -> None:
    doc = text()
    assert "legguard fsm --check --without orphaned:unwind" in doc
    assert "trigger 'unwind' is not allowed in state 'orphaned'" in doc
