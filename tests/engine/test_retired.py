"""Memory bounded by what is live: a flat package leaves the engine's memory once its actor ends (`_retired.py`,
`Engine._release`), the reports still count it, and an order of it that lands late is still routed and
handled, from memory for a while and from the journal after that."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from test_engine import DEADLINES, ETH, ETH_PERP, Rig, assert_journal_verifies, assert_venue_agrees
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.domain import OrderStatus, OrderUpdate, Side
from legguard.engine import Deadlines, Engine, EngineConfig, EngineMode, PackageSpec
from legguard.engine._retired import RetiredPackages
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ANY_SPREAD = Decimal(-1)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = tmp_path / "journal.db"
    journal = Journal.open(db)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            yield Rig(venue, journal, engine, db)
    journal.close()


async def test_flat_packages_leave_memory_and_the_reports_still_count_them(autojump_clock: MockClock, rig: Rig) -> None:
    """Twelve packages one after the other, each flattened by the kill switch (the perp leg is rejected): the
    engine never holds more than the one in flight, and keeps no order route of a finished one."""
    held: list[int] = []
    for _ in range(12):
        rig.venue.inject("reject", symbol=ETH_PERP)
        pid = rig.engine.submit(rig.spec())
        assert await rig.settle(pid) is State.FLAT
        await rig.handle(pid).done.wait()
        held.append(len(rig.engine.handles))

    assert held == [0] * 12
    assert rig.engine._orders == {} and rig.engine.live == set()
    assert rig.engine.packages_total == 12 and len(rig.engine.retired) == 12
    assert rig.engine.final_states() == {"flat": 12}
    assert rig.engine.needs_recovery() == {}
    # Released, not forgotten: the journal rebuilds any of them on demand, as the engine held it.
    for pid, h in rig.kept.items():
        assert rig.engine.core(pid).fingerprint() == h.core.fingerprint()
    rig.assert_safe()


async def test_the_retired_totals_equal_what_the_packages_held(autojump_clock: MockClock, rig: Rig) -> None:
    """Counters and residual dust folded at release equal the sums over the packages' own final cores."""
    pids = []
    for fault in ("reject", None, "partial_fill", None):
        if fault is not None:
            rig.venue.inject(fault, symbol=ETH_PERP, **({"fraction": 0.4} if fault == "partial_fill" else {}))
        pids.append(rig.engine.submit(rig.spec()))
        await rig.settle(pids[-1])
    for pid in pids:  # close the hedged ones: every package ends flat
        if rig.engine.request_close(pid, "test"):
            with trio.fail_after(30):
                await rig.handle(pid).wait_until(lambda c: c.state is State.FLAT)
    for pid in pids:
        await rig.handle(pid).done.wait()

    assert rig.engine.handles == {}
    cores = [rig.kept[p].core for p in pids]
    assert rig.engine.retired.spot == {ETH: sum((c.exposure().spot for c in cores), Decimal(0))}
    assert rig.engine.retired.perp == {ETH_PERP: Decimal(0)}
    assert rig.engine.retired.totals.orphaned == sum(1 for p in pids if rig.kept[p].ever_orphaned) >= 1
    realized = [Decimal(r.payload["realized"]) for p in pids for r in rig.journal.timeline(p) if r.kind == "pnl"]
    assert rig.engine.retired.totals.realized == sum(realized, Decimal(0))
    # Venue truth at run time still compares the symbols whose packages all left memory.
    await rig.engine.reconcile_venue()
    await rig.engine.reconcile_venue()
    assert rig.engine.mode is EngineMode.RUNNING and rig.engine.stats.venue_mismatches == 0
    assert await rig.engine.venue_check() == []


@pytest.mark.parametrize("retention", [60.0, 0.0], ids=["from-memory", "from-the-journal"])
async def test_an_order_landing_after_its_package_was_released_is_still_settled(
    autojump_clock: MockClock, tmp_path: Path, retention: float
) -> None:
    """The perp entry reaches the venue 1.5 s after the client gave up on it (a recvWindow shorter than the
    delay): the package is flat and released by then. Its later updates are routed anyway (from the recent
    window, or replayed from the journal once that has passed): the engine halts, cancels it and closes what
    it filled; the venue ends flat and agrees with the journal."""
    journal = Journal.open(tmp_path / "j.db")
    deadlines = Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=3.0, recv_window=0.4, clock_allowance=0.1)
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=deadlines))
        engine.retired.retention = retention
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            venue.inject("late_landing", symbol=ETH_PERP, seconds=1.5)
            pid = engine.submit(PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=ANY_SPREAD))
            handle = engine.handles[pid]
            with trio.fail_after(30):
                await handle.done.wait()
            assert handle.core.state is State.FLAT and pid not in engine.handles and pid in engine.retired
            await trio.sleep(30.0)
            assert venue.engine.positions().get(ETH_PERP, Decimal(0)) == 0
            assert not venue.engine.open_orders()
            assert engine.mode is EngineMode.HALTED
            if retention == 0:
                assert engine.retired.replays >= 1  # answered by replaying the package from the journal
        assert_venue_agrees(venue, journal)
    late = [r.payload for r in journal.engine_log() if r.payload.get("event") in ("late_order", "late_order_settled")]
    assert [p["event"] for p in late][:1] == ["late_order"] and late[-1]["event"] == "late_order_settled"
    assert {p["package"] for p in late} == {pid}
    journal.close()
    assert_journal_verifies(tmp_path / "j.db")


