"""The matching engine: filters and rejects, resting/crossing/taking, accounts and fees, liquidation, and
the invariants of MATCHING_API under random sequences of market moves and orders."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from legguard.adapters.market._matching import Fill, MatchingEngine, default_markets, fee_for
from legguard.domain import (
    DuplicateOrder,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectReason,
    Side,
)

D = Decimal
SPOT = "ETH/USDT"
PERP = "ETH/USDT:USDT"
FIXTURES = Path("/work/shared/fixtures/binance-recorded/http")


def book_around(mid: str, *, spread_ticks: int = 2, levels: int = 5, size: str = "1") -> tuple[list, list]:
    """Levels one tick apart, `spread_ticks` between best bid and best ask, each of `size`."""
    m, tick = D(mid), D("0.01")
    bid0 = m - tick * (spread_ticks // 2)
    ask0 = bid0 + tick * spread_ticks
    bids = [(bid0 - tick * i, D(size)) for i in range(levels)]
    asks = [(ask0 + tick * i, D(size)) for i in range(levels)]
    return bids, asks


def limit(cid: str, side: Side, price: str, amount: str, symbol: str = SPOT, **kw: bool) -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.LIMIT, D(amount), D(price), **kw)


def market(cid: str, side: Side, amount: str, symbol: str = SPOT, **kw: bool) -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.MARKET, D(amount), **kw)


@pytest.fixture
def eng() -> MatchingEngine:
    e = MatchingEngine()
    for symbol in (SPOT, PERP):
        e.set_book(symbol, *book_around("2000.00"), now=0.0)
    return e


# --- markets ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not FIXTURES.exists(), reason="recorded Binance fixtures not available")
def test_default_markets_filters_match_recorded_exchange_info() -> None:
    markets = default_markets()
    for kind, name in ((MarketKind.SPOT, "spot"), (MarketKind.LINEAR, "futures")):
        info = json.loads((FIXTURES / f"http_{name}_market_exchange_info.json").read_text())
        by_id = {s["symbol"]: s for s in info["symbols"]}
        ours = [m for m in markets.values() if m.kind is kind]
        assert len(ours) == 2
        for m in ours:
            filters = {f["filterType"]: f for f in by_id[m.venue_symbol]["filters"]}
            assert m.tick_size == D(filters["PRICE_FILTER"]["tickSize"])
            assert m.step_size == D(filters["LOT_SIZE"]["stepSize"])
            assert m.min_qty == D(filters["LOT_SIZE"]["minQty"])
            notional = filters["MIN_NOTIONAL"]
            assert m.min_notional == D(notional.get("minNotional", notional.get("notional")))


def test_market_by_id_distinguishes_spot_and_perp() -> None:
    e = MatchingEngine()
    assert e.market_by_id("ETHUSDT", MarketKind.SPOT).symbol == SPOT
    assert e.market_by_id("ETHUSDT", MarketKind.LINEAR).symbol == PERP
    with pytest.raises(KeyError, match="XRPUSDT"):
        e.market_by_id("XRPUSDT", MarketKind.SPOT)


# --- rejects ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (limit("t", Side.BUY, "1999.005", "0.1"), "tick size"),
        (limit("s", Side.BUY, "1999.00", "0.00015"), "step size"),
        (limit("q", Side.BUY, "1999.00", "0.001", symbol=PERP), "min notional"),
        (limit("n", Side.BUY, "1999.00", "0.0010"), "min notional"),
        (market("m", Side.BUY, "0.0010"), "min notional"),
        (limit("u", Side.BUY, "1999.00", "0.1", symbol="DOGE/USDT"), "unknown symbol"),
    ],
)
def test_filter_violations_are_rejected_naming_the_filter(
    eng: MatchingEngine, request_: OrderRequest, needle: str
) -> None:
    with pytest.raises(OrderRejected) as err:
        eng.place(request_, now=1.0)
    assert err.value.reason is RejectReason.INVALID_ORDER
    assert needle in str(err.value)
    assert eng.all_orders() == []
    assert eng.drain_updates() == []


def test_min_qty_is_its_own_filter() -> None:
    btc = dataclasses.replace(default_markets()["BTC/USDT:USDT"], min_qty=D("0.01"))
    e = MatchingEngine({btc.symbol: btc})
    with pytest.raises(OrderRejected, match="min qty"):
        e.place(limit("x", Side.BUY, "30000.0", "0.005", symbol=btc.symbol), now=0.0)


def test_post_only_that_would_cross_is_rejected(eng: MatchingEngine) -> None:
    with pytest.raises(OrderRejected) as err:
        eng.place(limit("po", Side.BUY, "2000.01", "0.1", post_only=True), now=1.0)
    assert err.value.reason is RejectReason.POST_ONLY_CROSS
    with pytest.raises(OrderRejected) as err:
        eng.place(limit("po2", Side.SELL, "1999.99", "0.1", symbol=PERP, post_only=True), now=1.0)
    assert err.value.reason is RejectReason.POST_ONLY_CROSS


def test_post_only_at_the_touch_rests(eng: MatchingEngine) -> None:
    ack = eng.place(limit("po", Side.BUY, "1999.99", "0.1", post_only=True), now=1.0)
    assert ack.status is OrderStatus.OPEN
    assert ack.filled == 0


def test_spot_insufficient_balance() -> None:
    e = MatchingEngine(balances={"USDT": D(100), "ETH": D("0.01")})
    e.set_book(SPOT, *book_around("2000.00"), now=0.0)
    with pytest.raises(OrderRejected) as err:
        e.place(limit("b", Side.BUY, "1999.00", "0.1"), now=1.0)
    assert err.value.reason is RejectReason.INSUFFICIENT_FUNDS
    with pytest.raises(OrderRejected) as err:
        e.place(limit("s", Side.SELL, "2001.00", "0.1"), now=1.0)
    assert err.value.reason is RejectReason.INSUFFICIENT_FUNDS
    assert e.balances()["USDT"].free == D(100)


def test_perp_margin_check_counts_position_open_orders_and_the_new_order() -> None:
    e = MatchingEngine(perp_wallet=D(1000), leverage=5)  # 5000 USDT of notional allowed
    e.set_book(PERP, *book_around("2000.00"), now=0.0)
    e.place(limit("a", Side.SELL, "2000.00", "1.000", symbol=PERP), now=1.0)  # 2000 of open orders
    e.place(limit("b", Side.SELL, "2000.00", "1.500", symbol=PERP), now=1.0)  # 5000 in all: exactly allowed
    with pytest.raises(OrderRejected) as err:
        e.place(limit("c", Side.SELL, "2000.00", "0.010", symbol=PERP), now=1.0)
    assert err.value.reason is RejectReason.INSUFFICIENT_FUNDS
    assert err.value.detail == "Margin is insufficient."
    # Filling turns order notional into position notional: still no room.
    e.trade_through(PERP, Side.BUY, D("2000.00"), D("2.5"), now=2.0)
    assert e.positions()[PERP] == D("-2.5")
    with pytest.raises(OrderRejected, match="Margin is insufficient"):
        e.place(limit("d", Side.SELL, "2001.00", "0.100", symbol=PERP), now=3.0)
    # Reduce-only orders need no new margin.
    assert e.place(limit("r", Side.BUY, "1990.00", "0.100", symbol=PERP, reduce_only=True), now=3.0).status is (
        OrderStatus.OPEN
    )


def test_reduce_only_without_position_or_on_the_wrong_side_is_rejected(eng: MatchingEngine) -> None:
    with pytest.raises(OrderRejected) as err:
        eng.place(limit("r1", Side.BUY, "1990.00", "0.100", symbol=PERP, reduce_only=True), now=1.0)
    assert err.value.reason is RejectReason.REDUCE_ONLY_REJECTED
    eng.place(market("short", Side.SELL, "0.500", symbol=PERP), now=1.0)
    with pytest.raises(OrderRejected) as err:
        eng.place(limit("r2", Side.SELL, "2010.00", "0.100", symbol=PERP, reduce_only=True), now=2.0)
    assert err.value.reason is RejectReason.REDUCE_ONLY_REJECTED
    with pytest.raises(OrderRejected) as err:
        eng.place(limit("r3", Side.BUY, "1990.00", "0.1000", reduce_only=True), now=2.0)
    assert err.value.reason is RejectReason.INVALID_ORDER


def test_reduce_only_larger_than_position_is_clipped(eng: MatchingEngine) -> None:
    eng.place(market("short", Side.SELL, "0.500", symbol=PERP), now=1.0)
    ack = eng.place(market("close", Side.BUY, "2.000", symbol=PERP, reduce_only=True), now=2.0)
    assert ack.amount == D("0.500")
    assert ack.status is OrderStatus.CLOSED
    assert eng.positions()[PERP] == 0
    assert eng.position_entry_price(PERP) is None


def test_resting_reduce_only_expires_when_the_position_closes(eng: MatchingEngine) -> None:
    eng.place(market("short", Side.SELL, "0.500", symbol=PERP), now=1.0)
    eng.place(limit("ro", Side.BUY, "1990.00", "0.500", symbol=PERP, reduce_only=True), now=2.0)
    eng.place(market("close", Side.BUY, "0.500", symbol=PERP), now=3.0)
    assert eng.get(PERP, "ro").status is OrderStatus.EXPIRED


def test_client_order_id_is_unique_among_open_orders_only(eng: MatchingEngine) -> None:
    # Binance: an id in use by an OPEN order is refused; once that order is closed, the id is accepted again
    # as a NEW order (so a reused id proves nothing about the earlier order).
    eng.place(limit("dup", Side.BUY, "1999.00", "0.1"), now=1.0)
    with pytest.raises(DuplicateOrder):
        eng.place(limit("dup", Side.BUY, "1998.00", "0.1"), now=1.0)
    eng.cancel(SPOT, "dup", now=2.0)
    again = eng.place(limit("dup", Side.BUY, "1998.00", "0.1"), now=3.0)
    assert again.status is OrderStatus.OPEN and again.filled == 0
    assert eng.get(SPOT, "dup") == again  # the id names the newest order
    both = [o for o in eng.all_orders(SPOT) if o.client_order_id == "dup"]
    assert [o.status for o in both] == [OrderStatus.CANCELED, OrderStatus.OPEN]
    assert both[0].venue_order_id != both[1].venue_order_id
    # A rejected order never existed: its id stays free.
    with pytest.raises(OrderRejected):
        eng.place(limit("free", Side.BUY, "2005.00", "0.1", post_only=True), now=3.0)
    assert eng.place(limit("free", Side.BUY, "1998.00", "0.1"), now=3.0).status is OrderStatus.OPEN


def test_cancel_unknown_or_terminal_raises_not_found(eng: MatchingEngine) -> None:
    with pytest.raises(OrderNotFound):
        eng.cancel(SPOT, "nope", now=1.0)
    eng.place(market("m", Side.BUY, "0.1000"), now=1.0)
    with pytest.raises(OrderNotFound):
        eng.cancel(SPOT, "m", now=2.0)
    with pytest.raises(OrderNotFound):
        eng.get(PERP, "m")  # right id, wrong symbol


# --- resting, crossing, taking ----------------------------------------------------------------------------


def test_resting_buy_locks_quote_and_cancel_releases_it(eng: MatchingEngine) -> None:
    before = eng.balances()["USDT"]
    ack = eng.place(limit("b", Side.BUY, "1999.95", "0.5"), now=1.0)
    assert (ack.status, ack.filled, ack.venue_order_id) == (OrderStatus.OPEN, 0, "1")
    usdt = eng.balances()["USDT"]
    assert (usdt.free, usdt.locked) == (before.free - D("999.975"), D("999.975"))
    assert (D("1999.95"), D("1.5")) in eng.book(SPOT).bids  # aggregated with the others' 1.0
    done = eng.cancel(SPOT, "b", now=2.0)
    assert done.status is OrderStatus.CANCELED
    assert eng.balances()["USDT"] == before
    assert [u.status for u in eng.drain_updates()] == [OrderStatus.OPEN, OrderStatus.CANCELED]


def test_set_book_crossing_fills_our_order_as_maker_up_to_crossing_quantity(eng: MatchingEngine) -> None:
    eng.place(limit("b", Side.BUY, "1999.99", "2.0", post_only=True), now=1.0)
    eng.drain_updates()
    # The market drops: 0.7 offered at our price and 0.5 below it cross us.
    ups = eng.set_book(SPOT, [(D("1999.00"), D(3))], [(D("1999.98"), D("0.5")), (D("1999.99"), D("0.7"))], 2.0)
    assert [u.filled for u in ups] == [D("0.5"), D("1.2")]
    assert all(u.status is OrderStatus.OPEN for u in ups)
    assert ups == eng.drain_updates()
    fills = eng.fills(SPOT)
    assert {f.price for f in fills} == {D("1999.99")}  # the maker trades at its own price
    assert all(f.maker and f.fee_asset == "ETH" for f in fills)
    book = eng.book(SPOT)
    assert book.asks == ()  # the crossing liquidity traded with us
    assert book.bids[0] == (D("1999.99"), D("0.8"))
    assert book.sequence == 3


def test_set_book_rejects_a_crossed_input(eng: MatchingEngine) -> None:
    with pytest.raises(ValueError, match="crossed"):
        eng.set_book(SPOT, [(D(2001), D(1))], [(D(2000), D(1))], now=1.0)
    with pytest.raises(ValueError, match="asks level"):
        eng.set_book(SPOT, [], [(D(-1), D(1))], now=1.0)


def test_trade_through_fills_best_price_then_time_priority(eng: MatchingEngine) -> None:
    eng.place(limit("late-better", Side.BUY, "1999.99", "0.3"), now=1.0)
    eng.place(limit("early", Side.BUY, "1999.98", "0.3"), now=0.5)
    eng.place(limit("later", Side.BUY, "1999.98", "0.3"), now=1.5)
    eng.place(limit("too-low", Side.BUY, "1999.97", "0.3"), now=1.5)
    eng.drain_updates()
    ups = eng.trade_through(SPOT, Side.SELL, D("1999.98"), D("0.7"), now=2.0)
    assert [(u.client_order_id, u.filled, u.status) for u in ups] == [
        ("late-better", D("0.3"), OrderStatus.CLOSED),
        ("early", D("0.3"), OrderStatus.CLOSED),
        ("later", D("0.1"), OrderStatus.OPEN),
    ]
    assert eng.get(SPOT, "too-low").filled == 0
    assert eng.trade_through(SPOT, Side.BUY, D("1999.98"), D(5), now=3.0) == []  # buys are not hit by buyers


def test_market_order_walks_the_book_as_taker_and_expires_when_it_runs_out(eng: MatchingEngine) -> None:
    ack = eng.place(market("m", Side.BUY, "6.000", symbol=PERP), now=1.0)
    assert ack.status is OrderStatus.EXPIRED
    assert ack.filled == D(5)  # 5 levels of 1
    assert ack.average == D("2000.03")  # asks 2000.01 ... 2000.05, one each
    fills = eng.fills(PERP)
    assert [f.price for f in fills] == [D("2000.01") + D("0.01") * i for i in range(5)]
    assert all(not f.maker and f.fee == (f.price * f.quantity * D("0.0005")).quantize(D("1E-8")) for f in fills)
    assert eng.book(PERP).asks == ()
    statuses = [u.status for u in eng.drain_updates() if u.symbol == PERP]
    assert statuses[0] is OrderStatus.OPEN
    assert statuses[-1] is OrderStatus.EXPIRED
    assert len(statuses) == 7  # ack, 5 fills, expiry


def test_crossing_limit_takes_then_rests_the_remainder(eng: MatchingEngine) -> None:
    start = eng.balances()["USDT"].total
    ack = eng.place(limit("x", Side.BUY, "2000.02", "3.0"), now=1.0)
    assert ack.status is OrderStatus.OPEN
    assert ack.filled == D(2)  # the two ask levels at or below 2000.02
    assert ack.fee_base == D("0.002")  # taker
    book = eng.book(SPOT)
    assert book.bids[0] == (D("2000.02"), D("1.0"))
    assert book.asks[0][0] == D("2000.03")
    # The reservation at the limit price shrank by what filled; the better price was refunded.
    assert eng.balances()["USDT"].locked == D("2000.02")
    assert eng.balances()["USDT"].total == start - D("2000.01") - D("2000.02")


def test_self_trade_prevention_expires_our_crossed_maker(eng: MatchingEngine) -> None:
    eng.set_book(SPOT, [(D("1999.00"), D(1))], [(D("2001.00"), D(1))], now=0.5)
    eng.place(limit("ask", Side.SELL, "2000.50", "0.5"), now=1.0)
    eng.place(limit("bid", Side.BUY, "2000.60", "0.5"), now=2.0)
    assert eng.get(SPOT, "ask").status is OrderStatus.EXPIRED
    assert eng.get(SPOT, "bid").status is OrderStatus.OPEN
    assert eng.balances()["ETH"].locked == 0
    snap = eng.book(SPOT)
    assert snap.best_bid is not None
    assert snap.best_ask is not None
    assert snap.best_bid < snap.best_ask


def test_capped_order_stays_open_and_the_book_stays_uncrossed(eng: MatchingEngine) -> None:
    eng.place(limit("b", Side.BUY, "1999.99", "1.0"), now=1.0)
    eng.trade_through(SPOT, Side.SELL, D("1999.99"), D("0.4"), now=2.0)
    eng.cap_fills(SPOT, "b", D("0.4"))
    eng.trade_through(SPOT, Side.SELL, D("1999.99"), D("0.4"), now=3.0)
    eng.set_book(SPOT, [(D("1999.00"), D(1))], [(D("1999.50"), D(5)), (D("1999.99"), D(5))], now=4.0)
    order = eng.get(SPOT, "b")
    assert order.status is OrderStatus.OPEN
    assert order.filled == D("0.4")
    snap = eng.book(SPOT)
    assert snap.bids[0] == (D("1999.00"), D(1))  # the exhausted order left the book
    assert snap.asks[0] == (D("1999.50"), D(5))
    assert eng.balances()["USDT"].locked == D("1999.99") * D("0.6")
    with pytest.raises(ValueError, match="below what already filled"):
        eng.cap_fills(SPOT, "b", D("0.1"))
    assert eng.cancel(SPOT, "b", now=5.0).filled == D("0.4")
    assert eng.balances()["USDT"].locked == 0
    with pytest.raises(OrderNotFound):
        eng.cap_fills(SPOT, "b", D("0.4"))


def test_validate_checks_filters_without_changing_state(eng: MatchingEngine) -> None:
    assert eng.validate(limit("v", Side.BUY, "1999.00", "0.1")).symbol == SPOT
    with pytest.raises(OrderRejected, match="tick size"):
        eng.validate(limit("v", Side.BUY, "1999.001", "0.1"))
    assert eng.all_orders() == []
    assert eng.balances()["USDT"].locked == 0


# --- accounts and fees ------------------------------------------------------------------------------------


def test_spot_buy_pays_fee_in_base_and_sell_in_quote(eng: MatchingEngine) -> None:
    start = eng.balances()
    eng.place(limit("b", Side.BUY, "1999.99", "1.0"), now=1.0)
    eng.trade_through(SPOT, Side.SELL, D("1999.99"), D("1.0"), now=2.0)
    buy = eng.get(SPOT, "b")
    assert buy.fee_base == D("0.00075")
    assert buy.fee_quote == 0
    bal = eng.balances()
    assert bal["ETH"].free == start["ETH"].free + D("1.0") - D("0.00075")
    assert bal["USDT"].total == start["USDT"].total - D("1999.99")
    eng.place(limit("s", Side.SELL, "2000.01", "1.0"), now=3.0)
    eng.trade_through(SPOT, Side.BUY, D("2000.01"), D("1.0"), now=4.0)
    sell = eng.get(SPOT, "s")
    assert sell.fee_quote == D("1.50000750")
    assert sell.fee_base == 0
    assert eng.balances()["USDT"].total == start["USDT"].total - D("1999.99") + D("2000.01") - D("1.5000075")


def test_perp_position_entry_realised_pnl_and_fees(eng: MatchingEngine) -> None:
    wallet = eng.perp_wallet()
    eng.place(limit("s1", Side.SELL, "2000.01", "1.000", symbol=PERP), now=1.0)
    eng.place(limit("s2", Side.SELL, "2000.03", "1.000", symbol=PERP), now=1.0)
    eng.trade_through(PERP, Side.BUY, D("2000.03"), D(2), now=2.0)
    assert eng.positions()[PERP] == D(-2)
    assert eng.position_entry_price(PERP) == D("2000.02")
    maker_fees = (D("2000.01") + D("2000.03")) * D("0.0002")
    assert eng.perp_wallet() == wallet - maker_fees
    eng.set_book(PERP, *book_around("1990.00"), now=3.0)
    close = eng.place(market("c", Side.BUY, "0.500", symbol=PERP, reduce_only=True), now=4.0)
    assert close.status is OrderStatus.CLOSED
    price = D("1990.01")  # best ask of the new book
    pnl = D("0.5") * (D("2000.02") - price)
    taker_fee = (price * D("0.5") * D("0.0005")).quantize(D("1E-8"))
    assert eng.perp_wallet() == wallet - maker_fees + pnl - taker_fee
    assert eng.fills(PERP)[-1].realized_pnl == pnl
    assert eng.positions()[PERP] == D("-1.5")
    assert eng.unrealized_pnl(PERP) == D("-1.5") * (D("1990.00") - D("2000.02"))


def test_position_flip_opens_at_the_fill_price(eng: MatchingEngine) -> None:
    eng.place(market("s", Side.SELL, "0.500", symbol=PERP), now=1.0)
    eng.place(market("b", Side.BUY, "1.500", symbol=PERP), now=2.0)
    assert eng.positions()[PERP] == D(1)
    # 0.5 of the first fill (at 2000.01) closed the short, its other 0.5 and 0.5 at 2000.02 opened the long.
    assert eng.position_entry_price(PERP) == D("2000.015")


# --- liquidation ------------------------------------------------------------------------------------------


def test_liquidation_closes_at_mark_and_is_queued_as_one_closed_order(eng: MatchingEngine) -> None:
    eng.place(market("s", Side.SELL, "0.500", symbol=PERP), now=1.0)
    eng.drain_updates()
    up = eng.liquidate(PERP, D("0.2"), now=2.0)
    assert (up.client_order_id, up.origin, up.status, up.side) == (
        "autoclose-1",
        OrderOrigin.LIQUIDATION,
        OrderStatus.CLOSED,
        Side.BUY,
    )
    assert up.filled == D("0.2")
    assert up.average == D("2000.00")
    assert eng.drain_updates() == [up]
    assert eng.positions()[PERP] == D("-0.3")
    adl = eng.liquidate(PERP, D(5), now=3.0, origin=OrderOrigin.ADL)  # clipped to the position
    assert adl.client_order_id == "adl_autoclose-2"
    assert adl.filled == D("0.3")
    assert eng.positions()[PERP] == 0
    with pytest.raises(ValueError, match="no position"):
        eng.liquidate(PERP, D(1), now=4.0)
    assert eng.get(PERP, "autoclose-1") == up


# --- invariants under random sequences --------------------------------------------------------------------

TICK = D("0.01")
prices = st.integers(min_value=199_900, max_value=200_100).map(lambda t: D(t) * TICK)
spot_qty = st.integers(min_value=1, max_value=30_000).map(lambda n: D(n) * D("0.0001"))
perp_qty = st.integers(min_value=1, max_value=3_000).map(lambda n: D(n) * D("0.001"))
symbols = st.sampled_from([SPOT, PERP])
sides = st.sampled_from([Side.BUY, Side.SELL])


class EngineMachine(RuleBasedStateMachine):
    """Random market moves, prints, orders, cancels and liquidations; every invariant checked after each."""

    def __init__(self) -> None:
        super().__init__()
        self.eng = MatchingEngine(balances={"USDT": D(20_000), "ETH": D(5)}, perp_wallet=D(5_000), leverage=5)
        self.start = {"USDT": D(20_000), "ETH": D(5)}
        self.prices: dict[str, Decimal | None] = {}  # client id -> limit price
        self.seen: dict[tuple[str, str], OrderUpdate] = {}
        self.latest: dict[tuple[str, str], OrderUpdate] = {}
        self.caps: dict[tuple[str, str], Decimal] = {}
        self.reduce_only: dict[str, bool] = {}
        self.n = 0
        self.now = 0.0

    def tick(self) -> float:
        self.now += 0.1
        return self.now

    @initialize(mid=prices)
    def start_books(self, mid: Decimal) -> None:
        for s in (SPOT, PERP):
            self.eng.set_book(s, *book_around(str(mid), levels=8, size="0.5"), now=self.tick())

    @rule(symbol=symbols, mid=prices, spread=st.integers(1, 4), levels=st.integers(0, 6), size=spot_qty)
    def move_book(self, symbol: str, mid: Decimal, spread: int, levels: int, size: Decimal) -> None:
        self.eng.set_book(
            symbol, *book_around(str(mid), spread_ticks=spread, levels=levels, size=str(size)), self.tick()
        )

    @rule(symbol=symbols, aggressor=sides, price=prices, qty=spot_qty)
    def print_(self, symbol: str, aggressor: Side, price: Decimal, qty: Decimal) -> None:
        self.eng.trade_through(symbol, aggressor, price, qty, self.tick())

    @rule(
        symbol=symbols,
        side=sides,
        kind=st.sampled_from(list(OrderType)),
        price=prices,
        sq=spot_qty,
        pq=perp_qty,
        post_only=st.booleans(),
        reduce_only=st.booleans(),
    )
    def place(
        self,
        symbol: str,
        side: Side,
        kind: OrderType,
        price: Decimal,
        sq: Decimal,
        pq: Decimal,
        post_only: bool,
        reduce_only: bool,
    ) -> None:
        self.n += 1
        cid = f"o{self.n}"
        req = OrderRequest(
            cid,
            symbol,
            side,
            kind,
            sq if symbol == SPOT else pq,
            price if kind is OrderType.LIMIT else None,
            post_only=post_only and kind is OrderType.LIMIT,
            reduce_only=reduce_only and symbol == PERP,
        )
        rejected: OrderRejected | None = None
        try:
            ack = self.eng.place(req, self.tick())
        except OrderRejected as err:
            rejected = err
        if rejected is not None:
            assert rejected.reason is not RejectReason.OTHER
            with pytest.raises(OrderNotFound):
                self.eng.get(symbol, cid)
            return
        self.prices[cid] = req.price
        self.reduce_only[cid] = req.reduce_only
        assert ack == self.eng.get(symbol, cid)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        orders = self.eng.all_orders()
        if not orders:
            return
        o = data.draw(st.sampled_from(orders))
        if o.status is OrderStatus.OPEN:
            assert self.eng.cancel(o.symbol, o.client_order_id, self.tick()).status is OrderStatus.CANCELED
        else:
            with pytest.raises(OrderNotFound):
                self.eng.cancel(o.symbol, o.client_order_id, self.tick())

    @rule(data=st.data())
    def cap(self, data: st.DataObject) -> None:
        orders = self.eng.open_orders()
        if not orders:
            return
        o = data.draw(st.sampled_from(orders))
        self.eng.cap_fills(o.symbol, o.client_order_id, o.filled)
        self.caps[(o.symbol, o.client_order_id)] = o.filled

    @invariant()
    def capped_orders_fill_no_more(self) -> None:
        for (symbol, cid), cap in self.caps.items():
            assert self.eng.get(symbol, cid).filled <= cap

    @rule(qty=perp_qty, adl=st.booleans())
    def liquidate(self, qty: Decimal, adl: bool) -> None:
        if self.eng.positions()[PERP] == 0:
            return
        origin = OrderOrigin.ADL if adl else OrderOrigin.LIQUIDATION
        assert self.eng.liquidate(PERP, qty, self.tick(), origin).status is OrderStatus.CLOSED

    @invariant()
    def balances_never_negative_and_locked_matches_reservations(self) -> None:
        reserved = {"USDT": D(0), "ETH": D(0)}
        for o in self.eng.open_orders(SPOT):
            price = self.prices[o.client_order_id]
            assert price is not None
            if o.side is Side.BUY:
                reserved["USDT"] += price * o.remaining
            else:
                reserved["ETH"] += o.remaining
        for asset, bal in self.eng.balances().items():
            assert bal.free >= 0, (asset, bal)
            assert bal.locked >= 0, (asset, bal)
            assert bal.locked == reserved.get(asset, D(0)), asset

    @invariant()
    def orders_only_move_forward(self) -> None:
        for o in self.eng.all_orders():
            assert 0 <= o.filled <= o.amount
            key = (o.symbol, o.client_order_id)
            prev = self.seen.get(key)
            if prev is not None:
                assert o.filled >= prev.filled
                if prev.status.is_terminal:
                    assert o == prev
            self.seen[key] = o

    @invariant()
    def fees_follow_the_market_rate(self) -> None:
        for f in self.eng.fills():
            m = self.eng.markets[f.symbol]
            assert (f.fee, f.fee_asset) == fee_for(m, f.side, f.price, f.quantity, maker=f.maker)

    @invariant()
    def book_never_crossed(self) -> None:
        for s in (SPOT, PERP):
            snap = self.eng.book(s)
            if snap.best_bid is not None and snap.best_ask is not None:
                assert snap.best_bid < snap.best_ask

    @invariant()
    def accounts_add_up_to_the_fills(self) -> None:
        fills: list[Fill] = self.eng.fills()
        eth = self.start["ETH"]
        usdt = self.start["USDT"]
        position = D(0)
        for f in fills:
            sign = 1 if f.side is Side.BUY else -1
            if f.symbol == SPOT:
                eth += sign * f.quantity - (f.fee if f.fee_asset == "ETH" else 0)
                usdt -= sign * f.price * f.quantity + (f.fee if f.fee_asset == "USDT" else 0)
            else:
                position += sign * f.quantity
        bal = self.eng.balances()
        assert bal["ETH"].total == eth
        assert bal["USDT"].total == usdt
        assert self.eng.positions()[PERP] == position
        wallet = D(5_000) + sum((f.realized_pnl - f.fee for f in fills if f.symbol == PERP), D(0))
        assert self.eng.perp_wallet() == wallet

    @invariant()
    def kept_sums_equal_a_recount(self) -> None:
        """The margin check's open perp notional and each book's best prices are kept as orders come and go
        (not recounted per order): they equal a brute-force recount over every order ever placed."""
        check_kept_sums(self.eng, self.prices, self.reduce_only)

    @invariant()
    def stream_ends_in_the_current_state(self) -> None:
        for u in self.eng.drain_updates():
            self.latest[(u.symbol, u.client_order_id)] = u
        for key, u in self.latest.items():
            assert self.eng.get(*key) == u


def check_kept_sums(eng: MatchingEngine, prices: dict[str, Decimal | None], reduce_only: dict[str, bool]) -> None:
    open_notional = D(0)
    for o in eng.all_orders(PERP):
        if o.status is OrderStatus.OPEN and not reduce_only.get(o.client_order_id, True):
            price = prices[o.client_order_id]
            assert price is not None  # only limit orders stay open
            open_notional += price * o.remaining
    position = eng.positions()[PERP]
    mark = eng.mark_price(PERP)
    held = abs(position) * mark if position and mark is not None else D(0)
    assert eng._perp_notional == open_notional
    assert eng._perp_exposure() == held + open_notional
    assert str(eng._perp_exposure()) == str(held + open_notional)  # the same Decimal, exponent included
    for symbol in (SPOT, PERP):
        snap = eng.book(symbol, depth=1)  # sorted from scratch
        book = eng._books[symbol]
        assert book.best(Side.BUY) == snap.best_bid and book.best(Side.SELL) == snap.best_ask
        if snap.best_bid is not None and snap.best_ask is not None:
            assert str(eng.mid(symbol)) == str((snap.best_bid + snap.best_ask) / 2)
        else:
            assert eng.mid(symbol) is None


EngineMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestEngineInvariants = EngineMachine.TestCase


@pytest.mark.fuzz
def test_engine_invariants_long() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        EngineMachine, settings=settings(max_examples=2_000, stateful_step_count=80, deadline=None)
    )


# --- queue position: others' trade flow at the touch (print_trade) ----------------------------------------


def test_a_maker_order_at_the_touch_fills_only_after_the_volume_ahead_has_traded(eng: MatchingEngine) -> None:
    eng.place(limit("q", Side.BUY, "1999.99", "0.3"), now=1.0)  # behind 1.0 of others at the best bid
    assert eng.queue_ahead(SPOT, "q") == D(1)
    eng.drain_updates()
    assert eng.print_trade(SPOT, Side.SELL, D("1999.99"), D("0.6"), now=2.0) == []
    assert eng.queue_ahead(SPOT, "q") == D("0.4")
    ups = eng.print_trade(SPOT, Side.SELL, D("1999.99"), D("0.6"), now=3.0)
    assert [(u.client_order_id, u.filled, u.status) for u in ups] == [("q", D("0.2"), OrderStatus.OPEN)]
    assert eng.fills(SPOT)[-1].price == D("1999.99") and eng.fills(SPOT)[-1].maker
    # Others' liquidity that traded left the book: 1.0 + 0.3 - 0.2 (ours) - 1.0 (theirs) = 0.1 left, ours
    assert eng.book(SPOT).bids[0] == (D("1999.99"), D("0.1"))


def test_an_order_improving_the_touch_is_first_in_its_queue(eng: MatchingEngine) -> None:
    eng.place(limit("better", Side.BUY, "2000.00", "0.3"), now=1.0)
    assert eng.queue_ahead(SPOT, "better") == 0
    eng.drain_updates()
    ups = eng.print_trade(SPOT, Side.SELL, D("1999.99"), D("0.5"), now=2.0)  # walks through our better bid
    assert [(u.client_order_id, u.filled) for u in ups] == [("better", D("0.3"))]
    assert eng.fills(SPOT)[-1].price == D("2000.00")
    assert eng.book(SPOT).bids[0] == (D("1999.99"), D("0.8"))  # the rest of the print took others' 0.2


def test_cancels_shrink_the_queue_ahead_and_arrivals_join_behind(eng: MatchingEngine) -> None:
    eng.place(limit("q", Side.BUY, "1999.99", "0.3"), now=1.0)
    bids, asks = book_around("2000.00")
    eng.set_book(SPOT, [(bids[0][0], D(5)), *bids[1:]], asks, now=2.0)  # 4 more arrive: behind us
    assert eng.queue_ahead(SPOT, "q") == D(1)
    eng.set_book(SPOT, [(bids[0][0], D("0.25")), *bids[1:]], asks, now=3.0)  # cancels: at most 0.25 ahead
    assert eng.queue_ahead(SPOT, "q") == D("0.25")
    eng.set_book(SPOT, bids[1:], asks, now=4.0)  # the level emptied: we are alone at the front
    assert eng.queue_ahead(SPOT, "q") == 0


def test_an_ioc_limit_takes_up_to_its_cap_and_expires_the_rest(eng: MatchingEngine) -> None:
    eng.place(limit("ioc", Side.BUY, "2000.02", "3", ioc=True), now=1.0)
    order = eng.get(SPOT, "ioc")
    assert order.status is OrderStatus.EXPIRED and order.filled == D(2)  # 2000.01 and 2000.02, not 2000.03
    assert {f.price for f in eng.fills(SPOT)} == {D("2000.01"), D("2000.02")}
    assert eng.open_orders(SPOT) == []
    with pytest.raises(ValueError, match="ioc"):
        limit("bad", Side.BUY, "2000.00", "1", ioc=True, post_only=True)


_TICK = D("0.01")
_queue_ops = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.integers(-2, 1), st.integers(1, 10)),  # price: best bid + k ticks
        st.tuples(st.just("print"), st.integers(-3, 1), st.integers(1, 30)),
        st.tuples(st.just("grow"), st.integers(-2, 0), st.integers(1, 10)),
        st.tuples(st.just("move"), st.integers(-3, 3), st.integers(1, 30)),
    ),
    max_size=40,
)


@dataclasses.dataclass
class _Queued:
    price: Decimal
    ahead0: Decimal  # others' volume ahead of it when it joined the queue
    traded: Decimal = Decimal(0)  # others' volume that has traded at its price since
    shrunk: bool = False  # a book move took volume off its level (cancels: the queue moved up for free)


@given(_queue_ops)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_queue_fills_are_never_ahead_of_the_market_or_of_the_queue(ops: list[tuple[str, int, int]]) -> None:
    """Random placements, prints, arrivals and book moves: (1) a fill is never at a price the market did not
    trade at or through; (2) orders at one price fill in arrival order; (3) an order fills only once the others'
    volume queued ahead of it has traded (checked while no cancel shrank its level)."""
    eng = MatchingEngine()
    best = D("1999.99")
    eng.set_book(SPOT, *book_around("2000.00"), now=0.0)
    placed: dict[str, _Queued] = {}

    def others_at(price: Decimal) -> Decimal:
        total = dict(eng.book(SPOT, depth=100).bids).get(price, D(0))
        mine = sum((o.remaining for o in eng.open_orders(SPOT) if placed[o.client_order_id].price == price), D(0))
        return total - mine

    for i, (op, k, n) in enumerate(ops):
        now = float(i + 1)
        seen = len(eng.fills(SPOT))
        before = {q.price: others_at(q.price) for q in placed.values()}
        traded_at: Decimal | None = None  # the worst price the market traded at in this step
        if op == "place":
            cid = f"o{i:03d}"
            try:
                eng.place(limit(cid, Side.BUY, str(best + _TICK * k), str(D("0.1") * n), post_only=True), now=now)
            except OrderRejected:
                continue
            placed[cid] = _Queued(best + _TICK * k, eng.queue_ahead(SPOT, cid))
        elif op == "print":
            traded_at = best + _TICK * k
            eng.print_trade(SPOT, Side.SELL, traded_at, D("0.1") * n, now=now)
        else:
            if op == "move":
                best += _TICK * k
            bids = [(best - _TICK * j, D("0.1") * n if op == "move" else others_at(best - _TICK * j)) for j in range(5)]
            if op == "grow":
                bids = [(p, q + (D("0.1") * n if p == best + _TICK * k else 0)) for p, q in bids]
            asks = [(best + _TICK * (2 + j), D(1)) for j in range(5)]
            eng.set_book(SPOT, [(p, q) for p, q in bids if q > 0], asks, now=now)
            traded_at = asks[0][0]
        # (1) every fill is ours as maker, at our limit, at or above the price the market traded at
        for f in eng.fills(SPOT)[seen:]:
            assert traded_at is not None, f"a fill on {op}"
            assert f.maker and f.price == placed[f.client_order_id].price >= traded_at
        for q in placed.values():
            after = others_at(q.price)
            if q.price in before and op == "print":
                q.traded += before[q.price] - after
            elif q.price in before and after < before[q.price]:
                q.shrunk = True
        orders = {o.client_order_id: o for o in eng.all_orders(SPOT)}
        for cid, q in placed.items():
            if orders[cid].filled == 0:
                continue
            # (2) time priority at one price
            for earlier, e in placed.items():
                if earlier < cid and e.price == q.price:
                    assert orders[earlier].status is OrderStatus.CLOSED, f"{cid} filled before earlier {earlier}"
            # (3) never ahead of the volume that was ahead of it
            if not q.shrunk:
                assert q.traded >= q.ahead0, f"{cid} filled with {q.ahead0 - q.traded} still ahead"
