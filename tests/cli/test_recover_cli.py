"""`legguard recover`: refuses clearly when there is nothing to recover from, and recovers a journal that a
crashed run left behind (here against the simulated venue, which forgot every order: nothing was sent)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from legguard.cli import app
from legguard.domain import Side
from legguard.engine import Journal, verify
from legguard.fsm import Dispatch, LegPlan, PackageCore, PackagePlan

SIM_CONFIG = """
[venue]
kind = "sim"
seed = 3

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"

# The sim venue accepts a request only briefly after it left: recovery's wait for "not found" is short.
[deadlines]
recv_window = 0.3
clock_allowance = 0.1
"""


def crashed_journal(db: Path) -> str:
    """A journal whose run died right after journaling its entry intents: package dispatched, nothing sent."""
    with Journal.open(db) as journal:
        number = journal.next_package_number()
        plan = PackagePlan(
            package_id=f"P{number:06d}",
            client_id_prefix=f"lg{journal.journal_id}{number:06d}",
            quantity=Decimal("0.05"),
            spot=LegPlan("ETH/USDT", Side.BUY, Decimal(1900), Decimal("0.0001"), Decimal("0.0001")),
            perp=LegPlan("ETH/USDT:USDT", Side.SELL, Decimal(2100), Decimal("0.001"), Decimal("0.001")),
        )
        journal.package_created(plan, {}, 0.0)
        core = PackageCore(plan)
        commands = core.handle(Dispatch())
        journal.record_step(plan.package_id, Dispatch(), commands, core.state, core.exposure(), 0.0)
        return plan.package_id


def test_recover_brings_the_package_to_flat_and_prints_what_it_did(tmp_path: Path) -> None:
    config, db = tmp_path / "sim.toml", tmp_path / "j.db"
    config.write_text(SIM_CONFIG)
    pid = crashed_journal(db)

    result = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db)])

    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert pid in out and "dispatched" in out and "flat" in out and "OK every package hedged or flat" in out
    assert verify(db).ok
    with Journal.open(db, readonly=True) as journal:
        assert journal.package(pid).state.value == "flat"
        steps = [r.payload["step"] for r in journal.timeline(pid) if r.kind == "recovery"]
    # Both entries were journaled moments ago and never sent: recovery waits out their recvWindow first.
    assert steps == ["not_found_yet", "not_found_yet", "queried", "resolved"]


def test_recover_json_report(tmp_path: Path) -> None:
    config, db = tmp_path / "sim.toml", tmp_path / "j.db"
    config.write_text(SIM_CONFIG)
    pid = crashed_journal(db)

    result = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["at_restart"] == {pid: "dispatched"} and report["final"] == {pid: "flat"}


def test_recover_without_a_journal_says_so(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(SIM_CONFIG)

    result = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(tmp_path / "none.db")])

    assert result.exit_code == 2
    assert "--db: no journal at" in " ".join(result.output.split())
    assert not (tmp_path / "none.db").exists()  # never created by asking


def test_recover_names_a_bad_option(tmp_path: Path) -> None:
    good, bad = tmp_path / "sim.toml", tmp_path / "bad.toml"
    good.write_text(SIM_CONFIG)
    bad.write_text(SIM_CONFIG + "\n[deadman]\ncountdown = 2.0\nheartbeat = 1.5\n")
    db = tmp_path / "j.db"
    crashed_journal(db)

    bad_wait = CliRunner().invoke(app, ["recover", "--config", str(good), "--db", str(db), "--wait", "0"])
    bad_config = CliRunner().invoke(app, ["recover", "--config", str(bad), "--db", str(db)])

    assert (bad_wait.exit_code, bad_config.exit_code) == (2, 2)
    assert "--wait: 0.0 is invalid; must be > 0" in " ".join(bad_wait.output.split())
    assert "deadman.heartbeat: 1.5 is invalid; must be at most half" in " ".join(bad_config.output.split())
    with Journal.open(db, readonly=True) as journal:
        assert journal.package("P000001").state.value == "dispatched"  # refused before touching anything
