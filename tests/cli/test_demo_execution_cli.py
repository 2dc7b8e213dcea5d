"""`legguard demo` options for the execution style: validated naming the option, shown in the report."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from legguard.cli import app

runner = CliRunner()


def test_a_bad_execution_style_is_refused_naming_the_option(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--execution", "yolo", "--db", str(tmp_path / "d.db")])
    assert result.exit_code == 2
    assert "--execution: 'yolo' is invalid; allowed: maker-maker, maker-taker," in " ".join(result.stdout.split())
    result = runner.invoke(app, ["demo", "--execution", "maker-taker", "--maker-leg", "both"])
    assert result.exit_code == 2 and "--maker-leg: 'both' is invalid" in result.stdout


def test_the_report_names_the_style(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--seconds", "1", "--faults", "none", "--execution", "maker-taker",
                                 "--json", "--db", str(tmp_path / "d.db")])  # fmt: skip
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["execution"] == "maker-taker" and report["open_exposure"] == {}
