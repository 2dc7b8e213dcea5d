"""`legguard emulator`: it serves, tells the user how to point ccxt at it, and never prints the secret."""

from __future__ import annotations

from typer.testing import CliRunner

from legguard.adapters.emulator._emulator import DEFAULT_API_SECRET, DEFAULT_PORT
from legguard.cli import app


def test_emulator_command_serves_and_never_prints_the_secret() -> None:
    secret = "s3cr3t-given-on-the-command-line"
    result = CliRunner().invoke(
        app, ["emulator", "--port", "0", "--tls-port", "0", "--seconds", "0.05", "--api-secret", secret, "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "legguard-emulator-key" in out
    assert "/_emulator/ccxt-urls" in out and '"hostname": "legguard-emulator@127.0.0.1:' in out
    assert "emulator stopped" in out
    assert secret not in result.output and DEFAULT_API_SECRET not in result.output


def test_emulator_command_names_a_bad_option() -> None:
    result = CliRunner().invoke(app, ["emulator", "--port", "70000", "--seconds", "0.01"])
    assert result.exit_code == 2
    assert "--port: 70000" in result.output


def test_help_documents_the_default_key_but_not_the_secret() -> None:
    result = CliRunner().invoke(app, ["emulator", "--help"])
    assert result.exit_code == 0
    assert "legguard-emulator-key" in result.output
    assert DEFAULT_API_SECRET not in result.output


def test_without_tls_port_a_free_tls_port_is_picked() -> None:
    """`--port P` alone used to fail when another emulator held the default TLS port 8766."""
    import socket

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            held.bind(("127.0.0.1", DEFAULT_PORT + 1))
            held.listen()
        except OSError:
            pass  # already held by someone else: the case the test is about either way
        result = CliRunner().invoke(app, ["emulator", "--port", "0", "--seconds", "0.05"])

    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "TLS https://127.0.0.1:" in out and f"127.0.0.1:{DEFAULT_PORT + 1} " not in out + " "


def test_a_taken_port_is_one_line_and_exit_2() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = CliRunner().invoke(app, ["emulator", "--port", str(port), "--seconds", "0.05"])

    assert result.exit_code == 2
    assert "cannot listen on 127.0.0.1" in result.stderr and "choose another --port" in result.stderr
    assert "Traceback" not in result.output


def test_perp_wallet_option_is_validated_naming_it_and_shown_when_given() -> None:
    bad = CliRunner().invoke(app, ["emulator", "--port", "0", "--tls-port", "-1", "--seconds", "0.01",
                                   "--perp-wallet", "-3"])  # fmt: skip
    assert bad.exit_code == 2
    assert "--perp-wallet: must be an amount of USDT > 0" in " ".join(bad.output.split())
    ok = CliRunner().invoke(app, ["emulator", "--port", "0", "--tls-port", "-1", "--seconds", "0.05",
                                  "--perp-wallet", "250"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "USDⓈ-M wallet 250 USDT" in ok.output
