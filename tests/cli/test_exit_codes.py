"""The exit-code contract, from the CLI, for every broken case a new user runs into (issue 11): one line on
stderr naming the problem, the right exit code, never a traceback, and nothing traded."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from legguard.cli import app
from legguard.cli._edge import STATE, describe, the_error
from legguard.domain import OutcomeUnknown, VenueError
from legguard.engine.app._config import ConfigError

SIM = """
[venue]
kind = "sim"
seed = 3

[[pairs]]
spot = "{spot}"
perp = "ETH/USDT:USDT"
quantity = "{quantity}"
"""

EMULATOR = """
[venue]
kind = "emulator"
url = "http://127.0.0.1:{port}"
api_key_env = "LG_TEST_KEY"
api_secret_env = "LG_TEST_SECRET"

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"
"""

BINANCE = """
[venue]
kind = "binance"
testnet = true
api_key_env = "LG_TEST_KEY"
api_secret_env = "LG_TEST_SECRET"

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"
"""


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, stdout)."""
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.stderr.splitlines(), result.stdout


def sim_config(tmp_path: Path, spot: str = "ETH/USDT", quantity: str = "0.05") -> str:
    path = tmp_path / "sim.toml"
    path.write_text(SIM.format(spot=spot, quantity=quantity))
    return str(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_error(lines: list[str], stdout: str, *needles: str) -> None:
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in "\n".join(lines) + stdout


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_TEST_KEY", raising=False)
    monkeypatch.delenv("LG_TEST_SECRET", raising=False)
    monkeypatch.delenv("LEGGUARD_DEBUG", raising=False)


def test_unknown_symbol_in_pairs_is_a_config_error(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    code, lines, out = invoke(["run", "--config", sim_config(tmp_path, spot="NOPE/USDT"), "--db", str(db)])

    assert code == 2
    assert_one_error(lines, out, "preflight against sim", "nothing was sent")
    assert any("pairs[0]" in line and "'NOPE/USDT'" in line and "known spot markets" in line for line in lines)


def test_quantity_below_the_market_minimum_is_a_config_error(tmp_path: Path) -> None:
    code, lines, out = invoke(["run", "--config", sim_config(tmp_path, quantity="0.00000001"), "--db",
                               str(tmp_path / "j.db")])  # fmt: skip

    assert code == 2
    assert_one_error(lines, out, "preflight")
    assert any("pairs[0]" in line and "below ETH/USDT minimum quantity" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--faults", "bogus"], "--faults: 'bogus' is invalid"),
        (["--seconds", "-5"], "--seconds: -5.0 is invalid"),
    ],
)
def test_demo_refuses_bad_options(tmp_path: Path, args: list[str], needle: str) -> None:
    db = tmp_path / "demo.db"
    code, lines, out = invoke(["demo", "--db", str(db), *args])

    assert code == 2
    assert_one_error(lines, out, needle)
    assert not db.exists()  # refused before anything was opened


@pytest.mark.parametrize("command", ["run", "demo", "audit-list", "audit-verify", "recover"])
def test_garbage_db_is_a_config_error(tmp_path: Path, command: str) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"this is not sqlite\n" * 100)
    args = {
        "run": ["run", "--config", sim_config(tmp_path), "--seconds", "1"],
        "demo": ["demo", "--seconds", "1"],
        "audit-list": ["audit", "list"],
        "audit-verify": ["audit", "verify"],
        "recover": ["recover", "--config", sim_config(tmp_path)],
    }[command]

    code, lines, out = invoke([*args, "--db", str(db)])

    assert code == 2
    assert_one_error(lines, out, "is not a legguard journal")


