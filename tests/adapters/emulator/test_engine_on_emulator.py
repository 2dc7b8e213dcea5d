"""Acceptance: the real `Engine` trading through `CcxtVenue` (unmodified ccxt / ccxt.pro) against the
Binance-wire emulator over loopback sockets, one leg-risk scenario per test. Every test ends hedged or flat,
with the emulator's own state (balances, positions, orders) confirming it and `verify(journal)` ok.

The emulator runs on its manual clock (its market moves only when a test moves it, held requests are
released by advancing it). The trio clock is a MockClock running at real speed: the engine's deadlines are
long enough never to pass by themselves, and a test that needs one to pass jumps the clock past it.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import (
    ENGINE_DEADLINES,
    ETH,
    ETH_PERP,
    QTY,
    STREAM_WAIT,
    Rig,
    emulated,
    engine_on,
    settle,
)

from legguard.adapters.market._matching import MatchingEngine
from legguard.domain import MarketKind, OrderNotFound, OrderStatus, OrderUpdate, RejectReason, Side
from legguard.engine import Engine, Journal, PackageHandle, PackageSpec, verify
from legguard.fsm import LegRole, PackageCore, Purpose, State

KIND = {LegRole.SPOT: MarketKind.SPOT, LegRole.PERP: MarketKind.LINEAR}
SPOT_POST_ONLY_MSG = "Order would immediately match and take."  # Binance's -2010 text for LIMIT_MAKER


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.rate = 1.0  # real speed; tests jump it past the deadline they mean to expire
    return mock_clock


def submit(engine: Engine) -> tuple[str, PackageHandle]:
    pid = engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
    return pid, engine.handles[pid]


async def until_core(handle: PackageHandle, predicate: Callable[[PackageCore], bool]) -> None:
    with trio.fail_after(STREAM_WAIT):
        await handle.wait_until(predicate)
    assert predicate(handle.core), f"package {handle.package_id} ended in {handle.core.state} first"


def entry(core: PackageCore, role: LegRole) -> str:
    return core.entry[role]


def status_of(core: PackageCore, role: LegRole) -> OrderStatus:
    return core.orders[entry(core, role)].status


def both_resting(core: PackageCore) -> bool:
    return len(core.entry) == 2 and all(status_of(core, r) is OrderStatus.OPEN for r in LegRole)


def deadman_armed(rig: Rig) -> trio.Event:
    """Set once the engine's dead-man's switch has armed the venue's countdown. A test that jumps the clock
    waits for it first: a jump while that request is in flight would time it out too."""
    armed = trio.Event()
    real = rig.venue.countdown_cancel_all

    async def countdown_cancel_all(symbol: str, countdown_ms: int) -> None:
        await real(symbol, countdown_ms)
        if countdown_ms:
            armed.set()

    rig.venue.countdown_cancel_all = countdown_cancel_all  # type: ignore[method-assign]
    return armed


def spot_fee(rig: Rig, filled: Decimal = QTY) -> Decimal:
    return filled * rig.emu.engine.markets[ETH].maker_fee  # a spot buy pays its maker fee in ETH


def bought(core: PackageCore) -> Decimal:
    """The spot entry's amount: QTY grossed up for the fee the venue keeps in ETH (issue 14)."""
    return core.plan.entry_amount(LegRole.SPOT)


def assert_exact_hedge(rig: Rig, core: PackageCore, eth: Decimal, position: Decimal) -> None:
    """Hedged over the emulator: the ETH the account gained (the buy net of its fee) equals the perp short to
    the spot lot step, and the engine believes exactly that."""
    held = bought(core) - spot_fee(rig, bought(core)).quantize(Decimal("1e-8"), ROUND_HALF_UP)  # Binance: 8 dp
    assert position == -QTY and eth == 100 + held
    assert 0 <= held - QTY < rig.emu.engine.markets[ETH].step_size
    exposure = core.exposure()
    assert (exposure.spot, exposure.perp, exposure.unknown) == (held, -QTY, False)


def journal_texts(db: Path, pid: str | None) -> list[str]:
    """Every journal row of the package, as JSON text."""
    with Journal.open(db, readonly=True) as journal:
        return [json.dumps(r.payload) for r in journal.rows() if r.package_id == pid]


def balance(venue_state: dict[str, Any], asset: str) -> tuple[Decimal, Decimal]:
    b = venue_state["spot"]["balances"][asset]
    return Decimal(b["free"]), Decimal(b["locked"])


def assert_untouched(venue_state: dict[str, Any]) -> None:
    """Flat and never filled: the account is exactly as the emulator started it, nothing left open."""
    assert balance(venue_state, "ETH") == (100, 0)
    assert balance(venue_state, "USDT") == (1_000_000, 0)
    assert Decimal(venue_state["linear"]["positions"]["ETHUSDT"]) == 0
    assert Decimal(venue_state["linear"]["wallet"]) == 1_000_000
    assert all(o["status"] not in ("NEW", "PARTIALLY_FILLED") for k in ("spot", "linear")
               for o in venue_state[k]["orders"])  # fmt: skip


# --- 2. post-only rejects ------------------------------------------------------------------------------


