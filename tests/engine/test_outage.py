"""Venue outages on the simulated venue, in virtual time: REST refused and the order stream down for a while
under a running engine. The engine does not crash, opens nothing new, keeps every package as it was, and once
the venue answers again reconciles and finishes: every package hedged or flat, and the venue's balances and
positions equal to what the journal says the packages hold. A run that ends while the venue is still down
names the packages that need recovery, and recovery finishes them once the venue is back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import (
    OrderRequest,
    OrderStatus,
    OrderType,
    OutcomeUnknown,
    RateLimited,
    Side,
    StreamDisconnected,
)
from legguard.engine import Deadlines, Engine, EngineConfig, PackageSpec, settle_recovered
from legguard.engine._outage import waiting_out_rate_limits
from legguard.engine._spec import BreakerConfig
from legguard.engine.journal._replay import verify
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
DEADLINES = Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=3.0)
ANY_SPREAD = Decimal(-1)


@dataclass
class Start:
    eth: Decimal
    usdt: Decimal


def spec(quantity: str = "0.05") -> PackageSpec:
    return PackageSpec(ETH, ETH_PERP, Decimal(quantity), min_spread=ANY_SPREAD)


def safe(engine: Engine) -> bool:
    return all(
        h.core.state is State.FLAT or (h.core.state is State.HEDGED and h.core.is_quiescent())
        for h in engine.handles.values()
    )


async def settle_all(engine: Engine, limit: float = 60.0) -> None:
    with trio.fail_after(limit):
        for h in list(engine.handles.values()):
            await h.wait_until(
                lambda core: core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())
            )


def assert_venue_matches_journal(venue: SimVenue, db: Path, start: Start) -> None:
    """The venue's truth against the journal's account of every package (read back from the file): the perp
    position and the spot ETH the account gained are exactly what the packages hold, nothing is left open,
    and every package is hedged or flat."""
    with Journal.open(db, readonly=True) as journal:
        packages = journal.packages()
    assert packages
    assert {p.state for p in packages} <= {State.HEDGED.value, State.FLAT.value}, [
        (p.package_id, p.state) for p in packages
    ]
    perp = sum((Decimal(p.to_dict()["perp"]) for p in packages), Decimal(0))
    spot = sum((Decimal(p.to_dict()["spot"]) for p in packages), Decimal(0))
    assert venue.engine.positions().get(ETH_PERP, Decimal(0)) == perp
    eth = venue.engine.balances()["ETH"]
    assert eth.total - start.eth == spot
    assert eth.locked == 0
    assert venue.engine.open_orders(None) == []


@pytest.fixture
async def sim() -> AsyncIterator[SimVenue]:
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        yield venue


def start_of(venue: SimVenue) -> Start:
    b = venue.engine.balances()
    return Start(eth=b["ETH"].total, usdt=b["USDT"].total)


def resting_buy(venue: SimVenue, cid: str) -> OrderRequest:
    """A bid 5 % under the touch: it rests through the test."""
    book = venue.engine.book(ETH, 1)
    assert book.best_bid is not None
    price = (book.best_bid * Decimal("0.95")).quantize(venue.engine.markets[ETH].tick_size)
    return OrderRequest(cid, ETH, Side.BUY, OrderType.LIMIT, Decimal("0.05"), price, post_only=True)


async def test_sim_outage_refuses_every_request_and_keeps_the_account(autojump_clock: MockClock, sim: SimVenue) -> None:
    await trio.sleep(0.5)
    await sim.fire(sim.arm(resting_buy(sim, "before")))
    before = await sim.fetch_balance()
    sim.inject("outage", seconds=5)
    with pytest.raises(OutcomeUnknown, match="outage"):
        await sim.fetch_positions()
    with pytest.raises(OutcomeUnknown, match="outage"):
        await sim.fire(sim.arm(resting_buy(sim, "during")))
    with pytest.raises(StreamDisconnected):
        await sim.watch_orders()
    assert [o.client_order_id for o in sim.engine.open_orders(None)] == ["before"]  # nothing new reached it
    await trio.sleep(5)
    # Back, as it was: the resting order and the balances are kept, not reset.
    assert (await sim.fetch_order(ETH, "before")).status is OrderStatus.OPEN
    assert await sim.fetch_balance() == before


def states(engine: Engine) -> dict[str, str]:
    return {pid: h.core.state.value for pid, h in engine.handles.items()}


async def test_engine_survives_an_outage_and_finishes_every_package_when_the_venue_returns(
    autojump_clock: MockClock, sim: SimVenue, tmp_path: Path
) -> None:
    db = tmp_path / "journal.db"
    start = start_of(sim)
    with Journal.open(db) as journal:
        engine = Engine(sim, journal, EngineConfig(deadlines=DEADLINES, breaker=BreakerConfig(max_orphans=50)))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            sim.inject("partial_fill", symbol=ETH_PERP, fraction=0.4)  # one package goes naked meanwhile
            before = [engine.submit(spec()) for _ in range(3)]
            await trio.sleep(0.3)  # entries acknowledged and resting
            assert any(engine.handles[p].core.state is State.DISPATCHED for p in before)
            sim.inject("outage", seconds=20)
            await trio.sleep(2.0)
            assert engine.outage.down
            kept = states(engine)
            refused = engine.submit(spec())  # nothing new while the venue is down
            await trio.sleep(15.0)  # far past every fill, leg and unwind deadline
            assert engine.outage.down
            assert {p: s for p, s in states(engine).items() if p != refused} == kept  # nothing moved
            assert engine.core(refused).state is State.FLAT and not engine.core(refused).orders  # released
            await trio.sleep(4.0)  # the outage ends
            await settle_all(engine)
            assert not engine.outage.down and engine.outage.outages == 1
            assert safe(engine) and engine.needs_recovery() == {}
            assert engine.mode.value == "running"  # new packages are taken again
            after = engine.submit(spec())
            await settle_all(engine)
            assert engine.core(after).orders
        events = [r.payload["event"] for r in journal.engine_log()]
    assert events.count("venue_down") == 1 and events.count("venue_up") == 1
    assert_venue_matches_journal(sim, db, start)
    assert verify(db).ok


async def test_a_run_ending_during_an_outage_names_what_needs_recovery_and_recovery_finishes_it(
    autojump_clock: MockClock, sim: SimVenue, tmp_path: Path
) -> None:
    db = tmp_path / "journal.db"
    start = start_of(sim)
    with Journal.open(db) as journal:
        engine = Engine(sim, journal, EngineConfig(deadlines=DEADLINES))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            pids = [engine.submit(spec()) for _ in range(4)]
            await trio.sleep(0.3)
            # Maker orders fill from the trade flow at the touch: some packages may already be hedged. The ones
            # still dispatched are what the outage catches with entries resting.
            resting = {p for p in pids if engine.handles[p].core.state is State.DISPATCHED}
            assert resting
            sim.inject("outage", seconds=120)
            await trio.sleep(3.0)
            assert engine.outage.down
        # The graceful shutdown could reach nothing: the packages are named, and left where the journal says.
        unsafe = engine.needs_recovery()
        assert set(unsafe) == resting, unsafe
        assert {r.package_id for r in journal.open_packages()} >= resting
        await trio.sleep(120)  # the venue is back
        second = Engine(sim, journal, EngineConfig(deadlines=DEADLINES))
        async with second.running([ETH, ETH_PERP]):
            report = await settle_recovered(second, await second.recover())
        assert report.ok, report.to_dict()
    assert_venue_matches_journal(sim, db, start)
    assert verify(db).ok


# --- requests that must succeed before anything trades: rate limits waited out -------------------------


async def test_a_rate_limited_request_is_asked_again_once_the_budget_says(autojump_clock: MockClock) -> None:
    asked: list[float] = []

    async def book() -> str:
        asked.append(trio.current_time())
        if len(asked) < 3:
            raise RateLimited("book ETH/USDT: local request budget exhausted", retry_after=0.4)
        return "snapshot"

    assert await waiting_out_rate_limits(book, "book ETH/USDT") == "snapshot"
    assert [round(t - asked[0], 3) for t in asked] == [0.0, 0.4, 0.8]


async def test_a_rate_limit_that_outlasts_the_wait_is_raised(autojump_clock: MockClock) -> None:
    start = trio.current_time()

    async def never() -> None:
        raise RateLimited("positions: local request budget exhausted", retry_after=4.0)

    with pytest.raises(RateLimited, match="positions"):
        await waiting_out_rate_limits(never, "positions", limit=10.0)
    assert trio.current_time() - start == pytest.approx(8.0)  # two waits of 4 s; a third would pass 10


async def test_other_venue_errors_are_not_waited_out(autojump_clock: MockClock) -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise OutcomeUnknown("connection refused")

    with pytest.raises(OutcomeUnknown):
        await waiting_out_rate_limits(down, "book ETH/USDT")
    assert calls == 1
