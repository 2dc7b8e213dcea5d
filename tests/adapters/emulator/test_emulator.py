"""The Binance-wire emulator against UNMODIFIED ccxt / ccxt.pro over real loopback sockets.

Each test runs one emulator (port 0, manual clock: nothing moves unless the test advances it or moves a
price) and real ccxt clients on one asyncio loop. Every ccxt exception asserted here is the one ccxt
raises against Binance for the same error code (the TLS config makes ccxt classify the URLs as Binance's).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from legguard.adapters.emulator import _wire as w
from legguard.adapters.emulator._emulator import DEFAULT_API_SECRET, Emulator, parse_fault
from legguard.adapters.emulator._server import serve_emulator
from legguard.domain import MarketKind, OrderRequest, OrderStatus, OrderType, Side

D = Decimal
SPOT, PERP = "ETH/USDT", "ETH/USDT:USDT"
CLASSES = {"binance": ccxt.binance, "binanceusdm": ccxt.binanceusdm}
PRO = {"binance": ccxtpro.binance, "binanceusdm": ccxtpro.binanceusdm}
BOTH = pytest.mark.parametrize(("exchange_id", "symbol"), [("binance", SPOT), ("binanceusdm", PERP)])
WAIT = 5.0  # seconds: bound on any wait for a message that must come


def run(scenario: Callable[[Emulator], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serve_emulator(seed=7, autoclock=False, **kw) as emu:
            await asyncio.wait_for(scenario(emu), timeout=20)

    asyncio.run(main())


@asynccontextmanager
async def client(emu: Emulator, exchange_id: str, *, pro: bool = False, **extra: Any) -> AsyncIterator[Any]:
    config = {**emu.ccxt_config(exchange_id, credentials=True), "enableRateLimit": False, **extra}
    ex = (PRO if pro else CLASSES)[exchange_id](config)
    try:
        await ex.load_markets()
        yield ex
    finally:
        await ex.close()


async def control(emu: Emulator, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{emu.port}/_emulator/{path}", json=body) as resp,
    ):
        return resp.status, await resp.json()


def best(emu: Emulator, symbol: str) -> tuple[Decimal, Decimal]:
    book = emu.engine.book(symbol, 1)
    assert book.best_bid is not None and book.best_ask is not None
    return book.best_bid, book.best_ask


# --- configuration --------------------------------------------------------------------------------------


def test_ccxt_urls_replace_every_binance_url_of_ccxt_and_ccxt_pro() -> None:
    async def scenario(emu: Emulator) -> None:
        for exchange_id, cls in PRO.items():
            defaults = cls().urls["api"]
            for tls in (False, True):
                ours = emu.ccxt_urls(exchange_id, tls=tls)
                assert set(defaults) <= set(ours), set(defaults) - set(ours)
                assert set(defaults["ws"]) <= set(ours["ws"])
                assert "binance.com" not in json.dumps(ours)
        status, body = await control(emu, "GET", "ccxt-urls")
        assert status == 200
        assert body["binanceusdm"]["fapiPrivate"] == f"http://127.0.0.1:{emu.port}/fapi/v1"
        status, config = await control(emu, "GET", "ccxt-config")
        assert config["binance"]["hostname"] == f"legguard-emulator@127.0.0.1:{emu.tls_port}"
        assert DEFAULT_API_SECRET not in json.dumps(config)

    run(scenario)


@BOTH
def test_load_markets_and_fetch_order_book_match_the_engine(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        emu.advance(3.0)  # three market moves
        async with client(emu, exchange_id) as ex:
            market = ex.market(symbol)
            ours = emu.engine.markets[symbol]
            assert D(str(market["precision"]["price"])) == ours.tick_size
            assert D(str(market["precision"]["amount"])) == ours.step_size
            assert D(str(market["limits"]["cost"]["min"])) == ours.min_notional
            book = await ex.fetch_order_book(symbol, 10)
            engine_book = emu.engine.book(symbol, 10)
            assert [(D(str(p)), D(str(q))) for p, q in book["bids"]] == list(engine_book.bids)
            assert [(D(str(p)), D(str(q))) for p, q in book["asks"]] == list(engine_book.asks)
            assert book["nonce"] == emu.feeds[symbol].update_id

    run(scenario)


# --- the depth stream, as a property ---------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["tick", "move", "place", "cancel", "trade"]),
        st.sampled_from(["ETH/USDT", "ETH/USDT:USDT", "BTC/USDT:USDT"]),
        st.integers(-40, 40),  # ticks or basis points, depending on the op
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS)
def test_depth_diffs_replayed_on_the_snapshot_rebuild_the_book_exactly(ops: list[tuple[str, str, int]]) -> None:
    """Whatever the market and our orders do, snapshot + every diff == the engine's book, with update ids
    chained the way ccxt checks them (spot: U == previous u + 1; USDⓈ-M: pu == previous u)."""
    emu = Emulator(seed=1, autoclock=False, tick_seconds=0.5)  # not served: the stream is captured
    events: dict[str, list[dict[str, Any]]] = {s: [] for s in emu.feeds}
    emu.hub.depth = lambda market, event: events[market.symbol].append(event)
    snapshots = {s: (f.update_id, *f.snapshot(10_000)) for s, f in emu.feeds.items()}
    for n, (op, symbol, k) in enumerate(ops):
        market = emu.engine.markets[symbol]
        bid, ask = best(emu, symbol)
        if op == "tick":
            emu.advance(0.5)
        elif op == "move":
            emu.move(market, (bid + ask) / 2 * (1 + D(k) / 10_000))
        elif op == "place":
            side = Side.BUY if k < 0 else Side.SELL
            price = bid - market.tick_size * abs(k) if side is Side.BUY else ask + market.tick_size * abs(k)
            request = OrderRequest(f"o{n}", symbol, side, OrderType.LIMIT, market.min_qty * 100, price, post_only=True)
            emu.place(request, w.WireOrder(market, f"o{n}", "LIMIT", "GTX", price, emu.now_ms()))
        elif op == "cancel" and emu.engine.open_orders(symbol):
            emu.cancel((symbol, emu.engine.open_orders(symbol)[0].client_order_id))
        elif op == "trade":
            aggressor = Side.SELL if k < 0 else Side.BUY
            emu.trade(market, aggressor, bid if aggressor is Side.SELL else ask, market.min_qty * max(abs(k), 1))
    for symbol, (last, bids0, asks0) in snapshots.items():
        bids, asks = dict(bids0), dict(asks0)
        for event in events[symbol]:
            if "pu" in event:
                assert event["pu"] == last
            assert event["U"] == last + 1
            last = event["u"]
            for side, changes in ((bids, event["b"]), (asks, event["a"])):
                for price, qty in changes:
                    if D(qty) == 0:
                        side.pop(D(price), None)
                    else:
                        side[D(price)] = D(qty)
        book = emu.engine.book(symbol, 10_000)
        assert sorted(bids.items(), reverse=True) == list(book.bids)
        assert sorted(asks.items()) == list(book.asks)
        assert last == emu.feeds[symbol].update_id


# --- orders ---------------------------------------------------------------------------------------------


@BOTH
def test_post_only_order_rests_and_is_fetched_and_cancelled_by_client_id(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, symbol)
        async with client(emu, exchange_id) as ex:
            created = await ex.create_order(
                symbol, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "pkg1-spot-0"}
            )
            assert (created["status"], created["clientOrderId"], created["postOnly"]) == ("open", "pkg1-spot-0", True)
            fetched = await ex.fetch_order(None, symbol, {"clientOrderId": "pkg1-spot-0"})
            assert fetched["id"] == created["id"] and fetched["amount"] == 0.05 and fetched["status"] == "open"
            assert [o["clientOrderId"] for o in await ex.fetch_open_orders(symbol)] == ["pkg1-spot-0"]
            canceled = await ex.cancel_order(None, symbol, {"origClientOrderId": "pkg1-spot-0"})
            assert canceled["status"] == "canceled"
            assert (await ex.fetch_order(created["id"], symbol))["status"] == "canceled"
        assert emu.engine.get(symbol, "pkg1-spot-0").status is OrderStatus.CANCELED
        _, state = await control(emu, "GET", "state")
        section = state["spot" if exchange_id == "binance" else "linear"]
        assert [(o["clientOrderId"], o["status"]) for o in section["orders"]] == [("pkg1-spot-0", "CANCELED")]

    run(scenario)


@pytest.mark.parametrize(
    ("exchange_id", "symbol", "error"),
    # Binance's spot -2010 text maps to OrderImmediatelyFillable; its futures -5022 to OrderNotFillable.
    [("binance", SPOT, ccxt.OrderImmediatelyFillable), ("binanceusdm", PERP, ccxt.OrderNotFillable)],
)
def test_post_only_that_would_cross_is_rejected_and_leaves_nothing(exchange_id: str, symbol: str, error: type) -> None:
    async def scenario(emu: Emulator) -> None:
        _, ask = best(emu, symbol)
        async with client(emu, exchange_id) as ex:
            with pytest.raises(error):
                await ex.create_order(
                    symbol, "limit", "buy", 0.05, float(ask), {"postOnly": True, "clientOrderId": "x1"}
                )
        assert emu.engine.all_orders(symbol) == []

    run(scenario)


@pytest.mark.parametrize(("exchange_id", "symbol", "amount"), [("binance", SPOT, 500), ("binanceusdm", PERP, 5000)])
def test_insufficient_balance_and_margin_raise_insufficient_funds(exchange_id: str, symbol: str, amount: int) -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, symbol)
        async with client(emu, exchange_id) as ex:
            with pytest.raises(ccxt.InsufficientFunds):
                await ex.create_order(symbol, "limit", "buy", amount, float(bid), {"postOnly": True})
        assert emu.engine.all_orders(symbol) == []

    run(scenario)


@BOTH
def test_duplicate_client_order_id_is_rejected_and_the_first_order_stays(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, symbol)
        params = {"postOnly": True, "clientOrderId": "dup-1"}
        async with client(emu, exchange_id) as ex:
            await ex.create_order(symbol, "limit", "buy", 0.05, float(bid), params)
            with pytest.raises(ccxt.InvalidOrder, match=r"-2010|-4116"):
                await ex.create_order(symbol, "limit", "buy", 0.07, float(bid - 1), params)
            assert (await ex.fetch_order(None, symbol, {"clientOrderId": "dup-1"}))["amount"] == 0.05

    run(scenario)


@BOTH
def test_a_closed_orders_client_id_is_accepted_again_as_a_new_order(exchange_id: str, symbol: str) -> None:
    # Binance keeps client ids unique among OPEN orders only (issue 10, defect 5): a reused id is no proof
    # that the earlier order never executed. Both orders show in the state dump; the id names the newest.
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, symbol)
        params = {"postOnly": True, "clientOrderId": "again-1"}
        async with client(emu, exchange_id) as ex:
            first = await ex.create_order(symbol, "limit", "buy", 0.05, float(bid), params)
            await ex.cancel_order(None, symbol, {"clientOrderId": "again-1"})
            second = await ex.create_order(symbol, "limit", "buy", 0.07, float(bid - 1), params)
            assert second["id"] != first["id"] and second["status"] == "open"
            fetched = await ex.fetch_order(None, symbol, {"clientOrderId": "again-1"})
            assert (fetched["amount"], fetched["status"]) == (0.07, "open")
            with pytest.raises(ccxt.InvalidOrder, match=r"-2010|-4116"):  # open again: refused again
                await ex.create_order(symbol, "limit", "buy", 0.05, float(bid - 2), params)
        kind = "spot" if exchange_id == "binance" else "linear"
        dump = [o for o in emu.state()[kind]["orders"] if o["clientOrderId"] == "again-1"]
        assert [o["status"] for o in dump] == ["CANCELED", "NEW"]

    run(scenario)


@BOTH
def test_unknown_orders_raise_order_not_found(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, exchange_id) as ex:
            with pytest.raises(ccxt.OrderNotFound, match="-2013"):
                await ex.fetch_order(None, symbol, {"clientOrderId": "never-sent"})
            with pytest.raises(ccxt.OrderNotFound, match="-2011"):
                await ex.cancel_order(None, symbol, {"clientOrderId": "never-sent"})
            with pytest.raises(ccxt.OrderNotFound):
                await ex.fetch_order("999999", symbol)

    run(scenario)


def test_filter_failures_carry_binance_codes() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binance") as spot, client(emu, "binanceusdm") as perp:
            base = {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
            with pytest.raises(ccxt.InvalidOrder, match="PRICE_FILTER"):
                await spot.privatePostOrder({**base, "quantity": "0.01", "price": "2000.005"})
            with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
                await spot.privatePostOrder({**base, "quantity": "0.00001", "price": "2000.00"})
            with pytest.raises(ccxt.BadRequest, match="MIN_NOTIONAL"):
                await spot.privatePostOrder({**base, "quantity": "0.001", "price": "2000.00"})
            with pytest.raises(ccxt.BadRequest, match="-1111"):
                await perp.fapiPrivatePostOrder({**base, "quantity": "0.01", "price": "2000.005"})
            with pytest.raises(ccxt.InvalidOrder, match="-4164"):
                await perp.fapiPrivatePostOrder({**base, "quantity": "0.001", "price": "2000.00"})
            with pytest.raises(ccxt.BadRequest, match="-1102"):
                await perp.fapiPrivatePostOrder({**base, "price": "2000.00"})
        assert emu.engine.all_orders() == []

    run(scenario)


@BOTH
def test_market_orders_take_liquidity_and_ioc_leftovers_expire(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        bid, ask = best(emu, symbol)
        market = emu.engine.markets[symbol]
        async with client(emu, exchange_id) as ex:
            taken = await ex.create_order(symbol, "market", "buy", 0.05, None, {"clientOrderId": "m1"})
            assert (taken["status"], taken["filled"]) == ("closed", 0.05)
            fill = emu.engine.fills(symbol)[-1]
            assert (fill.price, fill.maker) == (ask, False)
            assert (
                fill.fee
                == (fill.quantity if market.kind is MarketKind.SPOT else fill.quantity * ask) * market.taker_fee
            )
            published = emu.feeds[symbol].update_id
            ioc = await ex.create_order(symbol, "limit", "buy", 0.05, float(bid - 10), {"timeInForce": "IOC"})
            assert (ioc["status"], ioc["filled"]) == ("expired", 0.0)
            assert emu.feeds[symbol].update_id == published  # its unfilled rest never showed in the book
            if market.kind is MarketKind.SPOT:  # a market buy for an amount of quote (quoteOrderQty)
                spent = await ex.create_order(symbol, "market", "buy", 0.01, float(ask))
                assert 0 < spent["filled"] <= 0.01 and spent["status"] == "closed"

    run(scenario)


def test_autoclock_moves_the_market_in_real_time_and_streams_stay_consistent() -> None:
    async def main() -> None:
        async with (
            serve_emulator(seed=11, autoclock=True, tick_seconds=0.02) as emu,
            client(emu, "binanceusdm", pro=True) as ex,
        ):
            first = await asyncio.wait_for(ex.watch_order_book(PERP), WAIT)
            nonce = first["nonce"]
            for _ in range(5):  # each a new market step, a few tens of milliseconds apart
                book = await asyncio.wait_for(ex.watch_order_book(PERP), WAIT)
                assert book["nonce"] > nonce
                nonce = book["nonce"]
            rest = await ex.fetch_order_book(PERP, 1000)
            assert rest["nonce"] >= nonce

    asyncio.run(asyncio.wait_for(main(), 20))


# --- authentication -------------------------------------------------------------------------------------


def test_bad_signature_key_and_timestamp_are_refused_like_binance() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm", secret="not-the-secret") as ex:
            with pytest.raises(ccxt.AuthenticationError, match="-1022") as info:
                await ex.fetch_balance()
            assert "not-the-secret" not in str(info.value) and DEFAULT_API_SECRET not in str(info.value)
        async with client(emu, "binance", apiKey="someone-else") as ex:
            with pytest.raises(ccxt.AuthenticationError, match="-2015"):
                await ex.fetch_balance()
        async with client(emu, "binance") as ex:
            ex.options["timeDifference"] = 70_000  # the client's clock is 70 s behind
            with pytest.raises(ccxt.InvalidNonce, match="-1021"):
                await ex.fetch_balance()

    run(scenario)


# --- faults and limits ----------------------------------------------------------------------------------


def test_rate_limits_answer_429_which_ccxt_raises_as_ddos_protection() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as ex:
            status, _ = await control(emu, "POST", "faults", {"market": "linear", "fault": "reject", "code": -1003})
            assert status == 200
            with pytest.raises(ccxt.DDoSProtection, match="-1003"):
                await ex.fetch_order_book(PERP)
            await ex.fetch_order_book(PERP)  # count 1: consumed
            emu.WEIGHT_LIMITS = {MarketKind.LINEAR: 3}  # the real limiter, made small
            emu._weights.clear()
            for _ in range(3):
                await ex.fapiPublicGetTime()
            with pytest.raises(ccxt.DDoSProtection, match="-1003"):
                await ex.fapiPublicGetTime()

    run(scenario)


def test_reject_and_http_error_faults_happen_before_the_order_exists() -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, PERP)
        async with client(emu, "binanceusdm") as ex:
            emu.add_fault({"market": "linear", "fault": "reject", "code": -2019, "path": "/order"})
            with pytest.raises(ccxt.InsufficientFunds):
                await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True})
            emu.add_fault({"market": "linear", "fault": "http_error", "status": 503, "method": "POST"})
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True})
        assert emu.engine.all_orders() == []
        assert emu.faults == []

    run(scenario)


def test_ack_timeout_and_malformed_response_leave_the_order_in_place() -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, PERP)
        async with client(emu, "binanceusdm", timeout=300) as ex:
            emu.add_fault({"market": "linear", "fault": "ack_timeout", "path": "/order", "method": "POST"})
            with pytest.raises(ccxt.RequestTimeout):
                await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "t1"})
            emu.add_fault({"market": "linear", "fault": "malformed_response", "path": "/order", "method": "POST"})
            # ccxt does not raise on a body that is not JSON: it hands back an order with nothing in it.
            garbled = await ex.create_order(
                PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "t2"}
            )
            assert garbled["id"] is None and garbled["clientOrderId"] is None
            # The outcome was unknown to the client; reconciling by client id finds both orders.
            for cid in ("t1", "t2"):
                assert (await ex.fetch_order(None, PERP, {"clientOrderId": cid}))["status"] == "open"

    run(scenario)


def test_a_fault_for_one_order_type_passes_every_other_order_by() -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, PERP)
        async with client(emu, "binanceusdm", timeout=300) as ex:
            emu.add_fault({"market": "linear", "fault": "ack_timeout", "path": "/order", "method": "POST",
                           "order_type": "market"})  # fmt: skip
            # A resting limit order goes through untouched and leaves the fault armed...
            limit = await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True,
                                                                                   "clientOrderId": "l1"})  # fmt: skip
            assert limit["status"] == "open" and [f.order_type for f in emu.faults] == ["MARKET"]
            # ...the market order takes it: it fills, and its answer never comes.
            with pytest.raises(ccxt.RequestTimeout):
                await ex.create_order(PERP, "market", "sell", 0.05, None, {"clientOrderId": "m1"})
            assert emu.faults == []
            assert (await ex.fetch_order(None, PERP, {"clientOrderId": "m1"}))["status"] == "closed"

    run(scenario)


def test_delay_fault_holds_the_request_on_the_emulator_clock() -> None:
    async def scenario(emu: Emulator) -> None:
        bid = best(emu, SPOT)[0] - 5  # stays below the ask while the clock moves the market
        async with client(emu, "binance") as ex:
            emu.add_fault({"market": "spot", "fault": "delay", "delay_ms": 1500, "count": 1})
            sent = asyncio.ensure_future(
                ex.create_order(SPOT, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "d1"})
            )
            await asyncio.wait_for(emu.wait_until(lambda: emu.held == 1), WAIT)
            assert emu.engine.all_orders() == []  # held before it took effect
            emu.advance(1.0)
            assert not sent.done()
            emu.advance(0.6)
            order = await asyncio.wait_for(sent, WAIT)
            assert order["clientOrderId"] == "d1" and order["status"] == "open"

    run(scenario)


def test_delay_fault_places_a_held_request_even_after_the_client_gave_up() -> None:
    """Issue 10, defect 2: a gateway holding a request still executes it when the client has hung up (no
    real gateway unsends a request): the order appears late, inside its recvWindow."""

    async def scenario(emu: Emulator) -> None:
        bid = best(emu, PERP)[0] - 5
        async with client(emu, "binanceusdm", timeout=300) as ex:
            emu.add_fault({"market": "linear", "fault": "delay", "delay_ms": 1500, "count": 1})
            with pytest.raises(ccxt.RequestTimeout):
                await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "g1"})
        # the client is gone altogether (its connections closed) while the gateway still holds the request
        assert emu.engine.all_orders() == []
        await asyncio.sleep(0.1)
        emu.advance(1.6)
        await asyncio.wait_for(emu.wait_until(lambda: emu.held == 0), WAIT)
        await asyncio.sleep(0.05)  # the held request runs its handler
        async with client(emu, "binanceusdm") as ex:
            order = await ex.fetch_order(None, PERP, {"clientOrderId": "g1"})
            assert order["status"] == "open"

    run(scenario)


def test_partial_fill_fault_fills_part_and_the_rest_never_fills() -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, PERP)
        async with client(emu, "binanceusdm") as ex:
            emu.add_fault({"market": "linear", "fault": "partial_fill", "ratio": 0.4})
            await ex.create_order(PERP, "limit", "buy", 1.0, float(bid), {"postOnly": True, "clientOrderId": "p1"})
            order = await ex.fetch_order(None, PERP, {"clientOrderId": "p1"})
            assert (order["status"], order["filled"]) == ("open", 0.4)
            emu.move(emu.engine.markets[PERP], bid - 5)  # the market trades through the rest
            order = await ex.fetch_order(None, PERP, {"clientOrderId": "p1"})
            assert (order["status"], order["filled"]) == ("open", 0.4)
            assert emu.engine.positions()[PERP] == D("0.4")

    run(scenario)


def test_parse_fault_names_the_bad_field() -> None:
    for spec, field in [
        ({"fault": "explode"}, "fault"),
        ({"fault": "delay", "delay_ms": -1}, "delay_ms"),
        ({"fault": "reject", "code": 2010}, "code"),
        ({"fault": "reject", "code": -1003, "market": "coinm"}, "market"),
        ({"fault": "partial_fill", "ratio": 1.5}, "ratio"),
        ({"fault": "http_error", "status": 200}, "status"),
        ({"fault": "delay", "delay_ms": 5, "count": 0}, "count"),
        ({"fault": "ack_timeout", "order_type": ""}, "order_type"),
        ({"fault": "ack_timeout", "order_type": 7}, "order_type"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            parse_fault(spec)


def test_control_api_reports_bad_input_and_state() -> None:
    async def scenario(emu: Emulator) -> None:
        status, body = await control(emu, "POST", "faults", {"fault": "delay", "delay_ms": "soon"})
        assert status == 400 and body["error"].startswith("delay_ms:")
        status, body = await control(emu, "POST", "move", {"market": "linear", "symbol": "DOGEUSDT", "price": 1})
        assert status == 400 and "DOGEUSDT" in body["error"]
        status, body = await control(emu, "POST", "move", {"market": "spot", "symbol": "BTCUSDT", "price": "61000"})
        assert status == 200 and abs(D(body["mid"]) - 61000) <= D("0.01")  # to the tick
        status, state = await control(emu, "GET", "state")
        assert state["spot"]["balances"]["ETH"] == {"free": "100", "locked": "0"}
        assert state["linear"]["positions"] == {"BTCUSDT": "0", "ETHUSDT": "0"}
        status, body = await control(emu, "POST", "advance", {"seconds": 2})
        assert status == 200

    run(scenario)


def test_control_api_refuses_clients_that_are_not_on_loopback() -> None:
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from legguard.adapters.emulator._rest import _loopback

    def request_from(address: str) -> Any:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, default=None: (
            (address, 5555) if key == "peername" else default
        )
        return make_mocked_request("GET", "/_emulator/state", transport=transport)

    assert _loopback(request_from("127.0.0.1")) and _loopback(request_from("::1"))
    assert not _loopback(request_from("10.1.2.3")) and not _loopback(request_from("192.168.0.7"))


# --- countdownCancelAll and listen keys -----------------------------------------------------------------


def test_countdown_cancel_all_fires_when_not_rearmed() -> None:
    async def scenario(emu: Emulator) -> None:
        bid = best(emu, PERP)[0] - 100  # out of reach of the market's moves while the clock advances
        async with client(emu, "binanceusdm") as ex:
            await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "c1"})
            armed = await ex.fapiPrivatePostCountdownCancelAll({"symbol": "ETHUSDT", "countdownTime": 10_000})
            assert armed == {"symbol": "ETHUSDT", "countdownTime": "10000"}
            emu.advance(9.0)
            await ex.fapiPrivatePostCountdownCancelAll({"symbol": "ETHUSDT", "countdownTime": 10_000})  # heartbeat
            emu.advance(9.0)
            assert (await ex.fetch_order(None, PERP, {"clientOrderId": "c1"}))["status"] == "open"
            emu.advance(1.5)
            assert (await ex.fetch_order(None, PERP, {"clientOrderId": "c1"}))["status"] == "canceled"
            # countdownTime 0 disarms
            await ex.create_order(PERP, "limit", "buy", 0.05, float(bid), {"postOnly": True, "clientOrderId": "c2"})
            await ex.fapiPrivatePostCountdownCancelAll({"symbol": "ETHUSDT", "countdownTime": 1_000})
            await ex.fapiPrivatePostCountdownCancelAll({"symbol": "ETHUSDT", "countdownTime": 0})
            emu.advance(5.0)
            assert (await ex.fetch_order(None, PERP, {"clientOrderId": "c2"}))["status"] == "open"

    run(scenario)


def test_listen_key_is_stable_until_closed_and_expires_without_keepalive() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as ex:
            first = (await ex.fapiPrivatePostListenKey())["listenKey"]
            assert (await ex.fapiPrivatePostListenKey())["listenKey"] == first
            emu.advance(3000)
            assert (await ex.fapiPrivatePutListenKey())["listenKey"] == first  # keepalive
            emu.advance(3000)
            assert emu.listen_key == first
            emu.advance(700)
            assert emu.listen_key is None
            with pytest.raises(ccxt.AuthenticationError, match="-1125"):
                await ex.fapiPrivatePutListenKey()
            second = (await ex.fapiPrivatePostListenKey())["listenKey"]
            assert second != first
            await ex.fapiPrivateDeleteListenKey()
            assert emu.listen_key is None

    run(scenario, tick_seconds=600.0)  # an hour of emulator time, without 3600 market moves


# --- websockets -----------------------------------------------------------------------------------------


@BOTH
def test_watch_order_book_stays_consistent_with_rest_and_the_engine(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, exchange_id, pro=True) as ex:
            await asyncio.wait_for(ex.watch_order_book(symbol), WAIT)
            market = emu.engine.markets[symbol]
            for step in range(4):
                if step == 2:
                    emu.move(market, emu.driver.mid_of(market) * D("1.002"))
                else:
                    emu.advance(1.0)
                book = await asyncio.wait_for(ex.watch_order_book(symbol), WAIT)
                while book["nonce"] < emu.feeds[symbol].update_id:
                    book = await asyncio.wait_for(ex.watch_order_book(symbol), WAIT)
                engine_book = emu.engine.book(symbol, 20)
                assert [(D(str(p)), D(str(q))) for p, q in book["bids"][:20]] == list(engine_book.bids)
                assert [(D(str(p)), D(str(q))) for p, q in book["asks"][:20]] == list(engine_book.asks)
            rest = await ex.fetch_order_book(symbol, 1000)
            assert rest["nonce"] == book["nonce"] and rest["bids"] == book["bids"] and rest["asks"] == book["asks"]

    run(scenario)


@BOTH
def test_watch_orders_delivers_the_ack_and_the_fill(exchange_id: str, symbol: str) -> None:
    async def scenario(emu: Emulator) -> None:
        kind, role = (MarketKind.SPOT, "api") if exchange_id == "binance" else (MarketKind.LINEAR, "user")
        bid, _ = best(emu, symbol)
        async with client(emu, exchange_id, pro=True) as ex:
            ack = asyncio.ensure_future(ex.watch_orders(symbol))
            await asyncio.wait_for(emu.wait_until(lambda: emu.hub.count(kind, role) == 1), WAIT)
            await ex.create_order(symbol, "limit", "buy", 0.2, float(bid), {"postOnly": True, "clientOrderId": "w1"})
            seen = await asyncio.wait_for(ack, WAIT)
            assert [(o["clientOrderId"], o["status"], o["filled"]) for o in seen] == [("w1", "open", 0.0)]
            emu.move(emu.engine.markets[symbol], bid - 2)  # the market comes down through our bid
            seen = await asyncio.wait_for(ex.watch_orders(symbol), WAIT)
            last = seen[-1]
            assert (last["clientOrderId"], last["status"], last["filled"], last["price"]) == (
                "w1",
                "closed",
                0.2,
                float(bid),
            )
            fill = emu.engine.fills(symbol)[-1]
            assert D(str(last["fee"]["cost"])) == fill.fee and last["fee"]["currency"] == fill.fee_asset

    run(scenario)


@BOTH
def test_a_fills_execution_report_is_written_before_the_answer_of_the_request_that_filled(
    exchange_id: str, symbol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binance publishes an execution report when the trade happens: a client never reads the venue's answer
    to a request before the reports of the trades that request made (nor, so, any later answer about the
    order). The emulator lets its websocket senders write before the REST answer leaves."""
    written: list[str] = []
    send_str, prepare = web.WebSocketResponse.send_str, web.StreamResponse.prepare

    async def logged_send(self: web.WebSocketResponse, data: str, compress: Any = None) -> None:
        await send_str(self, data, compress)
        report = "ORDER_TRADE_UPDATE" if exchange_id == "binanceusdm" else "executionReport"
        if report in data and '"TRADE"' in data:
            written.append("report")

    async def logged_prepare(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        if request.path.endswith("/order") and request.method == "POST":
            written.append("answer")
        return await prepare(self, request)

    monkeypatch.setattr(web.WebSocketResponse, "send_str", logged_send)
    monkeypatch.setattr(web.StreamResponse, "prepare", logged_prepare)

    async def scenario(emu: Emulator) -> None:
        kind, role = (MarketKind.SPOT, "api") if exchange_id == "binance" else (MarketKind.LINEAR, "user")
        async with client(emu, exchange_id, pro=True) as ex:
            watching = asyncio.ensure_future(ex.watch_orders(symbol))
            await asyncio.wait_for(emu.wait_until(lambda: emu.hub.count(kind, role) == 1), WAIT)
            await ex.create_order(symbol, "market", "buy", 0.05, None, {"clientOrderId": "o1"})
            await asyncio.wait_for(watching, WAIT)
        assert written == ["report", "answer"]

    run(scenario)


def test_liquidation_arrives_as_an_autoclose_order() -> None:
    async def scenario(emu: Emulator) -> None:
        _, ask = best(emu, PERP)
        async with client(emu, "binanceusdm", pro=True) as ex:
            await ex.create_order(PERP, "limit", "sell", 0.3, float(ask), {"postOnly": True, "clientOrderId": "s1"})
            emu.move(emu.engine.markets[PERP], ask + 2)
            assert emu.engine.positions()[PERP] == D("-0.3")
            watching = asyncio.ensure_future(ex.watch_orders(PERP))
            await asyncio.wait_for(emu.wait_until(lambda: emu.hub.count(MarketKind.LINEAR, "user") == 1), WAIT)
            status, body = await control(emu, "POST", "liquidate", {"symbol": "ETHUSDT", "quantity": "0.1"})
            assert status == 200 and body["clientOrderId"].startswith("autoclose-")
            seen = await asyncio.wait_for(watching, WAIT)
            assert (seen[-1]["clientOrderId"], seen[-1]["status"], seen[-1]["filled"]) == (
                body["clientOrderId"],
                "closed",
                0.1,
            )
        assert emu.engine.positions()[PERP] == D("-0.2")

    run(scenario)


def test_ws_drop_fault_breaks_the_streams_of_that_market() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm", pro=True) as ex:
            await asyncio.wait_for(ex.watch_order_book(PERP), WAIT)
            pending = asyncio.ensure_future(ex.watch_order_book(PERP))
            status, _ = await control(emu, "POST", "faults", {"market": "linear", "fault": "ws_drop"})
            assert status == 200
            with pytest.raises(ccxt.NetworkError):
                await asyncio.wait_for(pending, WAIT)
            assert emu.hub.count(MarketKind.LINEAR, "market") == 0

    run(scenario)


def test_outage_fault_answers_503_everywhere_for_a_while_and_keeps_the_account() -> None:
    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, PERP)
        async with client(emu, "binanceusdm", pro=True) as ex:
            order = await ex.create_order(PERP, "limit", "buy", 0.05, float(bid - 50), {"postOnly": True,
                                          "clientOrderId": "kept"})  # fmt: skip
            await asyncio.wait_for(ex.watch_order_book(PERP), WAIT)
            pending = asyncio.ensure_future(ex.watch_order_book(PERP))
            status, _ = await control(emu, "POST", "faults", {"fault": "outage", "seconds": 30})
            assert status == 200
            with pytest.raises(ccxt.NetworkError):  # the websocket is dropped ...
                await asyncio.wait_for(pending, WAIT)
            with pytest.raises(ccxt.NetworkError):  # ... and cannot come back
                await asyncio.wait_for(ex.watch_order_book(PERP), WAIT)
            with pytest.raises(ccxt.ExchangeNotAvailable):  # every REST request: 503
                await ex.fetch_order(order["id"], PERP)
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await ex.create_order(PERP, "limit", "buy", 0.05, float(bid - 50), {"postOnly": True})
            status, state = await control(emu, "GET", "state")  # the control API still answers
            assert status == 200 and state["outage_seconds_left"] == 30
            emu.advance(30.0)  # it is over: the order rests as it did, nothing else reached the venue
            assert (await ex.fetch_order(order["id"], PERP))["status"] == "open"
            assert [o.client_order_id for o in emu.engine.all_orders()] == ["kept"]
            await control(emu, "POST", "faults", {"fault": "outage", "seconds": 30})
            await control(emu, "POST", "faults", {"clear": True})  # ends it at once
            assert (await ex.fetch_order(order["id"], PERP))["status"] == "open"

    run(scenario)