async def test_spot_leg_rejected_post_only_ends_flat(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with emulated() as rig:
        # Binance spot's answer for a LIMIT_MAKER that would take: -2010 "Order would immediately match".
        await rig.fault(fault="reject", code=-2010, msg=SPOT_POST_ONLY_MSG, market="spot", path="/order",
                        method="POST")  # fmt: skip
        async with engine_on(rig, tmp_path / "j.db") as engine:
            pid, handle = submit(engine)
            state = await settle(engine, pid)
            core = handle.core
            venue_state = rig.emu.state()

    assert state is State.FLAT
    assert core.orders[entry(core, LegRole.SPOT)].reason == RejectReason.POST_ONLY_CROSS
    assert entry(core, LegRole.SPOT) not in rig.orders(MarketKind.SPOT)  # it never existed
    assert rig.orders(MarketKind.LINEAR)[entry(core, LegRole.PERP)]["status"] == "CANCELED"
    assert_untouched(venue_state)
    assert verify(tmp_path / "j.db").ok


@pytest.mark.parametrize("leg", [LegRole.SPOT, LegRole.PERP])
async def test_leg_that_would_cross_on_arrival_is_rejected_by_the_venue_and_the_package_ends_flat(
    tmp_path: Path, clock: trio.testing.MockClock, leg: LegRole
) -> None:
    # Not an injected code: the leg's order is held on its way, the market moves through its limit, and the
    # emulator's matching engine refuses the post-only order (spot -2010, USDⓈ-M -5022) when it arrives.
    kind = KIND[leg]
    async with emulated() as rig:
        await rig.fault(fault="delay", delay_ms=100, market=kind.value, path="/order", method="POST")
        async with engine_on(rig, tmp_path / "j.db") as engine:
            pid, handle = submit(engine)
            await rig.until(lambda: rig.emu.held == 1)
            plan = handle.core.plan.leg(leg)
            market = rig.emu.engine.markets[plan.symbol]
            top = rig.emu.engine.book(plan.symbol, 1)
            assert top.best_bid is not None and top.best_ask is not None
            if leg is LegRole.SPOT:  # the asks come down to one tick under our bid
                shift = plan.price - top.best_ask - market.tick_size
            else:  # the bids go up to one tick over our ask
                shift = plan.price - top.best_bid + market.tick_size
            await rig.on_emulator(rig.emu.move, market, rig.emu.driver.mid_of(market) + shift)
            await rig.on_emulator(rig.emu.advance, 0.1)  # the held order arrives
            state = await settle(engine, pid)
            core = handle.core
            venue_state = rig.emu.state()

    other = LegRole.PERP if leg is LegRole.SPOT else LegRole.SPOT
    assert state is State.FLAT
    assert core.orders[entry(core, leg)].reason == RejectReason.POST_ONLY_CROSS
    assert entry(core, leg) not in rig.orders(kind)
    assert rig.orders(KIND[other])[entry(core, other)]["status"] == "CANCELED"
    assert_untouched(venue_state)
    assert verify(tmp_path / "j.db").ok


# --- 3. insufficient margin on the perp after the spot filled ------------------------------------------


async def test_perp_refused_for_margin_after_the_spot_filled_the_kill_switch_sells_the_spot(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # A 20 USDT futures wallet carries 100 USDT of exposure at 5x; the 0.05 ETH short (~139 USDT) is refused
    # by the emulator's own margin check (-2019). The perp order is held on its way so the spot fills first.
    async with emulated(emulator={"engine": MatchingEngine(perp_wallet=Decimal(20))}) as rig:
        await rig.fault(fault="delay", delay_ms=100, market="linear", path="/order", method="POST")
        async with engine_on(rig, tmp_path / "j.db") as engine:
            pid, handle = submit(engine)
            await rig.until(lambda: rig.emu.held == 1)
            await until_core(handle, lambda c: status_of(c, LegRole.SPOT) is OrderStatus.OPEN)
            # The market moves down through our bid: we are the maker, filled in full.
            spot_m = rig.emu.engine.markets[ETH]
            top = rig.emu.engine.book(ETH, 1)
            assert top.best_ask is not None
            shift = handle.core.plan.spot.price - top.best_ask - spot_m.tick_size
            await rig.on_emulator(rig.emu.move, spot_m, rig.emu.driver.mid_of(spot_m) + shift)
            await until_core(handle, lambda c: status_of(c, LegRole.SPOT) is OrderStatus.CLOSED)
            # naked: the whole grossed-up buy, held net of its fee
            assert handle.core.state is State.DISPATCHED and handle.core.unmatched() == handle.core.held_spot() > QTY
            await rig.on_emulator(rig.emu.advance, 0.1)  # now the perp order arrives
            state = await settle(engine, pid)
            core = handle.core
            exposure = core.exposure()
            venue_state = rig.emu.state()

    assert state is State.FLAT
    assert core.orders[entry(core, LegRole.PERP)].reason == RejectReason.INSUFFICIENT_FUNDS
    assert core.orders[entry(core, LegRole.SPOT)].filled == bought(core)
    held = bought(core) - spot_fee(rig, bought(core))
    sold = [o for o in rig.orders(MarketKind.SPOT).values() if o["side"] == "SELL"]
    assert [(o["type"], o["status"]) for o in sold] == [("MARKET", "FILLED")]
    step = spot_m.step_size
    assert Decimal(sold[0]["executedQty"]) == (held / step).to_integral_value(rounding=ROUND_DOWN) * step
    # What is left is dust below one spot step, and the engine's books say exactly what the venue holds.
    free, locked = balance(venue_state, "ETH")
    residual = free - 100
    assert 0 <= residual < step and locked == 0
    assert (exposure.spot, exposure.perp, exposure.unknown) == (residual, 0, False)
    assert Decimal(venue_state["linear"]["positions"]["ETHUSDT"]) == 0 and venue_state["linear"]["orders"] == []
    assert verify(tmp_path / "j.db").ok


# --- 3b. the kill switch's unwind is armed while its cancel is held on the way ---------------------------


@contextmanager
def signs_of(monkeypatch: pytest.MonkeyPatch, suffix: str) -> Iterator[list[str]]:
    """Every ccxt `sign()` of an order whose client id ends with `suffix`, from now on."""
    from legguard.adapters.ccxt._venue import _Request

    signed: list[str] = []
    real = _Request.sign

    def sign(self: Any, venue: Any) -> None:
        cid = str(self.params.get("newClientOrderId", ""))
        if cid.endswith(suffix):
            signed.append(cid)
        real(self, venue)

    monkeypatch.setattr(_Request, "sign", sign)
    yield signed


async def kill_switch_with_held_cancel(rig: Rig, engine: Engine) -> PackageHandle:
    """The perp leg rejected (-5022), the spot leg resting with 40 % filled: the kill switch's cancel of the
    spot is held on its way until the emulator's clock moves."""
    _, handle = submit(engine)
    await rig.until(lambda: rig.emu.held == 1)
    await until_core(handle, lambda c: c.state is State.UNWINDING and c.orders[entry(c, LegRole.SPOT)].filled > 0)
    return handle


@pytest.mark.parametrize("stream", ["reports-fees-first", "late"])
async def test_the_unwind_armed_while_the_cancel_is_held_is_released_without_signing_it_again(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    # resign_after: a loaded machine must not age the armed signature past it while the test looks.
    async with emulated(resign_after=60.0) as rig:
        await rig.fault(fault="partial_fill", market="spot", ratio=0.4)
        await rig.fault(fault="reject", market="linear", code=-5022, path="/order", method="POST")
        await rig.fault(fault="delay", delay_ms=100, market="spot", path="/order", method="DELETE")
        async with engine_on(rig, tmp_path / "j.db") as engine:
            if stream == "late":
                # The spot's execution reports never reach the package before the cancel's answer: that answer
                # is the first to tell the package the fee (from the stream's report, which the venue has).
                real_route = engine.route
                monkeypatch.setattr(engine, "route", lambda u: None if u.client_order_id.endswith("-SE0")
                                    else real_route(u))  # fmt: skip
                # Nor does the engine's guess of the answer (`fees_known`, from the venue's fee ledger) know it.
                monkeypatch.setattr(rig.venue, "fees_known", lambda *_: None)
            with signs_of(monkeypatch, "-SU0") as signed:
                handle = await kill_switch_with_held_cancel(rig, engine)
                spot = handle.core.orders[entry(handle.core, LegRole.SPOT)]
                if stream == "late":
                    assert spot.fee_base == 0  # the package knows the fill (the ack said so), not its fee
                else:
                    await until_core(handle, lambda c: c.orders[entry(c, LegRole.SPOT)].fee_base > 0)
                # Armed (and signed) already: for the fill the acknowledgement told, again once the fee was known.
                before = len(signed)
                assert before >= 1
                await rig.on_emulator(rig.emu.advance, 0.1)  # the cancel reaches the venue
                state = await settle(engine, handle.package_id)
            core = handle.core
            stats = engine.stats

    assert state is State.FLAT
    filled = core.orders[entry(core, LegRole.SPOT)].filled
    step = rig.emu.engine.markets[ETH].step_size
    unwound = ((filled - spot_fee(rig, filled)) / step).to_integral_value(rounding=ROUND_DOWN) * step
    sold = [o for o in rig.orders(MarketKind.SPOT).values() if o["side"] == "SELL"]
    assert [(o["type"], o["status"], Decimal(o["executedQty"])) for o in sold] == [("MARKET", "FILLED", unwound)]
    assert rig.venue.fee_queries == 0  # the fee came from the stream's execution report, never from REST
    if stream == "late":
        # Armed for the fill without its fee; the answer changed the amount: armed (signed) once more.
        assert len(signed) == before + 1 and (stats.armed_ahead, stats.rearmed) == (0, 1)
        assert stats.prepared_steps == 0  # the answer was not the one expected: decided as usual
    else:
        assert len(signed) == before and (stats.armed_ahead, stats.rearmed) == (1, 0)  # released as armed
        assert stats.prepared_steps == 1  # the cancel's answer was the one expected: its step was ready
    assert verify(tmp_path / "j.db").ok


def committed_kinds(db: Path, pid: str) -> list[tuple[str, str | None]]:
    """The package's rows another connection sees (committed only): kind and client order id."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT kind, payload FROM journal WHERE package_id = ? ORDER BY seq", (pid,))
        return [(kind, json.loads(payload).get("client_order_id")) for kind, payload in rows]


@dataclass
class CancelWatch:
    """Every order-path send and answer at the venue's socket (`stamps`), and the package's committed rows at
    the moment the spot entry's cancel was written (`at_cancel`)."""

    db: Path
    pid: str = ""
    stamps: list[tuple[str, str]] = field(default_factory=list)
    at_cancel: list[list[tuple[str, str | None]]] = field(default_factory=list)

    def tap(self, what: str, key: str, ns: int) -> None:
        self.stamps.append((what, key))
        if what == "send" and key.startswith("cancel:") and key.endswith("-SE0"):
            self.at_cancel.append(committed_kinds(self.db, self.pid))


def submit_watched(rig: Rig, engine: Engine, db: Path) -> tuple[CancelWatch, PackageHandle]:
    watch = CancelWatch(db)
    rig.venue.set_tap(watch.tap)  # before the package: its connections take the tap when they are taken
    watch.pid, handle = submit(engine)
    return watch, handle


async def test_the_perp_refused_first_the_spots_cancel_leaves_as_soon_as_its_answer_says_it_rests(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The perp leg is refused (-5022) while the spot's answer is held at the venue: the package cannot cancel
    # an order not known to exist, so it arms the cancel for the spot's answer (journaled: `cancel_armed`).
    # When that answer comes (resting, 40 % filled), the cancel is written before the answer is decoded or
    # stepped: its write-ahead row is the armed one, the answer's own step commits after it has left.
    db = tmp_path / "j.db"
    async with emulated(resign_after=60.0) as rig:
        await rig.fault(fault="partial_fill", market="spot", ratio=0.4)
        await rig.fault(fault="reject", market="linear", code=-5022, path="/order", method="POST")
        await rig.fault(fault="delay", delay_ms=100, market="spot", path="/order", method="POST")
        async with engine_on(rig, db) as engine:
            # The spot's execution reports reach the package only after its REST answer (as when ccxt's
            # receive loop hands them over late): the answer is the first word on the order.
            real_route = engine.route
            monkeypatch.setattr(engine, "route", lambda u: None if u.client_order_id.endswith("-SE0")
                                else real_route(u))  # fmt: skip
            watch, handle = submit_watched(rig, engine, db)
            pid, spot = watch.pid, f"{handle.core.plan.client_id_prefix}-SE0"
            await until_core(handle, lambda c: c.orders[entry(c, LegRole.PERP)].status is OrderStatus.REJECTED)
            assert ("cancel_armed", spot) in committed_kinds(db, pid)
            assert not any(key.startswith("cancel:") for _, key in watch.stamps)  # armed only: no answer yet
            await rig.until(lambda: rig.emu.held == 1)  # the spot order waits at the venue for its clock
            await rig.on_emulator(rig.emu.advance, 0.1)  # the spot order rests, 40 % filled, and is answered
            state = await settle(engine, pid)
            core = handle.core

    assert state is State.FLAT
    # The cancel was written right after the spot's answer was read, before anything else went out...
    answer = watch.stamps.index(("recv", spot))
    assert (
        watch.stamps[answer + 1] == ("send", f"cancel:{spot}") and watch.stamps.count(("send", f"cancel:{spot}")) == 1
    )
    # ...its write-ahead row committed already, the answer's own step (the spot resting) not yet.
    (rows,) = watch.at_cancel
    assert ("cancel_armed", spot) in rows and ("cancel", spot) not in rows
    rows_after = committed_kinds(db, pid)
    assert rows_after.index(("cancel_armed", spot)) < rows_after.index(("cancel", spot))  # the step's own, later
    # The venue cancelled the rest and the kill switch sold what the spot bought.
    assert rig.orders(MarketKind.SPOT)[spot]["status"] == "CANCELED"
    assert core.orders[spot].status is OrderStatus.CANCELED and core.orders[spot].filled > 0
    assert rig.venue.cancels_on_answer == 1
    assert verify(db).ok


async def test_the_spot_resting_half_filled_its_cancel_leaves_as_soon_as_the_perp_is_refused(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # The spot rests 40 % filled (naked) while the perp's order is held on its way; the market moves through
    # the perp's limit and the emulator's matching refuses it on arrival (-5022). The spot's cancel was armed
    # for that refusal by the step of the spot's answer, so it is written as soon as the refusal is read.
    db = tmp_path / "j.db"
    async with emulated(resign_after=60.0) as rig:
        await rig.fault(fault="partial_fill", market="spot", ratio=0.4)
        await rig.fault(fault="delay", delay_ms=100, market="linear", path="/order", method="POST")
        async with engine_on(rig, db) as engine:
            watch, handle = submit_watched(rig, engine, db)
            pid = watch.pid
            spot, perp = (f"{handle.core.plan.client_id_prefix}-{leg}E0" for leg in "SP")
            await rig.until(lambda: rig.emu.held == 1)
            await until_core(handle, lambda c: c.orders[entry(c, LegRole.SPOT)].filled > 0)
            assert ("cancel_armed", spot) in committed_kinds(db, pid)
            plan = handle.core.plan.perp
            market = rig.emu.engine.markets[plan.symbol]
            top = rig.emu.engine.book(plan.symbol, 1)
            assert top.best_bid is not None
            shift = plan.price - top.best_bid + market.tick_size  # the bids go up to one tick over our ask
            await rig.on_emulator(rig.emu.move, market, rig.emu.driver.mid_of(market) + shift)
            await rig.on_emulator(rig.emu.advance, 0.1)  # the held perp order arrives and is refused
            state = await settle(engine, pid)
            core = handle.core
            prepared = engine.kill_switch_prepared()  # what the run summary and the metrics report

    assert state is State.FLAT
    assert prepared["cancel_on_answer"] == 1
    assert core.orders[perp].reason == RejectReason.POST_ONLY_CROSS
    refusal = watch.stamps.index(("recv", perp))
    assert watch.stamps[refusal + 1] == ("send", f"cancel:{spot}")  # the first thing written after the refusal
    (rows,) = watch.at_cancel
    assert ("cancel_armed", spot) in rows and ("event", perp) not in rows  # the refusal's step came after
    with Journal.open(db, readonly=True) as journal:
        (armed,) = [r.payload for r in journal.rows() if r.kind == "cancel_armed"]
    assert armed == {"client_order_id": spot, "symbol": ETH, "answer_of": perp, "when": "refused"}
    assert rig.orders(MarketKind.SPOT)[spot]["status"] == "CANCELED" and rig.venue.cancels_on_answer == 1
    assert verify(db).ok


async def test_the_unwinds_answer_lost_the_order_streams_fill_report_settles_the_package(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # The perp leg refused post-only, the spot resting 40 % filled: the kill switch cancels it and sells what
    # it bought at market. That market order fills at the venue and its answer never comes; the order stream's
    # report (which leaves the venue first in any case) is the only answer the package gets.
    async with emulated() as rig:
        await rig.fault(fault="partial_fill", market="spot", ratio=0.4)
        await rig.fault(fault="reject", market="linear", code=-5022, path="/order", method="POST")
        await rig.fault(fault="ack_timeout", market="spot", path="/order", method="POST", order_type="MARKET")
        async with engine_on(rig, tmp_path / "j.db") as engine:
            pid, handle = submit(engine)
            state = await settle(engine, pid)
            core = handle.core
            held = rig.emu.held
        # engine_on's exit compared the emulator's books with the journal: no order, balance or position differs

    assert state is State.FLAT and held == 1  # the market order's answer was still held when it went flat
    (unwind,) = [cid for cid, o in core.orders.items() if o.intent.purpose is Purpose.UNWIND]
    sold = rig.orders(MarketKind.SPOT)[unwind]
    assert (sold["type"], sold["status"]) == ("MARKET", "FILLED")
    assert core.orders[unwind].filled == Decimal(sold["executedQty"]) > 0  # known from the stream alone
    assert verify(tmp_path / "j.db").ok


# --- 4. acknowledgement timeout on an order that actually rests ----------------------------------------


@pytest.mark.parametrize("perp_fills", [False, True], ids=["nothing-filled", "perp-filled"])
async def test_ack_timeout_leg_is_found_by_client_id_and_cancelled(
    tmp_path: Path, clock: trio.testing.MockClock, perp_fills: bool
) -> None:
    async with emulated() as rig:
        # The spot order takes effect; its acknowledgement never comes.
        await rig.fault(fault="ack_timeout", market="spot", path="/order", method="POST")
        fetches = rig.record_fetches()
        armed = deadman_armed(rig)
        async with engine_on(rig, tmp_path / "j.db") as engine:
            pid, handle = submit(engine)
            await rig.until(lambda: rig.emu.held == 1)
            spot_cid, perp_cid = entry(handle.core, LegRole.SPOT), entry(handle.core, LegRole.PERP)
            assert rig.orders(MarketKind.SPOT)[spot_cid]["status"] == "NEW"  # it rests at the venue
            # The user stream reports it new (the REST answer is what never comes) before the deadline, so
            # that afterwards only the query by client order id can tell the engine anything about it.
            await until_core(handle, lambda c: all(status_of(c, r) is OrderStatus.OPEN for r in LegRole))
            if perp_fills:
                perp_m = rig.emu.engine.markets[ETH_PERP]
                await rig.on_emulator(rig.emu.trade, perp_m, Side.BUY, handle.core.plan.perp.price, QTY)
                await until_core(handle, lambda c: c.orders[perp_cid].filled == QTY)
            assert handle.core.state is State.DISPATCHED and fetches.answers(spot_cid) == []
            with trio.fail_after(STREAM_WAIT):
                await armed.wait()
            clock.jump(ENGINE_DEADLINES.ack)  # the acknowledgement deadline passes
            state = await settle(engine, pid)
            core = handle.core
            venue_state = rig.emu.state()

    assert state is State.FLAT
    # Reconciled by client order id: the venue knew the order, open, and it was then cancelled.
    found = fetches.answers(spot_cid)
    assert found and isinstance(found[0], OrderUpdate) and found[0].status is OrderStatus.OPEN, (
        fetches.calls,
        spot_cid,
    )
    assert core.orders[spot_cid].status is OrderStatus.CANCELED
    assert any("leg outcome unknown" in t for t in journal_texts(tmp_path / "j.db", pid))
    spot_orders, perp_orders = rig.orders(MarketKind.SPOT), rig.orders(MarketKind.LINEAR)
    assert spot_orders[spot_cid]["status"] == "CANCELED" and Decimal(spot_orders[spot_cid]["executedQty"]) == 0
    assert balance(venue_state, "ETH") == (100, 0) and balance(venue_state, "USDT") == (1_000_000, 0)
    assert Decimal(venue_state["linear"]["positions"]["ETHUSDT"]) == 0
    if perp_fills:  # the short was bought back, reduce-only
        unwinds = [o for cid, o in perp_orders.items() if cid != perp_cid]
        assert [(o["side"], o["type"], o["reduceOnly"], o["status"]) for o in unwinds] == [
            ("BUY", "MARKET", True, "FILLED")
        ]
        assert perp_orders[perp_cid]["status"] == "FILLED"
    else:
        assert [o["status"] for o in perp_orders.values()] == ["CANCELED"]
    exposure = core.exposure()
    assert (exposure.spot, exposure.perp, exposure.unknown) == (0, 0, False)
    assert verify(tmp_path / "j.db").ok


# --- 5. the user stream drops while the legs fill -------------------------------------------------------


@pytest.mark.parametrize("perp_filled", [QTY, Decimal("0.02")], ids=["both-filled", "perp-partly-filled"])
async def test_fills_missed_by_a_dropped_user_stream_are_reconciled_by_rest(
    tmp_path: Path, clock: trio.testing.MockClock, perp_filled: Decimal
) -> None:
    partly = perp_filled < QTY
    deadlines = replace(ENGINE_DEADLINES, leg=3.0) if partly else ENGINE_DEADLINES
    async with emulated() as rig:
        fetches = rig.record_fetches()
        armed = deadman_armed(rig)
        async with engine_on(rig, tmp_path / "j.db", deadlines) as engine:
            pid, handle = submit(engine)
            await until_core(handle, both_resting)
            spot_cid, perp_cid = entry(handle.core, LegRole.SPOT), entry(handle.core, LegRole.PERP)
            plan = handle.core.plan
            spot_m, perp_m = rig.emu.engine.markets[ETH], rig.emu.engine.markets[ETH_PERP]

            def drop_then_fill() -> None:
                # One step on the emulator's loop: no user stream is connected when the fills print.
                rig.emu.add_fault({"fault": "ws_drop", "market": "all"})
                rig.emu.trade(spot_m, Side.SELL, plan.spot.price, bought(handle.core))
                rig.emu.trade(perp_m, Side.BUY, plan.perp.price, perp_filled)

            await rig.on_emulator(drop_then_fill)
            if partly:
                # The REST reconcile finds the spot filled and the perp only partly: naked, so the perp gets
                # the leg deadline to catch up; it passes, the rest is cancelled and the package flattened.
                await until_core(handle, lambda c: c.orders[perp_cid].filled == perp_filled
                                 and c.orders[spot_cid].filled == bought(c))  # fmt: skip
                assert handle.leg_timer_started
                await trio.testing.wait_all_tasks_blocked()  # the leg timer is asleep on its deadline
                with trio.fail_after(STREAM_WAIT):
                    await armed.wait()
                clock.jump(deadlines.leg)
            state = await settle(engine, pid)
            core = handle.core
            exposure = core.exposure()
            drops = engine.stats.stream_drops
            venue_state = rig.emu.state()

    assert drops >= 1
    # The fills were learnt from REST, by client order id.
    for cid, filled in ((spot_cid, bought(core)), (perp_cid, perp_filled)):
        assert any(isinstance(a, OrderUpdate) and a.filled == filled for a in fetches.answers(cid)), cid
    eth, _ = balance(venue_state, "ETH")
    position = Decimal(venue_state["linear"]["positions"]["ETHUSDT"])
    if not partly:
        assert state is State.HEDGED
        assert_exact_hedge(rig, core, eth, position)
    else:
        assert state is State.FLAT
        assert rig.orders(MarketKind.LINEAR)[perp_cid]["status"] == "CANCELED"
        assert position == 0 and 0 <= eth - 100 < spot_m.step_size  # dust only
        assert (exposure.spot, exposure.perp) == (eth - 100, 0)
    assert not exposure.unknown
    assert verify(tmp_path / "j.db").ok


# --- 6. server errors and malformed answers on order placement -----------------------------------------


FAULTS = {
    "http-503-lost": ({"fault": "http_error", "status": 503}, False),
    "http-502-processed": ({"fault": "http_error", "status": 502, "process": True}, True),
    "malformed": ({"fault": "malformed_response"}, True),
}


@pytest.mark.parametrize("leg", [LegRole.SPOT, LegRole.PERP])
@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_unknown_placement_outcome_is_reconciled_by_client_id_and_ends_flat(
    tmp_path: Path, clock: trio.testing.MockClock, fault: str, leg: LegRole
) -> None:
    spec, took_effect = FAULTS[fault]
    kind = KIND[leg]
    async with emulated() as rig:
        await rig.fault(**spec, market=kind.value, path="/order", method="POST")
        fetches = rig.record_fetches()
        async with engine_on(rig, tmp_path / "j.db") as engine:
            pid, handle = submit(engine)
            # A lost request is "not found" for good only once it can no longer land: its recvWindow plus the
            # clock allowance (~6 s of real time here), on top of the usual wait.
            d = engine.config.deadlines
            state = await settle(engine, pid, wait=STREAM_WAIT * 2 + d.recv_window + d.clock_allowance)
            core = handle.core
            venue_state = rig.emu.state()

    cid = entry(core, leg)
    other = LegRole.PERP if leg is LegRole.SPOT else LegRole.SPOT
    answers = fetches.answers(cid)
    assert state is State.FLAT
    assert any("leg outcome unknown" in t for t in journal_texts(tmp_path / "j.db", pid))
    assert cid in fetches.asked, "the unknown leg was never asked for by client order id"
    if took_effect:
        # The venue had it: the query finds it open, unless the user stream's report of the new order
        # overtook the query and the engine cancelled it first (the query is then cancelled unanswered).
        assert all(isinstance(a, OrderUpdate) and a.status is OrderStatus.OPEN for a in answers)
        assert rig.orders(kind)[cid]["status"] == "CANCELED"
        assert core.orders[cid].status is OrderStatus.CANCELED
    else:  # it never reached the matching engine, and only the query can say so (asked again through the
        # not-found grace period, since a request can land a little after its error answer)
        assert answers
        assert all(isinstance(a, OrderNotFound) for a in answers)
        assert cid not in rig.orders(kind)
        assert core.orders[cid].status is OrderStatus.REJECTED
    assert rig.orders(KIND[other])[entry(core, other)]["status"] == "CANCELED"
    assert_untouched(venue_state)
    assert verify(tmp_path / "j.db").ok


# --- 7. the venue goes away for a while -----------------------------------------------------------------


async def test_outage_under_a_running_engine_is_survived_and_reconciled_when_the_venue_returns(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # Both entries rest; the emulator goes away (every request and handshake 503, websockets dropped) and,
    # while it is away, both legs fill on its books: the fills reach nobody. When it returns the engine learns
    # them by REST and the package ends hedged, the emulator's account agreeing.
    async with emulated() as rig, engine_on(rig, tmp_path / "j.db") as engine:
        pid, handle = submit(engine)
        await until_core(handle, both_resting)
        plan = handle.core.plan
        spot_m, perp_m = rig.emu.engine.markets[ETH], rig.emu.engine.markets[ETH_PERP]
        await rig.fault(fault="outage", seconds=600)
        with trio.fail_after(STREAM_WAIT * 2):
            await engine.outage.wait_down()
        await rig.on_emulator(rig.emu.trade, spot_m, Side.SELL, plan.spot.price, bought(handle.core))
        await rig.on_emulator(rig.emu.trade, perp_m, Side.BUY, plan.perp.price, QTY)
        refused = engine.handles[engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))]
        await until_core(refused, lambda c: c.state is State.FLAT)
        assert handle.core.state is State.DISPATCHED  # kept as it was: nothing can be learnt or sent
        await rig.on_emulator(rig.emu.clear_faults)  # the venue is back
        state = await settle(engine, pid)
        with trio.fail_after(STREAM_WAIT * 2):
            await engine.outage.wait_up()
        core = handle.core
        outages = engine.outage.outages
        venue_state = rig.emu.state()

    assert state is State.HEDGED and outages == 1
    assert not refused.core.orders  # nothing was sent for it
    entries = (core.orders[entry(core, LegRole.SPOT)].filled, core.orders[entry(core, LegRole.PERP)].filled)
    assert entries == (bought(core), QTY)
    eth, _ = balance(venue_state, "ETH")
    assert_exact_hedge(rig, core, eth, Decimal(venue_state["linear"]["positions"]["ETHUSDT"]))
    events = [json.loads(t).get("event") for t in journal_texts(tmp_path / "j.db", None)]
    assert events.count("venue_down") == 1 and events.count("venue_up") == 1
    assert verify(tmp_path / "j.db").ok


# --- the CLI end to end: two processes ------------------------------------------------------------------


LEGGUARD = [sys.executable, "-c", "from legguard.cli import main; main()"]
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "emulator.toml"
SCENARIOS = EXAMPLE.parent / "scenarios"


@contextmanager
def process(args: list[str], env: dict[str, str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process that is always gone when the block ends (terminated, then killed)."""
    proc = subprocess.Popen(args, env=env, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_port(proc: subprocess.Popen[str], timeout: float) -> int:
    """The plain HTTP port from `legguard emulator`'s banner. Reads the pipe's bytes directly: a buffered
    `readline` may pull the port line into Python's buffer together with the line before it, and `select` on
    the pipe would then wait for output that never comes (the banner is all the emulator prints)."""
    assert proc.stdout is not None
    seen: list[str] = []
    text = ""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode("utf-8", errors="replace")
            seen = [text]
            if m := re.search(r"REST \+ websockets\s+http://127\.0\.0\.1:(\d+)", text):
                return int(m.group(1))
    raise AssertionError(f"no port in the emulator's banner: {''.join(seen)!r}")


@pytest.mark.slow
def test_legguard_run_against_legguard_emulator_ends_every_package_hedged_or_flat(tmp_path: Path) -> None:
    _, summary = run_against_the_emulator(tmp_path, [])
    assert summary["venue_check"]["ok"], summary["venue_check"]


@pytest.mark.slow
def test_legguard_run_through_a_scripted_perp_crash_ends_every_package_hedged_or_flat(tmp_path: Path) -> None:
    """The shipped quick crash (perp -8 % over 5 s at 8 s, spot -4 %, funding every 20 s, then flipped) under a
    20 s run: whatever the engine does about it, every package ends hedged or flat and the venue agrees."""
    venue_state, _ = run_against_the_emulator(tmp_path, ["--scenario", str(SCENARIOS / "perp_crash_quick.toml")])
    assert [e["action"] for e in venue_state["scenario"]] == ["move", "move", "funding"]


@pytest.mark.slow
def test_legguard_run_through_a_perp_squeeze_has_the_margin_guard_close_packages(tmp_path: Path) -> None:
    """The shipped squeeze (perp_squeeze.toml: 200 USDT perp wallet at 20x, both perps +15 % over 10 s at 12 s,
    spots +12.5 %) under examples/emulator-squeeze.toml for 40 s: the margin guard reaches its act level and
    closes packages (exits journaled with policy margin_guard), every package ends hedged or flat, the run's
    own venue check and the emulator's account agree with the journal."""
    squeeze = EXAMPLE.parent / "emulator-squeeze.toml"
    venue_state, summary = run_against_the_emulator(
        tmp_path, ["--scenario", str(SCENARIOS / "perp_squeeze.toml")], config=squeeze, seconds=40
    )
    assert [e["action"] for e in venue_state["scenario"]] == ["move"] * 4
    assert Decimal(venue_state["linear"]["wallet"]) < 1000  # the scenario's small wallet, not the default
    guard = [line for line in (tmp_path / "run.log").read_text(encoding="utf-8").splitlines() if "margin guard" in line]
    assert summary["exits_by_policy"].get("margin_guard", 0) >= 1, (summary, guard[-20:])
    assert set(summary["final_states"]) <= {"hedged", "flat"}, summary
    assert summary["venue_check"]["ok"], summary["venue_check"]
    with Journal.open(tmp_path / "journal.db", readonly=True) as journal:
        rows = [r.payload for r in journal.rows()]
    levels = [p.get("level") for p in rows if p.get("event") == "level"]
    assert "act" in levels, levels


def run_against_the_emulator(
    tmp_path: Path, extra: list[str], *, config: Path = EXAMPLE, seconds: int = 20
) -> tuple[dict[str, Any], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGGUARD_")}  # the default credentials
    env["PYTHONUNBUFFERED"] = "1"
    db = tmp_path / "journal.db"
    emulator_args = [*LEGGUARD, "emulator", "--port", "0", "--tls-port", "-1", "--seconds", "120", *extra]
    with process(emulator_args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as emulator:
        port = read_port(emulator, timeout=30)
        pointed = tmp_path / "emulator.toml"
        text, n = re.subn(r'(?m)^url = "http://127\.0\.0\.1:\d+"', f'url = "http://127.0.0.1:{port}"',
                          config.read_text(encoding="utf-8"))  # fmt: skip
        assert n == 1, f"{config.name} has no venue url line to point at the test's emulator"
        pointed.write_text(text, encoding="utf-8")
        run_args = [*LEGGUARD, "run", "--config", str(pointed), "--db", str(db), "--seconds", str(seconds), "--json"]
        with process(run_args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path) as run:
            out, err = run.communicate(timeout=120)
        (tmp_path / "run.log").write_text(err, encoding="utf-8")  # the engine's log, for a failing test's message
        assert run.returncode == 0, err[-4000:]
        assert emulator.poll() is None, "the emulator died during the run"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/state", timeout=10) as answer:
            venue_state = json.loads(answer.read())

    summary = json.loads(out)
    verified = subprocess.run([*LEGGUARD, "audit", "verify", "--db", str(db)], env=env, text=True,
                              capture_output=True, timeout=60)  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = subprocess.run([*LEGGUARD, "audit", "list", "--db", str(db), "--json"], env=env, text=True,
                            capture_output=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    packages = json.loads(listed.stdout)["packages"]
    assert packages and len(packages) == summary["packages_total"]
    # A ccxt venue counts the cancels it wrote on an answer (zero or more); the sim venue has no such count.
    assert summary["kill_switch_prepared"]["cancel_on_answer"] >= 0
    assert isinstance(summary["fee_queries"], int) and summary["fee_queries"] >= 0
    assert {p["state"] for p in packages} <= {"hedged", "flat"}, packages
    assert all(not p["unknown"] for p in packages)
    # The journal's exposures add up to exactly what the emulator's account holds (it started with 100 ETH,
    # 10 BTC and no positions, and nothing else traded on it).
    start = {"ETH": Decimal(100), "BTC": Decimal(10)}
    for base, initial in start.items():
        mine = [p for p in packages if p["spot_symbol"] == f"{base}/USDT"]
        balance = venue_state["spot"]["balances"][base]
        held = Decimal(balance["free"]) + Decimal(balance["locked"]) - initial
        assert held == sum((Decimal(p["spot"]) for p in mine), Decimal(0)), base
        position = Decimal(venue_state["linear"]["positions"][f"{base}USDT"])
        assert position == sum((Decimal(p["perp"]) for p in mine), Decimal(0)), base
    assert not [o for k in ("spot", "linear") for o in venue_state[k]["orders"]
                if o["status"] in ("NEW", "PARTIALLY_FILLED")]  # fmt: skip
    return dict(venue_state), summary


@pytest.mark.slow
def test_legguard_run_with_the_funding_signal_against_the_emulator(tmp_path: Path) -> None:
    """examples/funding.toml against an emulator paying funding every 30 s: the funding signal reads the rate
    through ccxt (premiumIndex, the interval from the settled rates), opens packages with its numbers
    journaled, and every package ends hedged or flat with the emulator's account agreeing."""
    _, summary = run_against_the_emulator(
        tmp_path, ["--funding-interval", "30"], config=EXAMPLE.parent / "funding.toml", seconds=30
    )
    assert summary["strategy"]["name"] == "funding" and summary["strategy"]["errors"] == 0, summary
    assert summary["venue_check"]["ok"], summary["venue_check"]
    last = summary["strategy"]["last"]["ETH/USDT"]
    assert isinstance(last, dict) and int(last["intervals"]) == 2, last  # a 60 s horizon, funding every 30 s
    with Journal.open(tmp_path / "journal.db", readonly=True) as journal:
        created = [r.payload["spec"] for r in journal.rows() if r.kind == "package_created"]
    assert created and all(spec["why"]["strategy"] == "funding" for spec in created), created
    assert all(Decimal(spec["why"]["edge"]) >= Decimal(spec["why"]["min_edge"]) for spec in created), created
