"""The venue-truth oracle (engine/_venue_truth.py): it passes when the venue's books are as the journal
tells them, and names every kind of disagreement: an order the journal does not know, fills it does not
have, a position or a balance it does not account for."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import trio
from trio.testing import MockClock

from legguard.adapters.sim._venue import SimConfig, SimVenue, open_sim_venue
from legguard.domain import OrderRequest, OrderStatus, OrderType, Side
from legguard.engine import Deadlines, Engine, EngineConfig, PackageSpec
from legguard.engine._venue_truth import EmulatorStateBooks, compare_venue
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
DEADLINES = Deadlines(ack=1.0, fill=4.0, unwind=5.0, leg=3.0, recv_window=2.0, clock_allowance=0.5)


async def hedged_run(venue: SimVenue, journal: Journal) -> str:
    engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES))
    async with engine.running([ETH, ETH_PERP]):
        await trio.sleep(1.0)
        pid = engine.submit(PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1)))
        with trio.fail_after(30):
            await engine.handles[pid].wait_until(lambda c: c.state is State.HEDGED and c.is_quiescent())
    return pid


async def test_agreeing_venue_passes(autojump_clock: MockClock, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        await hedged_run(venue, journal)
        truth = compare_venue(venue.engine, journal)
    assert truth.ok, truth.problems
    assert truth.orders_checked == 2
    assert truth.positions[ETH_PERP] == {"venue": "-0.05", "journal": "-0.05"}
    journal.close()


async def test_every_kind_of_disagreement_is_named(autojump_clock: MockClock, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        await hedged_run(venue, journal)
        now = trio.current_time()
        # an order with this journal's prefix the journal never wrote (it filled: position and balance move)
        venue.engine.place(
            OrderRequest(f"lg{journal.journal_id}000099-PE0", ETH_PERP, Side.SELL, OrderType.MARKET, Decimal("0.02")),
            now,
        )
        venue.engine.place(OrderRequest("someone-else", ETH, Side.BUY, OrderType.MARKET, Decimal("0.01")), now)
        truth = compare_venue(venue.engine, journal)
    assert not truth.ok
    text = "\n".join(truth.problems)
    assert f"order lg{journal.journal_id}000099-PE0: at the venue (closed 0.02), unknown to the journal" in text
    assert "position ETH/USDT:USDT: venue -0.07, journal accounts for -0.05" in text
    assert "balance ETH: venue" in text
    assert "someone-else" not in text  # not ours: its effect on the balance is what is reported
    journal.close()


async def test_a_liquidation_the_journal_never_heard_of_is_a_position_problem(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    journal = Journal.open(tmp_path / "j.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        await hedged_run(venue, journal)  # the engine has stopped: nobody hears of it
        venue.inject("liquidation", symbol=ETH_PERP, quantity=Decimal("0.02"))
        truth = compare_venue(venue.engine, journal)
    assert truth.problems == ["position ETH/USDT:USDT: venue -0.03, journal accounts for -0.05"]
    journal.close()


def test_emulator_state_books_read_the_control_api_shape() -> None:
    state = {
        "spot": {
            "balances": {"ETH": {"free": "100.04995", "locked": "0"}},
            "orders": [{"symbol": "ETHUSDT", "clientOrderId": "lgab12000001-SE0", "side": "BUY", "status": "FILLED",
                        "origQty": "0.0500", "executedQty": "0.0500"}],
        },
        "linear": {
            "positions": {"ETHUSDT": "-0.050"},
            "orders": [{"symbol": "ETHUSDT", "clientOrderId": "lgab12000001-PE0", "side": "SELL",
                        "status": "PARTIALLY_FILLED", "origQty": "0.050", "executedQty": "0.020"}],
        },
    }  # fmt: skip
    books = EmulatorStateBooks(state)
    spot, perp = books.all_orders()
    assert (spot.symbol, spot.side, spot.status, spot.filled) == (ETH, Side.BUY, OrderStatus.CLOSED, Decimal("0.05"))
    assert (perp.symbol, perp.status, perp.amount, perp.filled) == (ETH_PERP, OrderStatus.OPEN, Decimal("0.05"),
                                                                    Decimal("0.02"))  # fmt: skip
    assert books.positions() == {ETH_PERP: Decimal("-0.05")}
    assert books.balances()["ETH"].total == Decimal("100.04995")
    assert [o.client_order_id for o in books.all_orders(ETH_PERP)] == ["lgab12000001-PE0"]
