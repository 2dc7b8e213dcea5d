"""`legguard recover`: refuses clearly when there is nothing to recover from, and recovers a journal that a
crashed run left behind (here against the simulated venue, which forgot every order: nothing was sent)."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from legguard.cli import app
from legguard.domain import OrderStatus, Side
from legguard.engine import Journal, verify
from legguard.engine.journal._binding import SIM_IDENTITY, record_binding
from legguard.fsm import Dispatch, LegPlan, OrderEvent, PackageCore, PackagePlan, State

SIM_CONFIG = """
[venue]
kind = "sim"
seed = 3

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"
"""


def crashed_journal(db: Path) -> str:
    """A journal whose run died right after journaling its entry intents: package dispatched, nothing sent."""
    with Journal.open(db) as journal:
        return crashed_journal_in(journal)


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
    assert steps == ["queried", "resolved"]


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


def test_recover_beside_a_live_writer_is_refused_naming_the_journal_and_its_pid(tmp_path: Path) -> None:
    # Issue 10 (defect 6): `recover` beside a live `run` would drive the same packages and fork the chain.
    config, db = tmp_path / "sim.toml", tmp_path / "j.db"
    config.write_text(SIM_CONFIG)
    crashed_journal(db)

    with Journal.open(db):  # the live `run`
        recover = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db)])
        run = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(db), "--seconds", "1"])
        audit = CliRunner().invoke(app, ["audit", "list", "--db", str(db)])

    for result in (recover, run):
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "already open for writing by pid" in text and str(os.getpid()) in text and "j.db" in text
        assert "Traceback" not in result.output
    assert audit.exit_code == 0 and "P000001" in audit.stdout  # readers are not locked out


def test_recover_anchors_what_it_journaled_when_a_key_is_configured(tmp_path: Path) -> None:
    config, db = tmp_path / "sim.toml", tmp_path / "j.db"
    config.write_text(SIM_CONFIG + '\n[journal]\nanchor_key = "anchor.key"\n')
    crashed_journal(db)

    result = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db)])

    assert result.exit_code == 0, result.output
    (anchor,) = [json.loads(line) for line in Path(f"{db}.anchors").read_text().splitlines()]
    with Journal.open(db, readonly=True) as journal:
        assert (anchor["reason"], anchor["seq"]) == ("recovered", journal.last_seq())


def hedged_journal(db: Path) -> str:
    """A journal whose package both legs filled, by its own account (on a venue that is not this one)."""
    with Journal.open(db) as journal:
        pid = crashed_journal_in(journal)
        core = PackageCore(journal.package(pid).plan)
        for event in journal.events(pid):
            core.handle(event)
        for cid in list(core.entry.values()):
            event = OrderEvent(cid, OrderStatus.CLOSED, Decimal("0.05"))
            commands = core.handle(event)
            journal.record_step(pid, event, commands, core.state, core.exposure(), 1.0)
        assert core.state is State.HEDGED
        return pid


def crashed_journal_in(journal: Journal) -> str:
    record_binding(journal, SIM_IDENTITY, None, 0.0)  # the crashed run traded on the sim venue
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


def test_recover_with_a_journal_the_venue_does_not_know_trades_nothing_and_exits_1(tmp_path: Path) -> None:
    # The simulated venue starts empty each time: like a restarted emulator, or the journal of another account.
    config, db = tmp_path / "sim.toml", tmp_path / "j.db"
    config.write_text(SIM_CONFIG)
    pid = hedged_journal(db)
    with Journal.open(db, readonly=True) as journal:
        intents_before = sum(1 for r in journal.rows() if r.kind == "intent")

    result = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db), "--json"])

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and list(report["unproven"]) == [pid] and report["resumed"] == []
    assert report["strays"] == [] and report["reduced"] == {}
    with Journal.open(db, readonly=True) as journal:
        assert sum(1 for r in journal.rows() if r.kind == "intent") == intents_before  # no order intended
        assert journal.package(pid).state is State.HEDGED  # left where its journal says, for an operator
        events = [r.payload["event"] for r in journal.engine_log()]
    assert "stray_unwind_intent" not in events and "halted" in events
    assert verify(db).ok
    printed = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db)])
    assert printed.exit_code == 1
    assert "not traded" in " ".join(printed.output.split())