def test_spot_user_stream_with_a_bad_signature_is_refused() -> None:
    async def scenario(emu: Emulator) -> None:
        url = emu.ccxt_urls("binance")["ws"]["ws-api"]["spot"]
        params = {"apiKey": emu.api_key, "timestamp": emu.now_ms(), "signature": "00" * 32}
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_json({"id": "7", "method": "userDataStream.subscribe.signature", "params": params})
            answer = await asyncio.wait_for(ws.receive_json(), WAIT)
        assert answer == {
            "id": "7",
            "status": 400,
            "error": {"code": -1022, "msg": "Signature for this request is not valid."},
        }
        async with client(emu, "binance", pro=True, secret="wrong-secret") as ex:
            # ccxt 4.5 turns this refusal into a KeyError while cleaning up its own subscription table (it
            # does the same against Binance); either way watch_orders fails instead of waiting forever.
            with pytest.raises((ccxt.AuthenticationError, KeyError)):
                await asyncio.wait_for(ex.watch_orders(SPOT), WAIT)
        assert emu.hub.count(MarketKind.SPOT, "api") == 0

    run(scenario)


# --- the finding behind the TLS listener ----------------------------------------------------------------


def test_plain_http_urls_lose_ccxts_futures_exception_table() -> None:
    """What ccxt does with a localhost URL: only the generic table applies, so futures-only codes such as
    -2019 degrade to ExchangeError (spot's -2010 texts are in the generic table and still map)."""

    async def scenario(emu: Emulator) -> None:
        bid, _ = best(emu, PERP)
        plain = {"urls": {"api": emu.ccxt_urls("binanceusdm")}, "apiKey": emu.api_key, "secret": DEFAULT_API_SECRET}
        options = {"fetchCurrencies": False, "fetchMargins": False}
        ex = ccxt.binanceusdm({**plain, "options": options, "enableRateLimit": False})
        try:
            with pytest.raises(ccxt.ExchangeError) as info:
                await ex.create_order(PERP, "limit", "buy", 5000, float(bid), {"postOnly": True})
            assert type(info.value) is ccxt.ExchangeError and "-2019" in str(info.value)
        finally:
            await ex.close()

    run(scenario)


