"""SimVenue in virtual time: the Venue protocol, latency, resting fills, every fault kind, determinism and
speed."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import pytest
import trio
import trio.testing

from legguard.adapters._venue import Venue
from legguard.adapters.market._generator import RECORDED_DEPTH_DIR, DepthReplay
from legguard.adapters.sim._venue import FAULTS, SimConfig, SimVenue, open_sim_venue
from legguard.domain import (
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    OutcomeUnknown,
    RejectReason,
    Side,
    StreamDisconnected,
    VenueError,
)

D = Decimal
ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
STEP = {ETH: D("0.0001"), ETH_PERP: D("0.001")}


# Tests using this fixture take `autojump_clock` themselves: pytest-trio only looks for a clock among the
# test function's own arguments.
@pytest.fixture
async def venue() -> AsyncIterator[SimVenue]:
    async with open_sim_venue(SimConfig(seed=1)) as v:
        await trio.sleep(0.5)
        yield v


async def maker(v: SimVenue, cid: str, symbol: str, side: Side, amount: str = "0.05") -> OrderUpdate:
    """A post-only limit at our side's touch."""
    book = await v.fetch_order_book(symbol)
    price = book.best_bid if side is Side.BUY else book.best_ask
    assert price is not None
    return await v.fire(v.arm(OrderRequest(cid, symbol, side, OrderType.LIMIT, D(amount), price, post_only=True)))


async def taker(v: SimVenue, cid: str, symbol: str, side: Side, amount: str = "0.05") -> OrderUpdate:
    return await v.fire(v.arm(OrderRequest(cid, symbol, side, OrderType.MARKET, D(amount))))


async def until(pred: Callable[[], Awaitable[bool]], limit: float = 30.0) -> float:
    """Wait (virtual time) until `pred` holds; returns how long it took."""
    start = trio.current_time()
    with trio.fail_after(limit):
        while not await pred():  # noqa: ASYNC110 - polling the venue's REST view is the point
            await trio.sleep(0.05)
    return trio.current_time() - start


async def collect(v: SimVenue, into: list[OrderUpdate]) -> None:
    while True:
        try:
            into.extend(await v.watch_orders())
        except StreamDisconnected:
            into.append(OrderUpdate("<disconnected>", "", Side.BUY, OrderStatus.UNKNOWN, D(0)))


# --- the protocol and latency ---------------------------------------------------------------------------


