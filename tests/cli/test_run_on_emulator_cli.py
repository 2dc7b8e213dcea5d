"""`legguard run` against a real `legguard emulator` process: wrong credentials are refused by the preflight
with exit 3 and not one order reaches the venue (they used to trade, print ~190 errors and exit 0)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legguard.cli import app

CONFIG = """
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def emulator_port() -> Iterator[int]:
    port = free_port()
    legguard = str(Path(sys.executable).parent / "legguard")
    proc = subprocess.Popen([legguard, "emulator", "--port", str(port), "--tls-port", "-1", "--seconds", "120"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the listener (a readiness poll with a deadline, not a guess)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/state", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def emulator_orders(port: int) -> list[object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/state", timeout=5) as response:
        state = json.loads(response.read())
    return [*state["spot"]["orders"], *state["linear"]["orders"]]


def test_wrong_credentials_are_refused_before_any_order(tmp_path: Path, emulator_port: int) -> None:
    config = tmp_path / "emu.toml"
    config.write_text(CONFIG.format(port=emulator_port))
    env = {"LG_TEST_KEY": "wrong-key", "LG_TEST_SECRET": "wrong-secret"}

    result = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(tmp_path / "j.db"),
                                      "--seconds", "3"], env=env)  # fmt: skip

    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == [
        f"error: preflight against emulator http://127.0.0.1:{emulator_port}: 2 check(s) failed, nothing was sent"
    ]
    assert any(line.startswith("  - credentials spot: FAILED") and "-2015" in line for line in lines)
    assert "Traceback" not in result.output and "wrong-secret" not in result.output
    assert emulator_orders(emulator_port) == []


def test_the_right_credentials_pass_check(tmp_path: Path, emulator_port: int) -> None:
    config = tmp_path / "emu.toml"
    config.write_text(CONFIG.format(port=emulator_port))

    result = CliRunner().invoke(app, ["check", "--config", str(config), "--json"])  # both unset: the defaults

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["venue"] == f"emulator http://127.0.0.1:{emulator_port}"
    assert emulator_orders(emulator_port) == []
