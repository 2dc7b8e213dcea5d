"""`legguard run` as a service (not a terminal): JSON status lines per --status-interval on stderr instead of a
live table, JSON log lines in --log-file, and the control socket gone after a clean exit. Real time (a few
seconds): `run` owns its trio loop."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from legguard.cli import app
from legguard.cli._logs import teardown_logging
from legguard.engine.app._control import socket_path

SIM = """
[venue]
kind = "sim"
seed = 7
[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"
[breaker]
max_orphans = 50
"""


def test_run_outside_a_terminal_writes_status_lines_and_a_json_log(tmp_path: Path) -> None:
    config, db, log = tmp_path / "sim.toml", tmp_path / "j.db", tmp_path / "run.jsonl"
    config.write_text(SIM)
    try:
        result = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(db), "--seconds", "2.5",
                                          "--status-interval", "1", "--log-file", str(log), "--json"])  # fmt: skip
    finally:
        teardown_logging()

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["packages_total"] > 0
    assert set(report["kill_switch_prepared"]) == {"unwind_armed_ahead", "unwind_rearmed", "step_ahead"}  # sim
    assert report["fee_queries"] is None  # the sim venue's fills carry their fees: it never queries
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert 2 <= len(lines) <= 4  # one per second, not one per half second
    assert {"ts", "mode", "packages", "by_state", "exposure", "venue_up", "breaker"} <= set(lines[-1])
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert any(r["logger"] == "legguard.control" and "control socket" in r["msg"] for r in logged)
    assert not socket_path(db).exists()


def test_run_refuses_a_bad_log_level(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(SIM)
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--log-level", "loud"])
    assert result.exit_code == 2
    assert "--log-level: 'loud' is invalid; allowed: debug, info, warning, error, critical" in " ".join(
        result.output.split()
    )


def test_run_refuses_a_busy_metrics_port_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(SIM)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            result = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(tmp_path / "j.db"),
                                              "--metrics-port", str(port), "--seconds", "1"])  # fmt: skip
        finally:
            teardown_logging()

    assert result.exit_code == 2
    assert f"error: metrics: cannot listen on 127.0.0.1:{port}" in " ".join(result.output.split())
    assert "Traceback" not in result.output
