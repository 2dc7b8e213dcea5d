"""`CcxtVenue` against the in-test Binance-wire emulator over loopback: unmodified ccxt / ccxt.pro on trio
through trio-asyncio, every order, error and stream path of the `Venue` protocol.

Each test runs the emulator on its own asyncio loop (manual clock: the market only moves when a test moves
it) and the venue on another, both inside the test's trio run; nothing sleeps.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace
from typing import Any

import aiohttp
import ccxt
import pytest
import trio
import trio.testing
import trio_asyncio
from conftest import ETH, ETH_PERP, QTY, STREAM_WAIT, emulated, engine_on, maker, settle

from legguard.adapters._venue import FundingPayment, FundingVenue, Venue
from legguard.adapters.ccxt._convert import order_update
from legguard.adapters.ccxt._venue import (
    EXCHANGE_IDS,
    CcxtVenue,
    CcxtVenueConfig,
    open_ccxt_venue,
    open_ccxt_venue_from_config,
)
from legguard.adapters.emulator._emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET
from legguard.adapters.emulator._server import serve_emulator
from legguard.domain import (
    AuthenticationFailed,
    DuplicateOrder,
    MalformedResponse,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    OutcomeUnknown,
    RateLimited,
    RejectReason,
    Side,
    StreamDisconnected,
)
from legguard.engine import PackageSpec, verify
from legguard.fsm import LegRole, State

# --- placement ----------------------------------------------------------------------------------------


async def test_post_only_legs_rest_on_both_markets_as_ccxt_sends_them() -> None:
    async with emulated() as rig:
        assert isinstance(rig.venue, Venue)
        bid, _, _, perp_ask = await rig.books()
        spot_armed = rig.venue.arm(maker("t1-SE1", ETH, Side.BUY, bid))
        perp_armed = rig.venue.arm(maker("t1-PE1", ETH_PERP, Side.SELL, perp_ask))
        acks: dict[str, OrderUpdate] = {}

        async def send(armed: Any) -> None:
            ack = await rig.venue.fire(armed)
            acks[ack.client_order_id] = ack

        async with trio.open_nursery() as nursery:  # both legs leave together
            nursery.start_soon(send, spot_armed)
            nursery.start_soon(send, perp_armed)

        assert spot_armed.extra["venue_request"]["type"] == "LIMIT_MAKER"
        assert perp_armed.extra["venue_request"]["timeInForce"] == "GTX"
        assert {u.status for u in acks.values()} == {OrderStatus.OPEN}
        assert acks["t1-SE1"].amount == QTY and acks["t1-PE1"].side is Side.SELL
        assert acks["t1-PE1"].venue_order_id is not None
        spot = rig.orders(MarketKind.SPOT)["t1-SE1"]
        perp = rig.orders(MarketKind.LINEAR)["t1-PE1"]
        assert (spot["type"], spot["status"], Decimal(spot["price"])) == ("LIMIT_MAKER", "NEW", bid)
        assert (perp["type"], perp["timeInForce"], Decimal(perp["origQty"])) == ("LIMIT", "GTX", QTY)


@pytest.mark.parametrize("symbol", [ETH, ETH_PERP])
async def test_a_refusal_ccxt_classified_once_is_raised_again_without_walking_its_tables(
    symbol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with emulated() as rig:
        bid, ask, perp_bid, perp_ask = await rig.books()
        side = rig.venue._spot if symbol == ETH else rig.venue._perp
        classified: list[str] = []
        real = side.ex.handle_errors

        def handle_errors(*args: Any) -> Any:
            try:
                return real(*args)
            except Exception as exc:
                classified.append(f"{type(exc).__name__}: {exc}")
                raise

        monkeypatch.setattr(side.ex, "handle_errors", handle_errors)
        refused: list[OrderRejected] = []
        for n in range(3):
            with pytest.raises(OrderRejected) as info:
                await rig.place(maker(f"t3-E{n}", symbol, Side.BUY, ask if symbol == ETH else perp_ask))
            refused.append(info.value)
        # A refusal of another kind (no funds for 5,000 ETH) is classified by ccxt, once, too.
        for n in range(2):
            with pytest.raises(OrderRejected) as info:
                await rig.place(maker(f"t3-F{n}", symbol, Side.BUY, bid if symbol == ETH else perp_bid,
                                      Decimal(5000)))  # fmt: skip
            assert info.value.reason is RejectReason.INSUFFICIENT_FUNDS

    assert len(classified) == 2, classified  # ccxt's tables walked once per distinct answer
    assert all(r.reason is RejectReason.POST_ONLY_CROSS for r in refused)
    # The same ccxt exception and message every time (only the order's own id differs).
    assert {str(r).replace(r.client_order_id, "<cid>") for r in refused} == {
        str(refused[0]).replace(refused[0].client_order_id, "<cid>")
    }
    assert classified[0].split(": ", 1)[1] in str(refused[0])


@pytest.mark.parametrize(
    ("status", "code", "kept"),
    [(400, -2010, True), (400, -2015, False), (429, -1003, False), (400, None, False)],
)
def test_only_refusals_classified_by_their_body_alone_are_kept(status: int, code: int | None, kept: bool) -> None:
    # -2015 (invalid key, IP or permissions) is classified by ccxt's own state (has this instance ever
    # authenticated?); 429 is a rate limit; a body without a code is not Binance's refusal shape.
    from legguard.adapters.ccxt._venue import _SpotExchange

    body = json.dumps({"code": code, "msg": "Account has insufficient balance for requested action."})
    side = SimpleNamespace(ex=_SpotExchange({}), refusals={})
    signed = {"url": "http://127.0.0.1:1/api/v3/order?signature=x", "method": "POST", "body": ""}
    request = SimpleNamespace(side=side, headers={}, signed=signed)
    response = SimpleNamespace(status=status, reason="Refused", headers={}, body=body.encode())
    raised = []
    for _ in range(2):
        with pytest.raises(ccxt.BaseError) as info:
            CcxtVenue._answer(request, response)  # type: ignore[arg-type]
        raised.append((type(info.value), str(info.value)))
    assert raised[0] == raised[1]
    assert bool(side.refusals) is kept


@pytest.mark.parametrize("tls", [False, True], ids=["http-url", "binance-shaped-url"])
@pytest.mark.parametrize("symbol", [ETH, ETH_PERP])
async def test_post_only_that_would_cross_is_rejected_and_never_rests(symbol: str, tls: bool) -> None:
    # Plain http URLs get the right error table from our URL classification; the emulator's TLS URLs shaped
    # like Binance's get it from ccxt's own check. Both must say "post-only would cross".
    async with emulated(tls=tls) as rig:
        _, ask, _, perp_ask = await rig.books()
        crossing = maker("t2-E1", symbol, Side.BUY, ask if symbol == ETH else perp_ask)

        with pytest.raises(OrderRejected) as info:
            await rig.place(crossing)

        assert info.value.reason is RejectReason.POST_ONLY_CROSS
        kind = MarketKind.SPOT if symbol == ETH else MarketKind.LINEAR
        assert "t2-E1" not in rig.orders(kind)


# 1 000 ETH is ~2.8M USDT, over the 1M spot balance; 5 000 ETH short needs ~2.8M margin at 5x on a 1M wallet.
@pytest.mark.parametrize(("symbol", "side", "amount"), [(ETH, Side.BUY, 1000), (ETH_PERP, Side.SELL, 5000)])
async def test_insufficient_balance_or_margin_is_a_definite_reject(symbol: str, side: Side, amount: int) -> None:
    async with emulated() as rig:
        bid, _, _, perp_ask = await rig.books()
        price = bid if symbol == ETH else perp_ask
        with pytest.raises(OrderRejected) as info:
            await rig.place(maker("t3-E1", symbol, side, price, Decimal(amount)))
        assert info.value.reason is RejectReason.INSUFFICIENT_FUNDS


async def test_reduce_only_unwind_without_a_position_is_rejected_as_reduce_only() -> None:
    async with emulated() as rig:
        unwind = OrderRequest("t4-PU1", ETH_PERP, Side.BUY, OrderType.MARKET, QTY, reduce_only=True)
        armed = rig.venue.arm(unwind)
        assert armed.extra["venue_request"]["reduceOnly"] == "True"
        with pytest.raises(OrderRejected) as info:
            await rig.venue.fire(armed)
        assert info.value.reason is RejectReason.REDUCE_ONLY_REJECTED


@pytest.mark.parametrize("symbol", [ETH, ETH_PERP])
async def test_duplicate_client_order_id_raises_duplicate_order(symbol: str) -> None:
    async with emulated() as rig:
        bid, _, perp_bid, _ = await rig.books()
        request = maker("t5-E1", symbol, Side.BUY, bid if symbol == ETH else perp_bid)
        first = await rig.place(request)
        assert first.status is OrderStatus.OPEN

        with pytest.raises(DuplicateOrder) as info:
            await rig.place(request)
        assert info.value.client_order_id == "t5-E1"


async def test_fetch_and_cancel_by_client_order_id() -> None:
    async with emulated() as rig:
        _, _, perp_bid, _ = await rig.books()
        placed = await rig.place(maker("t6-PE1", ETH_PERP, Side.BUY, perp_bid))

        fetched = await rig.venue.fetch_order(ETH_PERP, "t6-PE1")
        cancelled = await rig.venue.cancel_order(ETH_PERP, "t6-PE1")
        after = await rig.venue.fetch_order(ETH_PERP, "t6-PE1")

        assert (fetched.status, fetched.venue_order_id) == (OrderStatus.OPEN, placed.venue_order_id)
        assert cancelled.status is OrderStatus.CANCELED and cancelled.client_order_id == "t6-PE1"
        assert after.status is OrderStatus.CANCELED
        assert rig.orders(MarketKind.LINEAR)["t6-PE1"]["status"] == "CANCELED"
        with pytest.raises(OrderNotFound):
            await rig.venue.fetch_order(ETH_PERP, "never-sent")
        with pytest.raises(OrderNotFound):
            await rig.venue.cancel_order(ETH, "never-sent")


async def test_spot_cancel_answers_about_our_order_not_the_cancel_request() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t7-SE1", ETH, Side.BUY, bid))
        cancelled = await rig.venue.cancel_order(ETH, "t7-SE1")
        assert (cancelled.client_order_id, cancelled.status) == ("t7-SE1", OrderStatus.CANCELED)
        assert [u.client_order_id for u in await rig.venue.fetch_open_orders(ETH)] == []


async def test_an_order_armed_long_ago_is_signed_again_at_fire() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        ex = rig.venue._spot.ex
        real = ex.milliseconds
        ex.milliseconds = lambda: real() - 60_000  # armed a minute ago: far outside Binance's recvWindow
        try:
            armed = rig.venue.arm(maker("t19-SE1", ETH, Side.BUY, bid))
        finally:
            del ex.milliseconds
        stale = armed.payload.signed["body"]

        ack = await rig.venue.fire(armed)

        assert ack.status is OrderStatus.OPEN
        assert armed.payload.signed["body"] != stale and "signature=" in armed.payload.signed["body"]


async def test_open_from_the_run_config_asks_the_emulator_for_its_urls() -> None:
    @dataclass(frozen=True)
    class Creds:
        api_key: str = DEFAULT_API_KEY
        api_secret: str = DEFAULT_API_SECRET

    @dataclass(frozen=True)
    class Settings:
        kind: str
        url: str | None

        def credentials(self) -> Creds:
            return Creds()

    emulator = serve_emulator(tls_port=None, autoclock=False)
    async with trio_asyncio.open_loop(), trio_asyncio.aio_as_trio(emulator) as emu:
        settings = Settings("emulator", f"http://127.0.0.1:{emu.port}")
        async with open_ccxt_venue_from_config(settings) as venue:
            assert venue.name == "emulator"
            assert venue._perp.ex.urls["api"]["fapiPrivate"] == emu.ccxt_urls("binanceusdm")["fapiPrivate"]
            assert set(await venue.load_markets()) >= {ETH, ETH_PERP}
        with pytest.raises(ValueError, match=r"venue\.kind"):
            async with open_ccxt_venue_from_config(Settings("sim", None)):
                pass


# --- arm refuses bad orders before anything is sent ---------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (maker("t8-E1", ETH, Side.BUY, Decimal("2000.005")), "tick size"),
        (maker("t8-E2", ETH_PERP, Side.BUY, Decimal(2000), Decimal("0.0505")), "step size"),
        (maker("t8-E5", ETH_PERP, Side.BUY, Decimal(2000), Decimal("0.0005")), "minimum amount"),
        (maker("bad id with spaces", ETH, Side.BUY, Decimal(2000)), "client order id"),
        (maker("x" * 37, ETH, Side.BUY, Decimal(2000)), "client order id"),
        (OrderRequest("t8-E3", ETH, Side.SELL, OrderType.MARKET, QTY, reduce_only=True), "reduce-only"),
        (maker("t8-E4", "DOGE/USDT", Side.BUY, Decimal(1)), "not a market"),
    ],
)
async def test_arm_refuses_invalid_orders_without_sending(request_: OrderRequest, why: str) -> None:
    async with emulated() as rig:
        with pytest.raises(OrderRejected) as info:
            rig.venue.arm(request_)
        assert info.value.reason is RejectReason.INVALID_ORDER
        assert why in str(info.value)
        assert rig.orders(MarketKind.SPOT) == {} and rig.orders(MarketKind.LINEAR) == {}


# --- unknown outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("process", [False, True])
async def test_http_5xx_is_outcome_unknown_and_reconciles_by_client_id(process: bool) -> None:
    async with emulated() as rig:
        _, _, perp_bid, _ = await rig.books()
        await rig.fault(fault="http_error", status=503, market="linear", path="/order", method="POST",
                        process=process)  # fmt: skip
        with pytest.raises(OutcomeUnknown):
            await rig.place(maker("t9-PE1", ETH_PERP, Side.BUY, perp_bid))

        # The engine then asks by client id; the venue knows whether the 503 hid an accepted order.
        if process:
            assert (await rig.venue.fetch_order(ETH_PERP, "t9-PE1")).status is OrderStatus.OPEN
        else:
            with pytest.raises(OrderNotFound):
                await rig.venue.fetch_order(ETH_PERP, "t9-PE1")


async def test_malformed_answer_is_malformed_response_and_the_order_exists() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.fault(fault="malformed_response", market="spot", path="/order", method="POST")
        with pytest.raises(MalformedResponse):
            await rig.place(maker("t10-SE1", ETH, Side.BUY, bid))
        assert (await rig.venue.fetch_order(ETH, "t10-SE1")).status is OrderStatus.OPEN


async def test_request_timeout_is_outcome_unknown(mock_clock: trio.testing.MockClock) -> None:
    # Virtual time: the acknowledgement never comes, and the clock jumps past ccxt's timeout.
    async with emulated(timeout=2.0, stream_ready_timeout=0) as rig:
        bid, *_ = await rig.books()
        await rig.fault(fault="ack_timeout", market="spot", path="/order", method="POST")
        outcome: list[BaseException] = []

        async def send() -> None:
            try:
                await rig.place(maker("t11-SE1", ETH, Side.BUY, bid))
            except OutcomeUnknown as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await rig.until(lambda: rig.emu.held == 1)
            mock_clock.jump(3.0)

        assert len(outcome) == 1 and "RequestTimeout" in str(outcome[0])
        assert rig.orders(MarketKind.SPOT)["t11-SE1"]["status"] == "NEW"  # it took effect


async def test_a_callers_earlier_deadline_ends_the_request_and_its_connection(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The engine's acknowledgement deadline (shorter than the venue's timeout) is the one that ends a request
    # with no answer: the caller's TooSlowError, and the connection that carried it is not reused.
    async with emulated(timeout=5.0, stream_ready_timeout=0) as rig:
        bid, *_ = await rig.books()
        await rig.fault(fault="ack_timeout", market="spot", path="/order", method="POST")
        outcome: list[BaseException] = []

        async def send() -> None:
            try:
                with trio.fail_after(1.0):
                    await rig.place(maker("t13-SE1", ETH, Side.BUY, bid))
            except (trio.TooSlowError, OutcomeUnknown) as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await rig.until(lambda: rig.emu.held == 1)
            mock_clock.jump(1.5)

        assert [type(e) for e in outcome] == [trio.TooSlowError]
        pools = list(rig.venue._spot.pools.values())
        assert pools and all(not c.closed for p in pools for c in p.idle)  # the timed-out one was closed
        assert rig.orders(MarketKind.SPOT)["t13-SE1"]["status"] == "NEW"  # it took effect


async def test_trio_cancellation_mid_request_propagates_as_cancelled() -> None:
    async with emulated() as rig:
        _, _, _, perp_ask = await rig.books()
        await rig.fault(fault="ack_timeout", market="linear", path="/order", method="POST")
        reached_end = False

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    nonlocal reached_end
                    try:
                        await rig.place(maker("t12-PE1", ETH_PERP, Side.SELL, perp_ask))
                    except trio.Cancelled:
                        raise
                    except BaseException:  # any venue error would be a bug here
                        reached_end = True
                        raise
                    reached_end = True

                nursery.start_soon(send)
                await rig.until(lambda: rig.emu.held == 1)
                scope.cancel()

        assert scope.cancelled_caught and not reached_end
        # The cancelled leg is unknown to the engine, but it exists: reconciliation finds it.
        assert (await rig.venue.fetch_order(ETH_PERP, "t12-PE1")).status is OrderStatus.OPEN


async def test_venue_rate_limit_raises_rate_limited() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.fault(fault="reject", code=-1003, market="spot", path="/order")
        with pytest.raises(RateLimited):
            await rig.place(maker("t13-SE1", ETH, Side.BUY, bid))
        # Our own budget is now spent too: the next entry is refused before it is sent.
        with pytest.raises(RateLimited, match="local request budget"):
            await rig.place(maker("t13-SE2", ETH, Side.BUY, bid))
        assert rig.orders(MarketKind.SPOT) == {}


# --- streams ------------------------------------------------------------------------------------------


async def test_merged_stream_delivers_fills_from_both_markets_with_fees() -> None:
    async with emulated() as rig:
        bid, _, _, perp_ask = await rig.books()
        await rig.place(maker("t14-SE1", ETH, Side.BUY, bid))
        await rig.place(maker("t14-PE1", ETH_PERP, Side.SELL, perp_ask))
        emu = rig.emu
        spot_m, perp_m = emu.engine.markets[ETH], emu.engine.markets[ETH_PERP]

        # Other participants trade through both resting orders.
        await rig.on_emulator(emu.trade, spot_m, Side.SELL, bid, QTY)
        await rig.on_emulator(emu.trade, perp_m, Side.BUY, perp_ask, QTY)
        latest = await rig.updates_until(
            lambda got: all(got.get(c) and got[c].status is OrderStatus.CLOSED for c in ("t14-SE1", "t14-PE1"))
        )

        spot, perp = latest["t14-SE1"], latest["t14-PE1"]
        assert (spot.filled, spot.average, spot.symbol) == (QTY, bid, ETH)
        assert (perp.filled, perp.average, perp.symbol) == (QTY, perp_ask, ETH_PERP)
        # A spot buy pays its fee in the base asset; the perp in USDT.
        assert spot.fee_base == QTY * spot_m.maker_fee and spot.fee_quote == 0
        assert perp.fee_quote == QTY * perp_ask * perp_m.maker_fee and perp.fee_base == 0
        positions = await rig.venue.fetch_positions()
        assert positions[ETH_PERP] == -QTY
        # A REST query after the fact carries the same cumulative fee (from the order's trades).
        assert (await rig.venue.fetch_order(ETH, "t14-SE1")).fee_base == spot.fee_base


async def test_every_execution_of_a_burst_arrives_with_its_own_fee() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t20-SE1", ETH, Side.BUY, bid))
        spot_m = rig.emu.engine.markets[ETH]
        seen: list[OrderUpdate] = []

        def two_trades() -> None:  # back to back: both executions leave in one burst
            rig.emu.trade(spot_m, Side.SELL, bid, Decimal("0.02"))
            rig.emu.trade(spot_m, Side.SELL, bid, Decimal("0.03"))

        await rig.on_emulator(two_trades)
        with trio.fail_after(STREAM_WAIT):
            while not seen or seen[-1].status is not OrderStatus.CLOSED:
                seen += [u for u in await rig.venue.watch_orders() if u.client_order_id == "t20-SE1"]

        assert [u.filled for u in seen if u.filled > 0] == [Decimal("0.02"), QTY]
        # ccxt's order cache would have kept only the last execution's fee; the ledger has both.
        assert seen[-1].fee_base == QTY * spot_m.maker_fee


@dataclass
class HeldStream:
    """The venue's user-stream order events, held back (as a stream running late) until `release`."""

    venue: CcxtVenue
    held: list[tuple[Any, Any]]

    def release(self) -> None:
        vars(self.venue).pop("_fees_received", None)
        for side, message in self.held:
            CcxtVenue._on_order_event(self.venue, side, message)
        self.held.clear()


