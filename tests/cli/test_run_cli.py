"""`legguard run` as a user runs it: signed anchors at start and shutdown that `audit verify --anchors` accepts
(issue 10, defect 7), and user errors found inside the engine reported in one line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from legguard.cli import app
from legguard.engine import Journal
from legguard.engine.journal._anchors import key_fingerprint

SIM_CONFIG = """
[venue]
kind = "sim"
seed = 3

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"

[journal]
anchor_key = "keys/anchor.key"
anchor_interval = 0.2
"""


def test_run_writes_signed_anchors_that_verify(tmp_path: Path) -> None:
    config, db = tmp_path / "sim.toml", tmp_path / "j.db"
    config.write_text(SIM_CONFIG)

    result = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(db), "--seconds", "1", "--json"])

    assert result.exit_code == 0, result.output
    keyfile = tmp_path / "keys" / "anchor.key"  # relative to the config file
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert keyfile.read_text().strip() not in result.output
    anchors = [json.loads(line) for line in Path(f"{db}.anchors").read_text().splitlines()]
    assert anchors[0]["reason"] == "start" and anchors[-1]["reason"] == "shutdown"
    public = CliRunner().invoke(app, ["audit", "public-key", "--key", str(keyfile)]).stdout.strip()
    assert {a["key"] for a in anchors} == {public}

    verified = CliRunner().invoke(
        app, ["audit", "verify", "--db", str(db), "--anchors", f"{db}.anchors", "--public-key", public]
    )
    assert verified.exit_code == 0, verified.output
    assert f"last at seq {anchors[-1]['seq']}" in verified.stdout
    with Journal.open(db, readonly=True) as journal:
        assert journal.last_seq() == anchors[-1]["seq"]  # the shutdown anchor covers every row

    # The configured place: the anchors file and the key (its public half pinned) come from the run config.
    by_config = CliRunner().invoke(app, ["audit", "verify", "--db", str(db), "--config", str(config)])
    assert by_config.exit_code == 0, by_config.output
    assert "pinned key" in by_config.stdout and key_fingerprint(public) in by_config.stdout


def test_a_config_error_found_inside_the_engine_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[venue]\nkind = "sim"\n[[pairs]]\nspot = "DOGE/USDT"\nperp = "DOGE/USDT:USDT"\nquantity = "1"\n')

    result = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(tmp_path / "j.db"), "--seconds", "1"])

    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "error: preflight" in text and "DOGE/USDT" in text and "fix the pair in the config" in text
    assert "Traceback" not in result.output and not isinstance(result.exception, ExceptionGroup)
