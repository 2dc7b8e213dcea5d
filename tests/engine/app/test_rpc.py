"""The RPC core over a running engine on the simulated venue, in virtual time: status says what the engine
is doing; halt, resume, close and stop do what they say and every one is journaled with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.engine import Deadlines, Engine, EngineConfig, EngineMode, PackageSpec
from legguard.engine._spec import BreakerConfig
from legguard.engine.app._rpc import CONTROL, Rpc, RpcError
from legguard.engine.journal import package_pnl
from legguard.engine.journal._replay import verify
from legguard.engine.journal._store import Journal
from legguard.fsm import ExecutionStyle, State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
# taker-taker: these tests need hedged packages, not the race of two maker legs against the market.
SPEC = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1), execution=ExecutionStyle.TAKER_TAKER)


@pytest.fixture
async def rpc(tmp_path: Path) -> AsyncIterator[Rpc]:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        config = EngineConfig(deadlines=Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=3.0),
                              breaker=BreakerConfig(max_orphans=50))  # fmt: skip
        engine = Engine(venue, journal, config)
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
            yield Rpc(engine, trio.Event(), db=str(tmp_path / "j.db"))
    journal.close()


async def hedged(rpc: Rpc, n: int = 1) -> list[str]:
    ids = [rpc.engine.submit(SPEC) for _ in range(n)]
    with trio.fail_after(30):
        for pid in ids:
            await rpc.engine.handles[pid].wait_until(lambda c: c.state is State.HEDGED and c.is_quiescent())
    assert all(rpc.engine.handles[p].core.state is State.HEDGED for p in ids)
    return ids


def control_rows(rpc: Rpc, package_id: str | None = None) -> list[dict[str, object]]:
    rows = rpc.engine.journal.timeline(package_id) if package_id else rpc.engine.journal.engine_log()
    return [r.payload for r in rows if r.kind == CONTROL]


async def test_status_reports_mode_packages_exposure_and_health(autojump_clock: MockClock, rpc: Rpc) -> None:
    [pid] = await hedged(rpc)

    s = rpc.handle("status", {}, via="test")

    assert s["mode"] == "running" and s["halt"] is None
    assert s["packages"]["by_state"] == {"hedged": 1}
    eth = s["exposure"]["ETH"]
    assert Decimal(eth["naked"]) == 0
    assert Decimal(eth["gross"]) > Decimal("0.099")  # spot held (less the base fee) + the perp short
    assert abs(Decimal(eth["net"])) < Decimal("0.0001")
    assert s["venue"]["healthy"] is True and set(s["venue"]["book_age_s"]) == {ETH, ETH_PERP}
    assert s["breaker"]["max_orphans"] == 50
    assert s["journal"]["journal_id"] == rpc.engine.journal.journal_id
    assert s["live"] == []  # hedged is not in flight
    assert pid in rpc.engine.handles


async def test_status_marks_open_packages_to_market_at_the_book_mids(autojump_clock: MockClock, rpc: Rpc) -> None:
    [pid] = await hedged(rpc)
    rpc.engine.handles[pid].funding = Decimal("1.5")  # as if a funding payment had been booked to it

    s = rpc.handle("status", {}, via="test")

    handle = rpc.engine.handles[pid]
    mids = {sym: (b.best_bid + b.best_ask) / 2 for sym, b in rpc.engine.books.items() if b.best_bid and b.best_ask}
    expected = package_pnl(handle.core, handle.funding).value_at(mids)
    assert expected is not None
    assert Decimal(s["pnl"]["unrealized"]) == expected
    assert Decimal(s["pnl"]["funding"]) == Decimal("1.5") and s["pnl"]["unpriced"] == 0
    # By hand: what was paid and received, funding, and what is held valued at the mids.
    core = handle.core
    cash = Decimal(0)
    for o in core.orders.values():
        if o.filled and o.average is not None:
            cash += o.filled * o.average * (-1 if o.intent.side.value == "buy" else 1) - o.fee_quote
    exposure = core.exposure()
    by_hand = cash + Decimal("1.5") + exposure.spot * mids[ETH] + exposure.perp * mids[ETH_PERP]
    assert by_hand == expected


async def test_halt_refuses_new_packages_and_resume_takes_them_again(autojump_clock: MockClock, rpc: Rpc) -> None:
    result = rpc.handle("halt", {"reason": "maintenance window"}, via="test")
    assert result["done"] and rpc.engine.mode is EngineMode.HALTED
    status = rpc.status()
    assert status["halt"] == {"reason": "maintenance window", "source": "operator", "resume_in_s": None}
    refused = rpc.engine.submit(SPEC)
    with trio.fail_after(10):
        await rpc.engine.handles[refused].wait_until(lambda c: c.state is State.FLAT)

    assert rpc.handle("resume", {"reason": "done"}, via="test")["done"]
    assert rpc.engine.mode is EngineMode.RUNNING
    await hedged(rpc)
    assert rpc.handle("resume", {}, via="test")["done"] is False  # not halted: says so, changes nothing

    actions = [(p["action"], p["reason"], p["result"]) for p in control_rows(rpc)]
    assert actions == [
        ("halt", "maintenance window", "halted"),
        ("resume", "done", "resumed"),
        ("resume", "operator resume", "not resumed: engine is running"),
    ]


async def test_close_takes_hedged_packages_to_flat_and_journals_each(autojump_clock: MockClock, rpc: Rpc) -> None:
    first, second, third = await hedged(rpc, 3)
    handles = [rpc.engine.handles[pid] for pid in (first, second, third)]  # the engine releases flat ones

    one = rpc.handle("close", {"ids": [first], "reason": "rebalance"}, via="test")
    rest = rpc.handle("close", {"all": True}, via="test")

    assert one["closing"] == [first]
    assert sorted(rest["closing"]) == [second, third]
    with trio.fail_after(30):
        for h in handles:
            await h.done.wait()  # its actor ended (flat): released
    assert rpc.engine.handles == {} and all(h.core.state is State.FLAT for h in handles)
    # Released from memory, still counted: status reads the engine's counters for them.
    packages = rpc.status()["packages"]
    assert (packages["total"], packages["by_state"], packages["live"]) == (3, {"flat": 3}, 0)
    assert control_rows(rpc, first)[0]["reason"] == "rebalance"
    assert control_rows(rpc, second)[0]["action"] == "close"
    assert verify(rpc.engine.journal.path).ok


async def test_close_by_pair_and_refusals(autojump_clock: MockClock, rpc: Rpc) -> None:
    [pid] = await hedged(rpc)

    by_pair = rpc.handle("close", {"pair": ETH}, via="test")
    assert by_pair["closing"] == [pid]
    with pytest.raises(RpcError, match="unknown package id"):
        rpc.handle("close", {"ids": ["P999999"]}, via="test")
    with pytest.raises(RpcError, match="exactly one"):
        rpc.handle("close", {"ids": [pid], "all": True}, via="test")
    with pytest.raises(RpcError, match="no pair 'DOGE/USDT'"):
        rpc.handle("close", {"pair": "DOGE/USDT"}, via="test")
    with pytest.raises(RpcError, match="unknown command"):
        rpc.handle("explode", {}, via="test")
    with trio.fail_after(30):
        await rpc.engine.handles[pid].wait_until(lambda c: c.state is State.FLAT)
    # closing it again: it is flat now, named explicitly, so it is reported as skipped
    again = rpc.handle("close", {"ids": [pid]}, via="test")
    assert again == {"closing": [], "skipped": {pid: "flat"}, "done": False}


async def test_stop_sets_the_runs_stop_event_and_is_journaled(autojump_clock: MockClock, rpc: Rpc) -> None:
    result = rpc.handle("stop", {"reason": "deploy"}, via="test")
    assert result["done"] and rpc.stop_event.is_set()
    assert control_rows(rpc)[-1] == {"action": "stop", "reason": "deploy", "via": "test", "result": "stopping"}