def hold_stream(rig: Any) -> HeldStream:
    held = HeldStream(rig.venue, [])
    for side in (rig.venue._spot, rig.venue._perp):  # where ccxt's message handler hands each order event
        side.ex.legguard_sink = lambda message, side=side: held.held.append((side, message))
    # Not yet received at all: the answers' look into the websocket's unhandled messages finds nothing either.
    rig.venue._fees_received = lambda *args: None
    return held


async def test_a_cancel_answer_takes_its_fee_from_the_stream_report_not_from_rest() -> None:
    async with emulated(fee_wait=30.0) as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t30-SE1", ETH, Side.BUY, bid))
        stream = hold_stream(rig)
        # Part of it fills; the execution report (with its commission) is on its way but not read yet.
        await rig.on_emulator(rig.emu.trade, rig.emu.engine.markets[ETH], Side.SELL, bid, Decimal("0.02"))
        answers: list[OrderUpdate] = []
        answered = trio.Event()  # the cancel's answer was read from the socket
        rig.venue.set_tap(lambda what, key, ns: answered.set() if (what, key) == ("recv", "cancel:t30-SE1") else None)

        async def cancel() -> None:
            answers.append(await rig.venue.cancel_order(ETH, "t30-SE1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel)
            with trio.fail_after(STREAM_WAIT):
                await answered.wait()
            await trio.sleep(0.1)
            assert answers == []  # the answer (filled, no fee) waits for the report, not for a REST query
            stream.release()

    fee = Decimal("0.02") * rig.emu.engine.markets[ETH].maker_fee
    assert [(a.status, a.filled, a.fee_base) for a in answers] == [(OrderStatus.CANCELED, Decimal("0.02"), fee)]
    assert rig.venue.fee_queries == 0


async def test_a_cancel_answer_takes_its_fee_from_a_report_received_but_not_yet_handled_by_ccxt() -> None:
    """The execution report is in this process already (read off the socket, decoded, waiting in the
    websocket's buffer for ccxt.pro's receive loop): the cancel's answer takes the fee from it at once,
    without waiting for the stream (`fee_wait` is long here) and without asking REST."""
    async with emulated(fee_wait=30.0) as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t32-SE1", ETH, Side.BUY, bid))
        stream, traded, spot = hold_stream(rig), trio.Event(), rig.venue._spot

        def sink(message: dict[str, Any]) -> None:
            stream.held.append((spot, message))
            if message.get("x") == "TRADE":
                traded.set()

        spot.ex.legguard_sink = sink
        await rig.on_emulator(rig.emu.trade, rig.emu.engine.markets[ETH], Side.SELL, bid, Decimal("0.02"))
        with trio.fail_after(STREAM_WAIT):
            await traded.wait()
        report = next(m for _, m in stream.held if m.get("x") == "TRADE")
        # The same report as the spot WebSocket API frames it, not handed to ccxt yet.
        frame = aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, json.dumps({"subscriptionId": 0, "event": report}), None)
        # On a connection that carries the spot user data (ccxt names its subscription "spot"); the same
        # frame on a book stream's connection is not looked at.
        unhandled = SimpleNamespace(buffer=collections.deque([(frame, 0)]), subscriptions={"spot": True})
        book = SimpleNamespace(buffer=collections.deque([(frame, 0)]), subscriptions={"ethusdt@depth": True})
        vars(rig.venue).pop("_fees_received")  # hold_stream's blindfold off: the report is in the buffer
        clients = rig.venue._spot.ex.clients
        clients["book"] = book
        rig.venue._fees_received(rig.venue._spot, rig.emu.engine.markets[ETH], "t32-SE1")
        assert rig.venue.fees.totals((ETH, "t32-SE1"), "ETH", "USDT")[0] == 0
        clients["unhandled"] = unhandled
        decoded: list[OrderUpdate] = []
        real_decode = rig.venue._decode

        def decode(*args: Any, **kwargs: Any) -> OrderUpdate:
            decoded.append(real_decode(*args, **kwargs))
            return decoded[-1]

        rig.venue._decode = decode  # type: ignore[method-assign]
        try:
            with trio.fail_after(STREAM_WAIT):
                answer = await rig.venue.cancel_order(ETH, "t32-SE1")
        finally:
            del clients["unhandled"], clients["book"]
            del rig.venue._decode
        # The fee was read before the decode, which made the answer's update with it (not replaced after).
        assert decoded == [answer] and decoded[0] is answer
        stream.release()  # ccxt's own handling of the same trade later counts it once
        again = await rig.venue.fetch_order(ETH, "t32-SE1")

    fee = Decimal("0.02") * rig.emu.engine.markets[ETH].maker_fee
    assert (answer.status, answer.filled, answer.fee_base) == (OrderStatus.CANCELED, Decimal("0.02"), fee)
    assert again.fee_base == fee and rig.venue.fee_queries == 0


async def test_a_fee_no_answer_carries_is_asked_of_rest_after_the_wait() -> None:
    async with emulated(fee_wait=0.05) as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t31-SE1", ETH, Side.BUY, bid))
        hold_stream(rig)  # never released: the report is lost
        await rig.on_emulator(rig.emu.trade, rig.emu.engine.markets[ETH], Side.SELL, bid, Decimal("0.02"))

        answer = await rig.venue.cancel_order(ETH, "t31-SE1")

    assert (answer.filled, answer.fee_base) == (
        Decimal("0.02"),
        Decimal("0.02") * rig.emu.engine.markets[ETH].maker_fee,
    )
    assert rig.venue.fee_queries == 1


async def test_spot_fill_fee_is_recovered_by_rest_when_the_stream_missed_it() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t15-SE1", ETH, Side.BUY, bid))
        # Fill it while nobody reads the stream, and use a fresh venue whose fee ledger never saw it.
        await rig.on_emulator(rig.emu.trade, rig.emu.engine.markets[ETH], Side.SELL, bid, QTY)
        rig.venue.fees = type(rig.venue.fees)()

        update = await rig.venue.fetch_order(ETH, "t15-SE1")

        assert update.status is OrderStatus.CLOSED
        assert update.fee_base == QTY * rig.emu.engine.markets[ETH].maker_fee > 0


async def test_ws_drop_raises_stream_disconnected_and_the_next_call_resubscribes() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.fault(fault="ws_drop", market="all")
        dropped: set[str] = set()
        with trio.fail_after(STREAM_WAIT):
            while len(dropped) < 2:
                with pytest.raises(StreamDisconnected) as info:
                    await rig.venue.watch_orders()
                dropped.add(str(info.value).split()[0])
        assert dropped == {"spot", "linear"}

        # The next call resubscribes: a new order's updates arrive again, on both markets.
        waiting = trio.Event()
        got: dict[str, OrderUpdate] = {}

        async def read() -> None:
            waiting.set()
            got.update(await rig.updates_until(lambda g: "t16-SE1" in g and "t16-PE1" in g))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await waiting.wait()
            hub = rig.emu.hub
            await rig.until(
                lambda: hub.count(MarketKind.SPOT, "api") == 1 and hub.count(MarketKind.LINEAR, "user") == 1
            )
            _, _, perp_bid, _ = await rig.books()
            await rig.place(maker("t16-SE1", ETH, Side.BUY, bid))
            await rig.place(maker("t16-PE1", ETH_PERP, Side.BUY, perp_bid))
        assert {u.status for u in got.values()} == {OrderStatus.OPEN}


async def test_a_drop_just_after_a_fill_is_reported_once_per_stream_and_both_come_back_by_themselves() -> None:
    async with emulated() as rig:
        bid, *_ = await rig.books()
        await rig.place(maker("t21-SE1", ETH, Side.BUY, bid))
        spot_m = rig.emu.engine.markets[ETH]

        def fill_then_drop() -> None:
            # The fill's event resolves the pending watch; the close follows before it is armed again, and
            # ccxt.pro would reconnect silently on the next watch: the close itself must say so.
            rig.emu.trade(spot_m, Side.SELL, bid, QTY)
            rig.emu.add_fault({"fault": "ws_drop", "market": "all"})

        await rig.on_emulator(fill_then_drop)
        dropped: list[str] = []
        with trio.fail_after(STREAM_WAIT):
            while len(dropped) < 2:
                try:
                    await rig.venue.watch_orders()  # the fill's updates, if they beat the close
                except StreamDisconnected as exc:
                    dropped.append(str(exc).split()[0])
        assert sorted(dropped) == ["linear", "spot"]
        hub = rig.emu.hub
        # Subscribed again with no call to watch_orders.
        await rig.until(lambda: hub.count(MarketKind.SPOT, "api") == 1 and hub.count(MarketKind.LINEAR, "user") == 1)
        _, _, perp_bid, _ = await rig.books()
        await rig.place(maker("t21-PE1", ETH_PERP, Side.BUY, perp_bid))
        # No second report of the same drop is waiting in the stream: the next updates are the new order's.
        got = await rig.updates_until(lambda g: "t21-PE1" in g)
        assert got["t21-PE1"].status is OrderStatus.OPEN


async def test_liquidation_and_adl_arrive_with_their_origin() -> None:
    async with emulated() as rig:
        _, _, _, perp_ask = await rig.books()
        await rig.place(maker("t17-PE1", ETH_PERP, Side.SELL, perp_ask, Decimal("0.1")))
        perp_m = rig.emu.engine.markets[ETH_PERP]
        await rig.on_emulator(rig.emu.trade, perp_m, Side.BUY, perp_ask, Decimal("0.1"))
        await rig.on_emulator(rig.emu.liquidate, perp_m, Decimal("0.03"), OrderOrigin.LIQUIDATION)
        await rig.on_emulator(rig.emu.liquidate, perp_m, Decimal("0.02"), OrderOrigin.ADL)

        latest = await rig.updates_until(lambda g: sum(u.origin is not OrderOrigin.OURS for u in g.values()) == 2)

        venue_own = {u.origin: u for u in latest.values() if u.origin is not OrderOrigin.OURS}
        assert venue_own[OrderOrigin.LIQUIDATION].client_order_id.startswith("autoclose-")
        assert venue_own[OrderOrigin.ADL].client_order_id.startswith("adl_autoclose")
        assert (venue_own[OrderOrigin.LIQUIDATION].filled, venue_own[OrderOrigin.ADL].filled) == (
            Decimal("0.03"),
            Decimal("0.02"),
        )
        assert (await rig.venue.fetch_positions())[ETH_PERP] == Decimal("-0.05")


async def test_order_book_stream_follows_the_market() -> None:
    async with emulated() as rig:
        first = await rig.venue.watch_order_book(ETH_PERP)
        perp_m = rig.emu.engine.markets[ETH_PERP]
        assert first.best_bid is not None and first.best_ask is not None
        target = (first.best_bid * Decimal("1.01")).quantize(perp_m.tick_size)
        books = []

        async def watch() -> None:
            with trio.fail_after(STREAM_WAIT):
                while not books or books[-1].best_bid < first.best_bid * Decimal("1.005"):
                    books.append(await rig.venue.watch_order_book(ETH_PERP))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            # ccxt.pro resolves a watch on the next message only: move once the watcher is waiting.
            await trio.testing.wait_all_tasks_blocked()
            await rig.on_emulator(rig.emu.move, perp_m, target)

        book = books[-1]
        assert book.best_bid is not None and book.best_ask is not None
        assert book.best_bid < book.best_ask and len(book.bids) <= rig.venue.config.book_depth
        assert book.sequence > first.sequence


async def test_order_book_falls_back_to_rest_when_the_websocket_is_unavailable() -> None:
    async with emulated() as rig:
        # Point the market-data websocket at a closed port.
        rig.venue._perp.ex.urls["api"]["ws"]["linear"] = "ws://127.0.0.1:9/fstream/ws"
        rest = await rig.venue.fetch_order_book(ETH_PERP)

        book = await rig.venue.watch_order_book(ETH_PERP)

        assert (book.bids, book.asks) == (rest.bids, rest.asks)
        assert rig.venue._perp.ws_down_until[ETH_PERP] > trio.current_time()


# --- accounts -----------------------------------------------------------------------------------------


async def test_balances_positions_and_funding() -> None:
    async with emulated() as rig:
        balances = await rig.venue.fetch_balance()
        assert balances["USDT"].free == Decimal(1_000_000) and balances["ETH"].total == Decimal(100)
        assert balances["perp:USDT"].total == Decimal(1_000_000)
        assert await rig.venue.fetch_positions() == {} or all(
            q == 0 for q in (await rig.venue.fetch_positions()).values()
        )
        funding = await rig.venue.fetch_funding_rate(ETH_PERP)
        assert funding.rate == Decimal("0.0001") and funding.symbol == ETH_PERP
        # The emulator's default 8 h interval, from its settled rates; the next funding time is ahead of its clock.
        assert funding.interval == 8 * 3600
        assert funding.next_funding_ms is not None and 0 < funding.next_funding_ms - funding.time_ms <= 8 * 3600_000
        assert -Decimal("0.0075") <= funding.predicted <= Decimal("0.0075")


async def test_a_failing_half_of_a_two_market_call_raises_the_venue_error_itself() -> None:
    async with emulated() as rig:
        await rig.fault(fault="http_error", status=502, market="linear", path="/account")
        with pytest.raises(OutcomeUnknown):  # not an exception group: callers catch VenueError
            await rig.venue.fetch_balance()
        assert (await rig.venue.fetch_open_orders()) == []


async def test_markets_are_built_from_ccxt_structures_without_surprise_calls() -> None:
    async with trio_asyncio.open_loop():
        emulator = serve_emulator(tls_port=None, autoclock=False)
        async with trio_asyncio.aio_as_trio(emulator) as emu:
            config = CcxtVenueConfig(DEFAULT_API_KEY, DEFAULT_API_SECRET, close_grace=0,
                                     urls={e: emu.ccxt_urls(e) for e in EXCHANGE_IDS})  # fmt: skip
            async with trio_asyncio.open_loop():
                venue = CcxtVenue(config)
                seen: list[str] = []
                for side in (venue._spot, venue._perp):
                    original = side.ex.fetch

                    async def recording(url: str, *args: Any, _original: Any = original) -> Any:
                        seen.append(url.split("?")[0].rsplit("/", 2)[-2] + "/" + url.split("?")[0].rsplit("/")[-1])
                        return await _original(url, *args)

                    side.ex.fetch = recording
                try:
                    markets = await venue.load_markets()
                finally:
                    await venue.aclose()

        assert sorted(seen) == ["v1/exchangeInfo", "v3/exchangeInfo"]
        assert set(markets) == {"BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"}
        for symbol, m in markets.items():
            assert m == emu.engine.markets[symbol].__class__(**{
                **{f: getattr(m, f) for f in ("maker_fee", "taker_fee")},  # ccxt's fee table, not the account's
                **{f: getattr(emu.engine.markets[symbol], f) for f in
                   ("symbol", "venue_symbol", "kind", "base", "quote", "tick_size", "step_size", "min_qty",
                    "min_notional")},
            })  # fmt: skip


# --- credentials --------------------------------------------------------------------------------------

KEY = "k3y-PLEASE-NEVER-PRINT-ME-0123456789"
SECRET = "s3cr3t-PLEASE-NEVER-PRINT-ME-9876543210"


async def test_credentials_never_appear_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with emulated(api_key=KEY, api_secret=SECRET) as rig:
        bid, *_ = await rig.books()
        armed = rig.venue.arm(maker("t18-SE1", ETH, Side.BUY, bid))
        assert KEY in str(armed.payload.signed["headers"])  # it is there, and must not leak through repr
        await rig.venue.fire(armed)
        shown = [repr(rig.venue.config), str(rig.venue.config), repr(rig.venue), repr(armed), str(armed)]
        # A wrong secret: the venue refuses the signature.
        wrong = CcxtVenueConfig(KEY, SECRET + "x", urls=rig.venue.config.urls, close_grace=0, stream_ready_timeout=0)
        async with open_ccxt_venue(wrong) as bad:
            with pytest.raises(AuthenticationFailed) as info:
                await bad.fetch_order(ETH, "t18-SE1")
            shown += [str(info.value), repr(info.value), repr(bad)]
        with pytest.raises(ValueError) as empty:
            CcxtVenueConfig(KEY, "")
        shown.append(str(empty.value))

    shown += [r.getMessage() for r in caplog.records]
    assert any("X-MBX-APIKEY" in r.getMessage() for r in caplog.records)  # ccxt did log its headers
    for text in shown:
        assert KEY not in text and SECRET not in text
    assert "api_key=***" in shown[0]


# --- the real engine over ccxt --------------------------------------------------------------------------


async def test_engine_hedges_a_package_through_ccxt(tmp_path: Any) -> None:
    async with emulated() as rig:
        async with engine_on(rig, tmp_path / "journal.db") as engine:
            pid = engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
            handle = engine.handles[pid]
            with trio.fail_after(STREAM_WAIT):
                await handle.wait_until(
                    lambda core: (
                        len(core.orders) == 2 and all(o.status is OrderStatus.OPEN for o in core.orders.values())
                    )
                )
            # Other participants trade through both resting entries.
            for o in handle.core.orders.values():
                market = rig.emu.engine.markets[o.intent.symbol]
                assert o.intent.price is not None
                await rig.on_emulator(rig.emu.trade, market, o.intent.side.opposite, o.intent.price, o.intent.amount)
            state = await settle(engine, pid)
            venue_state = rig.emu.state()
            exposure = handle.core.exposure()

        assert state is State.HEDGED
        assert venue_state["linear"]["positions"]["ETHUSDT"] == str(-QTY)
        # The buy was grossed up for the fee the venue keeps in ETH (at the fee rate ccxt's markets carry):
        # the ETH gained equals the short to the spot lot step.
        bought = handle.core.plan.entry_amount(LegRole.SPOT)
        spot_fee = (bought * rig.emu.engine.markets[ETH].maker_fee).quantize(Decimal("1e-8"), ROUND_HALF_UP)
        held = bought - spot_fee
        assert Decimal(venue_state["spot"]["balances"]["ETH"]["free"]) == 100 + held
        assert 0 <= held - QTY < rig.emu.engine.markets[ETH].step_size
        assert (exposure.spot, exposure.perp) == (held, -QTY)  # what the engine believes is what is held
        assert verify(tmp_path / "journal.db").ok


async def test_engine_flattens_when_the_perp_leg_is_rejected_post_only(tmp_path: Any) -> None:
    async with emulated() as rig:
        # Binance's real answer for a GTX order that would take: -5022.
        await rig.fault(fault="reject", code=-5022, market="linear", path="/order", method="POST")
        async with engine_on(rig, tmp_path / "journal.db") as engine:
            pid = engine.submit(PackageSpec(ETH, ETH_PERP, QTY, min_spread=Decimal(-1)))
            state = await settle(engine, pid)
            reasons = {o.intent.symbol: o.reason for o in engine.core(pid).orders.values()}
            venue_state = rig.emu.state()

        assert state is State.FLAT
        assert reasons[ETH_PERP] == RejectReason.POST_ONLY_CROSS
        spot_orders = venue_state["spot"]["orders"]
        assert [o["status"] for o in spot_orders] == ["CANCELED"] and venue_state["linear"]["orders"] == []
        assert venue_state["linear"]["positions"]["ETHUSDT"] == "0"
        assert venue_state["spot"]["balances"]["ETH"] == {"free": "100", "locked": "0"}
        assert verify(tmp_path / "journal.db").ok


async def test_funding_payments_come_from_the_income_history_with_their_tran_id() -> None:
    async with emulated(emulator={"funding_interval": 60.0}) as rig:
        assert isinstance(rig.venue, FundingVenue)
        _, _, _, perp_ask = await rig.books()
        await rig.place(maker("t30-PE1", ETH_PERP, Side.SELL, perp_ask, QTY))
        await rig.on_emulator(rig.emu.trade, rig.emu.engine.markets[ETH_PERP], Side.BUY, perp_ask, QTY)
        assert await rig.venue.fetch_funding() == []
        await rig.on_emulator(rig.emu.advance, 60.0)  # one funding time
        [paid] = await rig.venue.fetch_funding()
        [income] = [r for r in rig.emu.income if r["incomeType"] == "FUNDING_FEE"]
        assert paid == FundingPayment(ETH_PERP, Decimal(income["income"]), income["time"], str(income["tranId"]))


# --- the lean decode of order answers -----------------------------------------------------------------


async def test_order_path_answers_are_decoded_lean_and_equal_ccxts_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer of the order path (placements resting and filled, cancels of partly filled orders, on both
    markets) is read by the lean decode, and each equals what ccxt's `parse_order` + `order_update` make of
    the same bytes with the same fee ledger."""
    from legguard.adapters.ccxt import _venue as venue_module

    lean = venue_module.lean_order_update
    checked: list[str] = []

    def both(ex: Any, raw: Any, market: Any, markets: Any, fees: Any, *, client_order_id: Any, side: Any) -> Any:
        lean_fees, ccxt_fees = copy.deepcopy(fees), copy.deepcopy(fees)
        got = lean(ex, copy.deepcopy(raw), market, markets, lean_fees, client_order_id=client_order_id, side=side)
        assert got is not None, f"the lean decode refused {raw!r}"
        order = ex.parse_order(copy.deepcopy(raw), market)
        if client_order_id is not None:
            order = {**order, "clientOrderId": client_order_id}
        cid = client_order_id or got.client_order_id
        want = order_update(order, markets, ccxt_fees, symbol=market["symbol"], client_order_id=cid, side=side)
        assert repr(dataclasses.replace(got, timestamp=0)) == repr(dataclasses.replace(want, timestamp=0))
        m = markets[got.symbol]
        key = (got.symbol, got.client_order_id)
        assert lean_fees.totals(key, m.base, m.quote) == ccxt_fees.totals(key, m.base, m.quote)
        checked.append(f"{raw.get('status')} {got.symbol}")
        return lean(ex, raw, market, markets, fees, client_order_id=client_order_id, side=side)

    monkeypatch.setattr(venue_module, "lean_order_update", both)
    async with emulated() as rig:
        bid, _, _, perp_ask = await rig.books()
        emu = rig.emu
        spot_m, perp_m = emu.engine.markets[ETH], emu.engine.markets[ETH_PERP]
        await rig.place(maker("t40-SE1", ETH, Side.BUY, bid))
        await rig.place(maker("t40-PE1", ETH_PERP, Side.SELL, perp_ask))
        await rig.on_emulator(emu.trade, spot_m, Side.SELL, bid, Decimal("0.02"))
        await rig.on_emulator(emu.trade, perp_m, Side.BUY, perp_ask, Decimal("0.02"))
        spot = await rig.venue.cancel_order(ETH, "t40-SE1")
        perp = await rig.venue.cancel_order(ETH_PERP, "t40-PE1")
        # Taker orders: filled at once, the spot answer with its fills (and their fees).
        await rig.place(OrderRequest("t40-SU1", ETH, Side.SELL, OrderType.MARKET, Decimal("0.02")))
        await rig.place(OrderRequest("t40-PU1", ETH_PERP, Side.BUY, OrderType.MARKET, Decimal("0.02"),
                                     reduce_only=True))  # fmt: skip

    assert (spot.status, spot.filled, spot.client_order_id) == (OrderStatus.CANCELED, Decimal("0.02"), "t40-SE1")
    assert (perp.status, perp.filled) == (OrderStatus.CANCELED, Decimal("0.02"))
    assert checked == [f"NEW {ETH}", f"NEW {ETH_PERP}", f"CANCELED {ETH}", f"CANCELED {ETH_PERP}",
                       f"FILLED {ETH}", f"FILLED {ETH_PERP}"]  # fmt: skip


async def test_the_ccxt_path_alone_still_reads_the_order_path() -> None:
    async with emulated(lean_decode=False) as rig:
        bid, *_ = await rig.books()
        placed = await rig.place(maker("t41-SE1", ETH, Side.BUY, bid))
        cancelled = await rig.venue.cancel_order(ETH, "t41-SE1")
    assert (placed.status, cancelled.status, cancelled.client_order_id) == (
        OrderStatus.OPEN, OrderStatus.CANCELED, "t41-SE1")  # fmt: skip