def test_trade_flow_arrives_between_book_moves_and_fills_a_maker_order_behind_its_queue() -> None:
    """The market prints at the touch at seeded offsets between two moves (not as one burst at the move), and a
    post-only order at the touch fills only after the volume queued ahead of it has traded."""
    emu = Emulator(seed=3, autoclock=False, tick_seconds=1.0)  # not served: the engine is driven directly
    flow = emu.driver.step(1.0, emu.now())
    delays = [d for d, _ in flow]
    assert delays and all(0 <= d < 1.0 for d in delays) and delays == sorted(delays)
    assert len({round(d, 6) for d in delays}) > len(delays) // 2  # spread out, not one instant
    market = emu.engine.markets["ETH/USDT"]
    bid = emu.engine.book(market.symbol).best_bid
    assert bid is not None
    emu.engine.place(OrderRequest("q1", market.symbol, Side.BUY, OrderType.LIMIT, Decimal("0.05"), bid,
                                  post_only=True), emu.now())  # fmt: skip
    ahead = emu.engine.queue_ahead(market.symbol, "q1")
    assert ahead > 0
    sold = Decimal(0)
    while emu.engine.get(market.symbol, "q1").filled == 0:
        emu.engine.print_trade(market.symbol, Side.SELL, bid, market.step_size * 10, emu.now())
        sold += market.step_size * 10
    assert sold > ahead  # it filled only once everything ahead of it had traded
