"""`legguard demo`'s exit code follows the venue's books, not the engine's beliefs (issue 10): a venue that
disagrees with the journal is exit 1 even when every package believes itself hedged or flat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legguard.cli import app
from legguard.engine._venue_truth import VenueTruth
from legguard.engine.app import _demo


def test_demo_exits_zero_when_the_venue_agrees(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--seconds", "2", "--faults", "heavy", "--db", str(tmp_path / "d.db"),
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["venue_truth"]["ok"] is True
    assert report["venue_truth"]["orders_checked"] > 0


def test_demo_exits_one_when_the_venue_disagrees_with_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disagreeing(books: object, journal: object) -> VenueTruth:
        return VenueTruth(problems=["position ETH/USDT:USDT: venue -0.02, journal accounts for 0"])

    monkeypatch.setattr(_demo, "compare_venue", disagreeing)
    result = CliRunner().invoke(app, ["demo", "--seconds", "1", "--faults", "none", "--db", str(tmp_path / "d.db")])
    assert result.exit_code == 1
    assert "VENUE DISAGREES WITH THE JOURNAL" in result.output
    assert "venue -0.02, journal accounts for 0" in result.output


def test_demo_refuses_a_negative_funding_interval_before_anything_starts(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    result = CliRunner().invoke(app, ["demo", "--funding-interval", "-1", "--db", str(db)])
    assert result.exit_code == 2
    assert "--funding-interval" in result.output and "-1" in result.output
    assert not db.exists()


def test_demo_without_funding_books_none_and_still_adds_up(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--seconds", "2", "--faults", "none", "--funding-interval", "0",
                                      "--db", str(tmp_path / "d.db"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    pnl = json.loads(result.stdout)["pnl"]
    assert pnl["funding_payments"] == 0 and pnl["funding"] == "0"
    assert pnl["reconciled"] is True
