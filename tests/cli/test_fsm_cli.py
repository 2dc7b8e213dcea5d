"""`legguard fsm` (cli/_fsm.py): the table, the diagram, and `--check` with its exit status."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from legguard.cli import app
from legguard.cli._fsm import parse_bounds
from legguard.fsm import Bounds, OrphanPolicy, render_mermaid, render_table

runner = CliRunner()

# A quick check: no accidents; one partial fill and one unwind reject (under two thousand states).
QUICK = [
    "--jobs", "1",
    *(f"--bound={name}=0" for name in ("timeouts", "crashes", "faults", "shutdowns", "expiries",
                                       "liquidations", "stale_reports", "closes")),
]  # fmt: skip


def test_default_prints_the_table() -> None:
    result = runner.invoke(app, ["fsm"])

    assert result.exit_code == 0
    assert result.stdout == render_table()


def test_format_mermaid_prints_the_diagram() -> None:
    result = runner.invoke(app, ["fsm", "--format", "mermaid"])

    assert result.exit_code == 0
    assert result.stdout == render_mermaid()


def test_json_table_lists_every_edge() -> None:
    result = runner.invoke(app, ["fsm", "--json", "--without", "hedged:unwind"])

    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert len(data["transitions"]) == 13
    assert {"source": "hedged", "trigger": "unwind"} not in [
        {"source": t["source"], "trigger": t["trigger"]} for t in data["transitions"]
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "svg"], "'svg' is not one of: table, mermaid"),
        (["--without", "orphaned"], "'orphaned' must be SOURCE:TRIGGER"),
        (["--without", "flat:unwind"], "'flat:unwind' is not in the transition table"),
        (["--check", "--bound", "faults=many"], "faults must be a whole number >= 0, got 'many'"),
        (["--check", "--bound", "speed=1"], "'speed=1' must be NAME=VALUE with NAME one of"),
        (["--check", "--bound", "policies=yolo"], "policies is a comma list of flatten, trim"),
        (["--bound", "faults=1"], "only applies with --check"),
        (["--check", "--depth", "-1"], "must be >= 0, got -1"),
        (["--check", "--jobs", "0"], "must be >= 1, got 0"),
    ],
)
def test_bad_options_exit_2_naming_the_value(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["fsm", *args])

    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_parse_bounds() -> None:
    bounds = parse_bounds(["faults=2", "accidents=none", "policies=trim", "stale-reports=0"])

    assert bounds == Bounds(faults=2, accidents=None, policies=(OrphanPolicy.TRIM,), stale_reports=0)


def test_check_json_clean_run_exits_0() -> None:
    result = runner.invoke(app, ["fsm", "--check", "--json", *QUICK])

    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert data["ok"] is True
    assert data["states_explored"] >= 1000
    assert data["violations"] == data["deadlocks"] == 0
    assert data["counterexample"] is None
    assert data["bounds"]["custom"]["partial_fills"] == 1


@pytest.mark.parametrize(
    "edge", ["orphaned:unwind", "dispatched:leg_broken", "dispatched:hedge", "unwinding:flattened"]
)
def test_check_without_a_needed_edge_exits_1_with_a_counterexample(edge: str) -> None:
    result = runner.invoke(app, ["fsm", "--check", "--json", "--depth", "8", "--without", edge, *QUICK])

    data = json.loads(result.stdout)
    assert result.exit_code == 1
    assert data["ok"] is False
    assert data["violations"] > 0
    source, trigger = edge.split(":")
    assert f"trigger '{trigger}' is not allowed in state '{source}'" in data["counterexample"]["message"]
    assert data["counterexample"]["trace"][0]["action"] == "dispatch"
    assert data["without"] == [edge]


def test_check_human_summary() -> None:
    result = runner.invoke(app, ["fsm", "--check", "--depth", "6", *QUICK])

    assert result.exit_code == 0
    assert "Model check: OK" in result.stdout
    for word in ("Properties", "write_ahead", "deadlock", "Bounds", "partial fills", "at the depth bound"):
        assert word in result.stdout


def test_check_human_counterexample() -> None:
    result = runner.invoke(app, ["fsm", "--check", "--depth", "4", "--without", "dispatched:leg_broken", *QUICK])

    assert result.exit_code == 1
    assert "Model check without dispatched:leg_broken: FAILED" in result.stdout
    assert "Counterexample (transitions" in result.stdout
    assert "  1. dispatch -> dispatched" in result.stdout
    assert "command send lg-mc-SE0" in result.stdout
    assert '"state": "dispatched"' in result.stdout  # the refused trigger left the core where it was