async def test_a_routine_late_report_of_a_released_package_changes_nothing(autojump_clock: MockClock, rig: Rig) -> None:
    """The stream repeating what a released package already knew (its filled entry) is not a late landing."""
    pid = rig.engine.submit(rig.spec())
    rig.venue.inject("reject", symbol=ETH_PERP)
    assert await rig.settle(pid) is State.FLAT
    await rig.handle(pid).done.wait()
    spot = next(o for o in rig.kept[pid].core.orders.values() if o.intent.symbol == ETH)
    again = OrderUpdate(spot.intent.client_order_id, ETH, Side.BUY, spot.status, spot.intent.amount, spot.filled)

    rig.engine.route(again)

    assert rig.engine.mode is EngineMode.RUNNING
    assert not [r for r in rig.journal.engine_log() if r.payload.get("event") == "late_order"]


async def test_a_late_fee_of_a_released_package_is_journaled_and_counted(autojump_clock: MockClock, rig: Rig) -> None:
    """The fee of a released package's order, reported after the release (Binance's perp order answer carries
    no commission; the trade report may come later): rebuilt from the journal, journaled as `late_fee` with
    a new `pnl` row, folded into the retired totals, and a repeat of the same report changes nothing."""
    pid = rig.engine.submit(rig.spec())
    assert await rig.settle(pid) is State.HEDGED
    assert rig.engine.request_close(pid, "test")
    with trio.fail_after(30):
        await rig.handle(pid).wait_until(lambda c: c.state is State.FLAT)
    await rig.handle(pid).done.wait()
    assert pid not in rig.engine.handles
    unwind = next(o for o in rig.kept[pid].core.orders.values() if o.intent.symbol == ETH_PERP and o.filled)
    fees_before = rig.engine.retired.totals.fees_quote
    extra = Decimal("0.5")
    late = OrderUpdate(unwind.intent.client_order_id, ETH_PERP, unwind.intent.side, unwind.status, unwind.intent.amount,
                       unwind.filled, unwind.average, unwind.fee_base, unwind.fee_quote + extra)  # fmt: skip

    rig.engine.route(late)
    rig.engine.route(late)  # the same report again: nothing new

    rows = [r for r in rig.journal.timeline(pid) if r.kind in ("late_fee", "pnl")]
    assert [r.kind for r in rows][-2:] == ["late_fee", "pnl"] and sum(r.kind == "late_fee" for r in rows) == 1
    assert rig.engine.retired.totals.fees_quote == fees_before + extra
    assert rig.engine.core(pid).orders[unwind.intent.client_order_id].fee_quote == unwind.fee_quote + extra
    assert rig.engine.mode is EngineMode.RUNNING  # a fee is not a late landing: no halt
    assert_journal_verifies(rig.db)


def test_order_ids_route_to_retired_packages_of_this_engine_only(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        retired = RetiredPackages(journal, retention=5.0, max_recent=2)
        jid = journal.journal_id
        assert retired.order(f"lg{jid}000001-SE0", 0.0) is None  # no package retired yet
        assert "P000001" not in retired and "P1" not in retired and "X000001" not in retired
        # Not the journal's prefix, an engine-sent close, garbage: never a package's.
        for cid in ("lgzzzz000001-SE0", f"lg{jid}R1a2b3c4d-1", "untracked-1", f"lg{jid}-SE0"):
            assert retired.order(cid, 0.0) is None


async def test_the_recent_window_is_bounded_by_time_and_count(autojump_clock: MockClock, rig: Rig) -> None:
    retired = rig.engine.retired
    retired.max_recent = 3
    for _ in range(5):
        rig.venue.inject("reject", symbol=ETH_PERP)
        pid = rig.engine.submit(rig.spec())
        await rig.settle(pid)
        await rig.handle(pid).done.wait()
    assert len(retired._expiry) == 3 and len(retired) == 5
    oldest = next(iter(rig.kept.values()))
    cid, facts = next(iter(oldest.core.orders.items()))
    assert cid not in retired._recent  # aged out of memory ...
    known = retired.order(cid, trio.current_time())  # ... still answered, from the journal
    assert known is not None and (known.package_id, known.filled) == (oldest.package_id, facts.filled)
    assert known.rejected == (facts.status is OrderStatus.REJECTED) and retired.replays == 1
    retired.expire(trio.current_time() + retired.retention + 1)
    assert retired.recent_orders == 0 and len(retired) == 5
