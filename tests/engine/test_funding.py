"""Funding payments attributed to packages on the simulated venue, in virtual time: split pro rata to the perp
shorts held (the remainder to the largest), journaled once per tran_id (also across a restart on the same
journal), carried into the `pnl` row of a package that closes, replayed by `audit verify`, summed by `audit pnl`."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import trio
from trio.testing import MockClock
from typer.testing import CliRunner

from legguard.adapters._venue import FundingVenue
from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.cli import app
from legguard.engine import Deadlines, Engine, EngineConfig, ExitConfig, PackageSpec, RiskConfig
from legguard.engine._funding import FUNDING_PAYMENT, split_payment
from legguard.engine._recovery import settle_recovered
from legguard.engine._spec import BreakerConfig
from legguard.engine.journal import FUNDING, PNL, aggregate, ledger, verify
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
RATE = {ETH_PERP: Decimal("0.0001")}  # shorts receive


def config() -> EngineConfig:
    return EngineConfig(
        deadlines=Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=1.0),
        breaker=BreakerConfig(max_orphans=50),
        exit=ExitConfig(enabled=False, deadline=2.0),
        risk=RiskConfig(check_balances=False, margin_guard=False),
        funding_interval=3600.0,  # the tests poll by hand
    )


async def hedged(engine: Engine, quantity: str) -> str:
    for _ in range(5):
        pid = engine.submit(PackageSpec(ETH, ETH_PERP, Decimal(quantity), min_spread=Decimal(-1)))
        handle = engine.handles[pid]
        with trio.fail_after(30):
            await handle.wait_until(
                lambda core: core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())
            )
        if handle.core.state is State.HEDGED:
            return pid
    raise AssertionError("no package hedged in five tries")


def funding_rows(journal: Journal, pid: str) -> list[dict[str, object]]:
    return [r.payload for r in journal.timeline(pid) if r.kind == FUNDING]


def test_split_is_pro_rata_and_sums_exactly() -> None:
    parts = split_payment(Decimal("1.00000001"), {"a": Decimal("0.05"), "b": Decimal("0.1"), "c": Decimal(0)})
    assert parts == {"a": Decimal("0.33333333"), "b": Decimal("0.66666668")}
    assert sum(parts.values()) == Decimal("1.00000001")
    neg = split_payment(Decimal("-0.1"), {"a": Decimal(1), "b": Decimal(1), "c": Decimal(1)})
    assert neg == {"a": Decimal("-0.03333334"), "b": Decimal("-0.03333333"), "c": Decimal("-0.03333333")}
    assert split_payment(Decimal(5), {"a": Decimal(0)}) == {}


async def test_sim_venue_pays_funding_on_its_interval_and_the_engine_books_it(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=3, funding_interval=5.0)) as venue:
        assert isinstance(venue, FundingVenue)
        engine = Engine(venue, journal, replace(config(), funding_interval=1.0))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            pid = await hedged(engine, "0.05")
            await trio.sleep(12.0)
            paid = await venue.fetch_funding()
            assert len(paid) >= 2 and len({p.tran_id for p in paid}) == len(paid)
            for p in paid:  # shorts receive a positive rate: -position x mark x rate
                assert p.symbol == ETH_PERP
            assert engine.handles[pid].funding == sum((p.amount for p in paid), Decimal(0))
            assert engine.handles[pid].funding != 0
    journal.close()


async def test_payments_split_booked_once_across_restart_and_audited(autojump_clock: MockClock, tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, config())
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            small, large = await hedged(engine, "0.05"), await hedged(engine, "0.1")
            [paid] = venue.settle_funding(RATE)
            assert paid.amount > 0
            assert await engine.poll_funding(venue) == 1
            assert await engine.poll_funding(venue) == 0  # seen twice, booked once
            a, b = engine.handles[small].funding, engine.handles[large].funding
            assert a + b == paid.amount
            assert abs(b - 2 * a) <= Decimal("0.00000002")
            assert [r["tran_id"] for r in funding_rows(journal, small)] == [paid.tran_id]
        # A payment while no engine runs; then a restart on the same journal.
        [missed] = venue.settle_funding(RATE)
        fresh = Engine(venue, journal, replace(config(), funding_interval=1.0))
        async with fresh.running([ETH, ETH_PERP]):
            await settle_recovered(fresh, await fresh.recover())
            assert fresh.handles[small].funding == a  # rebuilt from the journal
            await trio.sleep(1.5)  # the poller books the missed payment, not the old one again
            assert len(funding_rows(journal, small)) == 2
            for pid in (small, large):
                rows = funding_rows(journal, pid)
                assert sum(Decimal(str(r["amount"])) for r in rows) == fresh.handles[pid].funding
            assert fresh.handles[small].funding + fresh.handles[large].funding == paid.amount + missed.amount
            closing = fresh.handles[small]  # held: the engine releases it once flat
            assert fresh.request_close(small)
            with trio.fail_after(30):
                await closing.wait_until(lambda core: core.state is State.FLAT)
            expected = closing.funding
    seen = [r.payload["tran_id"] for r in journal.engine_log() if r.payload.get("event") == FUNDING_PAYMENT]
    assert seen == [paid.tran_id, missed.tran_id]
    [pnl] = [r.payload for r in journal.timeline(small) if r.kind == PNL]
    assert Decimal(pnl["funding"]) == expected != 0
    entries = ledger(journal)
    total = aggregate(entries, "pair")[-1]
    assert Decimal(total["funding"]) == paid.amount + missed.amount
    journal.close()
    report = verify(db)
    assert report.ok, report.problems
    result = CliRunner().invoke(app, ["audit", "pnl", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert Decimal(json.loads(result.stdout)["groups"][-1]["funding"]) == paid.amount + missed.amount
    result = CliRunner().invoke(app, ["audit", "verify", "--db", str(db)])
    assert result.exit_code == 0, result.output