@pytest.mark.parametrize("command", ["run", "recover", "check"])
def test_emulator_not_running_is_a_venue_error(tmp_path: Path, command: str) -> None:
    config = tmp_path / "emu.toml"
    config.write_text(EMULATOR.format(port=closed_port()))
    db = tmp_path / "j.db"
    if command == "recover":
        db.touch()  # recover wants an existing file; an empty one becomes a fresh journal
    args = ["--db", str(db)] if command != "check" else []

    code, lines, out = invoke([command, "--config", str(config), *args])

    assert code == 3, lines
    assert "Traceback" not in "\n".join(lines) + out
    text = "\n".join(lines) + out  # `check` prints its report on stdout
    assert "reachable" in text and "Connection refused" in text and "legguard emulator" in text


def test_missing_binance_credentials_are_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "binance.toml"
    config.write_text(BINANCE)

    code, lines, out = invoke(["run", "--config", str(config), "--db", str(tmp_path / "j.db")])

    assert code == 2
    assert_one_error(lines, out, "'LG_TEST_KEY' (venue.api_key_env) and 'LG_TEST_SECRET'", "are not set")
    assert not (tmp_path / "j.db").exists()


def test_one_credential_variable_alone_is_a_config_error_naming_the_other(tmp_path: Path) -> None:
    config = tmp_path / "emu.toml"
    config.write_text(EMULATOR.format(port=closed_port()))

    code, lines, out = invoke(["check", "--config", str(config)], env={"LG_TEST_KEY": "k"})

    assert code == 2
    assert_one_error(lines, out, "'LG_TEST_SECRET' (venue.api_secret_env) is not set but the other one is")


@pytest.mark.parametrize("command", ["run", "recover", "check"])
def test_missing_config_file(tmp_path: Path, command: str) -> None:
    code, lines, out = invoke([command, "--config", str(tmp_path / "nope.toml")])

    assert code == 2
    assert_one_error(lines, out, "nope.toml: cannot read the config file")


def test_usage_errors_exit_2_through_click() -> None:
    code, lines, _ = invoke(["run"])
    assert code == 2
    assert "Missing option '--config'" in " ".join(lines)


def test_a_venue_error_inside_nested_exception_groups_is_unwrapped() -> None:
    inner = BaseExceptionGroup("nursery", [trio.Cancelled._create(), OutcomeUnknown("binance: Cannot connect to host")])
    outer = BaseExceptionGroup("outer", [inner])

    leaf = the_error(outer)

    assert isinstance(leaf, OutcomeUnknown)
    STATE.trading = False
    assert describe(leaf) == (3, ["error: venue: binance: Cannot connect to host (nothing was sent)"])
    STATE.trading = True
    try:
        code, lines = describe(leaf)
    finally:
        STATE.trading = False
    assert code == 1 and "after trading started" in lines[0]


def test_a_config_error_wins_over_a_venue_error_in_one_group() -> None:
    group = ExceptionGroup("g", [VenueError("closed"), ConfigError("venue.kind: 'x' is invalid")])

    assert isinstance(the_error(group), ConfigError)


def test_debug_prints_the_traceback_and_still_exits_with_the_contract_code(tmp_path: Path) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"garbage" * 100)

    code, lines, _ = invoke(["--debug", "demo", "--db", str(db), "--seconds", "1"])

    assert code == 2
    assert "Traceback (most recent call last):" in "\n".join(lines)
    assert lines[-1].startswith("error: journal:")


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--runs", "0"],
        ["bench", "--quick", "--write-docs", "/nonexistent-dir/performance.md"],
        ["bench", "--quick", "--write-docs", "/"],
        ["fsm", "--format", "bogus"],
        ["audit", "list", "--state", "bogus"],
    ],
)
def test_bad_options_of_the_other_commands_exit_2_without_a_traceback(args: list[str]) -> None:
    code, lines, out = invoke(args)

    assert code == 2
    assert "Invalid value" in " ".join(lines) and "Traceback" not in "\n".join(lines) + out


def test_audit_of_a_missing_journal_exits_2(tmp_path: Path) -> None:
    code, lines, out = invoke(["audit", "verify", "--db", str(tmp_path / "none.db")])

    assert code == 2
    assert_one_error(lines, out, "no journal at")