async def test_is_a_venue_with_markets_books_and_accounts(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    assert isinstance(venue, Venue)
    markets = await venue.load_markets()
    assert set(markets) >= {ETH, ETH_PERP, "BTC/USDT", "BTC/USDT:USDT"}
    book = await venue.fetch_order_book(ETH_PERP, limit=5)
    assert len(book.bids) == 5
    assert book.best_bid is not None
    assert book.best_ask is not None
    assert book.best_bid < book.best_ask
    balances = await venue.fetch_balance()
    assert balances["USDT"].free == D(1_000_000)
    assert (await venue.fetch_positions())[ETH_PERP] == 0


async def test_watch_order_book_returns_the_next_tick(venue: SimVenue, autojump_clock: trio.testing.MockClock) -> None:
    first = await venue.watch_order_book(ETH)
    second = await venue.watch_order_book(ETH)
    assert second.sequence > first.sequence
    assert 0.05 < second.timestamp - first.timestamp < 0.15


async def test_fire_takes_two_one_way_latencies(venue: SimVenue, autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    ack = await taker(venue, "t1", ETH, Side.BUY)
    elapsed = trio.current_time() - start
    assert ack.status is OrderStatus.CLOSED
    assert 0.0005 < elapsed < 0.015  # 2 x (2 ms +- 1 ms jitter)
    assert start < ack.timestamp < trio.current_time()


async def test_release_takes_the_order_when_it_leaves_and_fire_only_awaits_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As a wire venue's release writes the bytes: the one-way trip starts at `release`, not when `fire` runs.
    async with open_sim_venue(SimConfig(seed=1, latency_ms=2, jitter_ms=0)) as v:
        await trio.sleep(0.5)
        armed = v.arm(OrderRequest("r1", ETH, Side.BUY, OrderType.MARKET, D("0.05")))
        left = trio.current_time()
        v.release([armed])
        await trio.sleep(0.001)  # the send task starts later: the order is already on its way
        ack = await v.fire(armed)
        assert ack.status is OrderStatus.CLOSED
        assert ack.timestamp == pytest.approx(left + 0.002)  # matched one way after it left
        assert trio.current_time() == pytest.approx(left + 0.004)  # and answered one way after that
        late = v.arm(OrderRequest("r2", ETH, Side.BUY, OrderType.MARKET, D("0.05")))
        v.release([late])
        await trio.sleep(0.01)  # fired after its arrival: matched at once, answered one way later
        start = trio.current_time()
        ack = await v.fire(late)
        assert ack.timestamp == pytest.approx(start) and trio.current_time() == pytest.approx(start + 0.002)


async def test_a_released_order_meets_an_outage_at_its_arrival(autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_venue(SimConfig(seed=1, latency_ms=2, jitter_ms=0)) as v:
        await trio.sleep(0.5)
        armed = v.arm(OrderRequest("o1", ETH, Side.BUY, OrderType.MARKET, D("0.05")))
        v.release([armed])
        v.inject("outage", seconds=1.0)
        with pytest.raises(OutcomeUnknown, match="outage"):
            await v.fire(armed)
        with pytest.raises(OrderNotFound):
            v.engine.get(ETH, "o1")  # nothing reached the matching engine


async def test_zero_latency_never_sleeps(autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_venue(SimConfig(seed=2, latency_ms=0, jitter_ms=5)) as v:
        await trio.sleep(0.5)
        start = trio.current_time()
        await v.fetch_order_book(ETH)
        await taker(v, "t1", ETH, Side.BUY)
        await v.fetch_order(ETH, "t1")
        assert trio.current_time() == start
        batch = await v.watch_orders()
        assert batch[0].client_order_id == "t1"


async def test_arm_validates_without_sending(venue: SimVenue, autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(OrderRejected, match="step size") as err:
        venue.arm(OrderRequest("bad", ETH, Side.BUY, OrderType.LIMIT, D("0.00001"), D(2000)))
    assert err.value.reason is RejectReason.INVALID_ORDER
    armed = venue.arm(OrderRequest("ok", ETH, Side.BUY, OrderType.LIMIT, D("0.01"), D(1000)))
    assert armed.request.client_order_id == "ok"
    assert venue.engine.all_orders() == []
    with pytest.raises(OrderNotFound):
        await venue.fetch_order(ETH, "ok")
    with pytest.raises(OrderNotFound):
        await venue.cancel_order(ETH, "ok")


async def test_resting_post_only_orders_at_the_touch_fill_within_a_few_seconds(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    waits = []
    for i, (symbol, side) in enumerate([(ETH, Side.BUY), (ETH, Side.SELL), (ETH_PERP, Side.SELL)] * 4):
        cid = f"m{i}"
        await maker(venue, cid, symbol, side)

        async def filled(symbol: str = symbol, cid: str = cid) -> bool:
            return (await venue.fetch_order(symbol, cid)).status is OrderStatus.CLOSED

        try:
            waits.append(await until(filled, limit=10))
        except trio.TooSlowError:
            await venue.cancel_order(symbol, cid)
    assert len(waits) >= 9, waits
    assert 0.05 <= statistics.median(waits) <= 3.0, waits


async def test_stream_delivers_ack_fills_and_cancel_in_order(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[OrderUpdate] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, venue, seen)
        await maker(venue, "a", ETH, Side.BUY)
        await venue.cancel_order(ETH, "a")
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    mine = [u for u in seen if u.client_order_id == "a"]
    assert mine[0].status is OrderStatus.OPEN
    assert mine[-1].status is OrderStatus.CANCELED
    assert mine[-1] == await venue.fetch_order(ETH, "a")


# --- faults ---------------------------------------------------------------------------------------------


async def test_reject_hits_the_next_orders_on_its_symbol_only(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    venue.inject("reject", symbol=ETH_PERP, count=2)
    await taker(venue, "spot", ETH, Side.BUY)  # another symbol: unaffected
    for cid in ("p1", "p2"):
        with pytest.raises(OrderRejected) as err:
            await maker(venue, cid, ETH_PERP, Side.SELL)
        assert err.value.reason is RejectReason.INSUFFICIENT_FUNDS
        assert err.value.detail == "Margin is insufficient."
        with pytest.raises(OrderNotFound):
            await venue.fetch_order(ETH_PERP, cid)
    assert (await maker(venue, "p3", ETH_PERP, Side.SELL)).status is OrderStatus.OPEN
    assert venue.faults_injected["reject"] == 2


async def test_reject_with_a_given_reason(venue: SimVenue, autojump_clock: trio.testing.MockClock) -> None:
    venue.inject("reject", reason="rate_limited")
    with pytest.raises(OrderRejected) as err:
        await taker(venue, "x", ETH, Side.BUY)
    assert err.value.reason is RejectReason.RATE_LIMITED


async def test_postonly_cross_rejects_the_next_post_only_order(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    venue.inject("postonly_cross", symbol=ETH)
    assert (await taker(venue, "market", ETH, Side.BUY)).status is OrderStatus.CLOSED  # not post-only
    with pytest.raises(OrderRejected) as err:
        await maker(venue, "po", ETH, Side.BUY)
    assert err.value.reason is RejectReason.POST_ONLY_CROSS
    assert venue.faults_injected["postonly_cross"] == 1
    assert (await maker(venue, "po2", ETH, Side.BUY)).status is OrderStatus.OPEN


async def test_partial_fill_fills_a_fraction_and_never_more(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    venue.inject("partial_fill", symbol=ETH_PERP, fraction=0.4)
    await maker(venue, "pf", ETH_PERP, Side.SELL, amount="0.050")

    async def some_filled() -> bool:
        return (await venue.fetch_order(ETH_PERP, "pf")).filled > 0

    await until(some_filled)
    await trio.sleep(20)  # the market keeps moving through the order
    order = await venue.fetch_order(ETH_PERP, "pf")
    assert order.filled == D("0.020")
    assert order.status is OrderStatus.OPEN
    assert venue.faults_injected["partial_fill"] == 1
    book = await venue.fetch_order_book(ETH_PERP)
    assert book.best_bid is not None
    assert book.best_ask is not None
    assert book.best_bid < book.best_ask
    assert (await venue.cancel_order(ETH_PERP, "pf")).filled == D("0.020")


async def test_partial_fill_rounds_to_step_with_at_least_one_step(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    venue.inject("partial_fill", symbol=ETH_PERP, fraction=0.1)
    await maker(venue, "tiny", ETH_PERP, Side.SELL, amount="0.005")  # 0.0005 -> one step

    async def some_filled() -> bool:
        return (await venue.fetch_order(ETH_PERP, "tiny")).filled > 0

    await until(some_filled)
    await trio.sleep(10)
    assert (await venue.fetch_order(ETH_PERP, "tiny")).filled == STEP[ETH_PERP]


async def test_ack_timeout_places_the_order_but_never_answers(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[OrderUpdate] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, venue, seen)
        venue.inject("ack_timeout", symbol=ETH)
        with trio.move_on_after(5) as scope:
            await maker(venue, "lost", ETH, Side.BUY)
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()
    assert venue.faults_injected["ack_timeout"] == 1
    assert (await venue.fetch_order(ETH, "lost")).client_order_id == "lost"
    assert any(u.client_order_id == "lost" for u in seen)  # the stream still told the truth


async def test_stream_drop_raises_once_and_loses_updates_for_a_while(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    await maker(venue, "before", ETH, Side.BUY, amount="0.01")
    assert [u.client_order_id for u in await venue.watch_orders()] == ["before"]
    venue.inject("stream_drop", seconds=0.5)
    with pytest.raises(StreamDisconnected):
        await venue.watch_orders()
    await venue.cancel_order(ETH, "before")  # inside the window: lost to the stream
    await trio.sleep(0.6)
    assert (await venue.fetch_order(ETH, "before")).status is OrderStatus.CANCELED  # REST tells the truth
    await maker(venue, "after", ETH, Side.BUY, amount="0.01")
    batch = await venue.watch_orders()
    assert [u.client_order_id for u in batch] == ["after"]
    assert venue.faults_injected["stream_drop"] == 1


async def test_price_jump_moves_spot_and_perp_and_fills_what_it_crosses(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    await maker(venue, "ask", ETH, Side.SELL, amount="0.01")
    spot_before, perp_before = venue.engine.mid(ETH), venue.engine.mid(ETH_PERP)
    assert spot_before is not None
    assert perp_before is not None
    venue.inject("price_jump", symbol=ETH_PERP, pct=0.5)
    await venue.watch_order_book(ETH)
    spot_after, perp_after = venue.engine.mid(ETH), venue.engine.mid(ETH_PERP)
    assert spot_after is not None
    assert perp_after is not None
    assert float(spot_after / spot_before) == pytest.approx(1.005, abs=0.0005)
    assert float(perp_after / perp_before) == pytest.approx(1.005, abs=0.001)
    order = await venue.fetch_order(ETH, "ask")
    assert order.status is OrderStatus.CLOSED  # the book jumped through our offer: we were the maker
    assert order.average is not None
    assert order.average < spot_after
    assert venue.faults_injected["price_jump"] == 1


async def test_liquidation_closes_perp_position_and_is_streamed(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    venue.inject("liquidation", symbol=ETH_PERP)  # no position: no effect
    assert venue.faults_injected["liquidation"] == 0
    await taker(venue, "short", ETH_PERP, Side.SELL, amount="0.050")
    await venue.watch_orders()
    venue.inject("liquidation", symbol=ETH_PERP, quantity=D("0.02"))
    batch = await venue.watch_orders()
    (liq,) = [u for u in batch if u.origin is OrderOrigin.LIQUIDATION]
    assert liq.client_order_id.startswith("autoclose-")
    assert liq.side is Side.BUY
    assert liq.filled == D("0.02")
    assert liq.status is OrderStatus.CLOSED
    assert (await venue.fetch_positions())[ETH_PERP] == D("-0.030")
    venue.inject("liquidation", symbol=ETH_PERP, adl=True)
    (adl,) = await venue.watch_orders()
    assert adl.origin is OrderOrigin.ADL
    assert adl.filled == D("0.030")
    assert venue.faults_injected["liquidation"] == 2


async def test_late_landing_answers_an_error_then_places_the_order_later(
    venue: SimVenue, autojump_clock: trio.testing.MockClock
) -> None:
    venue.inject("late_landing", symbol=ETH_PERP, seconds=1.5)
    start = trio.current_time()
    with pytest.raises(VenueError):
        await taker(venue, "late", ETH_PERP, Side.SELL, "0.05")
    with pytest.raises(OrderNotFound):
        await venue.fetch_order(ETH_PERP, "late")  # not there yet: the client gave up on it
    await trio.sleep_until(start + 1.6)
    landed = await venue.fetch_order(ETH_PERP, "late")
    assert landed.filled == D("0.05")
    assert venue.engine.positions()[ETH_PERP] == D("-0.05")
    assert venue.faults_injected["late_landing"] == 1


async def test_stream_lag_delivers_after_rest_shows_it(venue: SimVenue, autojump_clock: trio.testing.MockClock) -> None:
    updates: list[OrderUpdate] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, venue, updates)
        await taker(venue, "short", ETH_PERP, Side.SELL, "0.05")
        await trio.sleep(0.1)
        updates.clear()
        venue.inject("stream_lag", seconds=0.3)
        venue.inject("liquidation", symbol=ETH_PERP, quantity=D("0.02"))
        assert (await venue.fetch_positions())[ETH_PERP] == D("-0.03")
        await trio.sleep(0.2)
        assert not updates  # REST shows the liquidation, the stream not yet
        await trio.sleep(0.2)
        assert [u.origin for u in updates] == [OrderOrigin.LIQUIDATION]
        nursery.cancel_scope.cancel()


async def test_bad_injections_say_what_is_valid(venue: SimVenue, autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ValueError, match="valid: ack_timeout, late_landing, liquidation") as err:
        venue.inject("meteor")
    for name in FAULTS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match=r"unknown parameter.*'fractoin'.*allowed: fraction"):
        venue.inject("partial_fill", fractoin=0.3)
    with pytest.raises(ValueError, match="not a market"):
        venue.inject("reject", symbol="DOGE/USDT")
    with pytest.raises(ValueError, match="reason 'bogus'"):
        venue.inject("reject", reason="bogus")
    with pytest.raises(ValueError, match="fraction must be in"):
        venue.inject("partial_fill", fraction=1.5)
    with pytest.raises(ValueError, match="must be a perp"):
        venue.inject("liquidation", symbol=ETH)
    with pytest.raises(ValueError, match="count must be 1"):
        venue.inject("price_jump", symbol=ETH, count=2)
    assert sum(venue.faults_injected.values()) == 0


@pytest.mark.parametrize(("field", "value"), [("latency_ms", -1.0), ("jitter_ms", float("nan")), ("tick_interval", 0)])
def test_config_errors_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"SimConfig.{field}"):
        SimConfig(**{field: value})


@pytest.mark.skipif(not RECORDED_DEPTH_DIR.exists(), reason="recorded depth not available")
async def test_replay_depth_seeds_the_btc_perp_book(autojump_clock: trio.testing.MockClock) -> None:
    replay = DepthReplay.recorded().replay_all()
    bids, asks = replay.levels()
    async with open_sim_venue(SimConfig(seed=4, replay_depth=True)) as v:
        first = await v.fetch_order_book("BTC/USDT:USDT", limit=10)
        assert first.bids == bids[:10]
        assert first.asks == asks[:10]
        await trio.sleep(5)
        later = await v.fetch_order_book("BTC/USDT:USDT", limit=10)
        mid = replay.mid()
        assert mid is not None
        assert later.best_bid is not None
        assert abs(later.best_bid / mid - 1) < D("0.01")
        assert len(later.bids) == 10
        assert later.bids != first.bids


# --- determinism and speed ------------------------------------------------------------------------------


async def scenario(seed: int, seconds: float) -> list[OrderUpdate]:
    """A fixed script of orders and faults; returns every update the stream delivered."""
    seen: list[OrderUpdate] = []
    async with open_sim_venue(SimConfig(seed=seed)) as v, trio.open_nursery() as nursery:
        nursery.start_soon(collect, v, seen)
        await trio.sleep(0.5)
        v.inject("partial_fill", symbol=ETH)
        for i in range(int(seconds)):
            symbol, side = [(ETH, Side.BUY), (ETH_PERP, Side.SELL), (ETH, Side.SELL)][i % 3]
            with contextlib.suppress(OrderRejected):
                await maker(v, f"o{i}", symbol, side, amount="0.010")
            if i == 20:
                v.inject("price_jump", symbol=ETH, pct=-0.5)
            if i == 30:
                v.inject("liquidation", symbol=ETH_PERP)
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return seen


def run_virtual(seed: int, seconds: float) -> list[OrderUpdate]:
    return trio.run(scenario, seed, seconds, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_same_updates() -> None:
    first = run_virtual(21, 40)
    assert len(first) > 40
    assert any(u.status is OrderStatus.CLOSED for u in first)
    assert any(u.origin is OrderOrigin.LIQUIDATION for u in first)
    assert run_virtual(21, 40) == first
    assert run_virtual(22, 40) != first


def test_a_virtual_minute_does_not_wait_for_real_time() -> None:
    # Not a speed check (that is `legguard bench`): a venue that slept on the wall clock would take the whole
    # minute; the bound leaves a loaded CI machine 30x headroom.
    start = time.perf_counter()
    updates = run_virtual(5, 60)
    elapsed = time.perf_counter() - start
    assert updates
    assert elapsed < 30.0, f"60 virtual seconds took {elapsed:.2f} s of real time: something waits on the wall clock"


async def test_funding_rate_read_tells_the_rate_and_the_next_funding_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_sim_venue(SimConfig(seed=2, funding_interval=60.0)) as v:
        await trio.sleep(10)

        funding = await v.fetch_funding_rate(ETH_PERP)

        assert funding.symbol == ETH_PERP and funding.interval == 60.0
        assert funding.rate == funding.predicted == v.funding_rate(ETH_PERP) != 0
        assert funding.next_funding_ms is not None
        assert funding.next_funding_ms - funding.time_ms == pytest.approx(50_000, abs=50)  # the first at t=60 s
        with pytest.raises(VenueError, match="not a perp"):
            await v.fetch_funding_rate(ETH)

    async with open_sim_venue(SimConfig(seed=2)) as v:  # funding off: a rate, but no funding time
        assert (await v.fetch_funding_rate(ETH_PERP)).next_funding_ms is None
