"""The emulator's market data and account endpoints (issue 17) through unmodified ccxt: consistent with the
emulator's own trades and books, deterministic from the seed, and the account settings acting on margin,
wallets, income and the user streams.
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
import pytest

from legguard.adapters.emulator._emulator import Emulator
from legguard.adapters.emulator._market_data import MINUTE_MS
from legguard.adapters.emulator._server import serve_emulator
from legguard.domain import MarketKind

D = Decimal
SPOT, PERP = "ETH/USDT", "ETH/USDT:USDT"
CLASSES = {"binance": ccxt.binance, "binanceusdm": ccxt.binanceusdm}
WAIT = 5.0


def run(scenario: Callable[[Emulator], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        async with serve_emulator(**{"seed": 7, "autoclock": False, **kw}) as emu:
            return await asyncio.wait_for(scenario(emu), timeout=30)

    return asyncio.run(main())


@asynccontextmanager
async def client(emu: Emulator, exchange_id: str) -> AsyncIterator[Any]:
    ex = CLASSES[exchange_id]({**emu.ccxt_config(exchange_id, credentials=True), "enableRateLimit": False})
    try:
        await ex.load_markets()
        yield ex
    finally:
        await ex.close()


async def raw(emu: Emulator, method: str, path: str) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{emu.port}{path}") as resp,
    ):
        text = await resp.text()
        return resp.status, resp.content_type, json.loads(text)


# --- market data ----------------------------------------------------------------------------------------


def test_klines_are_backfilled_contiguous_and_deterministic_from_the_seed() -> None:
    async def scenario(emu: Emulator) -> list[list[Any]]:
        async with client(emu, "binance") as spot:
            candles: list[list[Any]] = await spot.fetch_ohlcv(SPOT, "1m", limit=1000)
            hours = await spot.fetch_ohlcv(SPOT, "1h", limit=30)
        opens = [c[0] for c in candles]
        assert len(candles) == 1000 and opens == list(range(opens[0], opens[0] + 1000 * MINUTE_MS, MINUTE_MS))
        assert all(c[3] <= min(c[1], c[4]) and c[2] >= max(c[1], c[4]) for c in candles)
        assert all(c[5] > 0 for c in candles[:-1])  # history has volume
        # The last candle ends at the live book: its close is the emulator's current mid (to the tick).
        mid = emu.engine.mid(SPOT)
        assert mid is not None and abs(D(str(candles[-1][4])) - mid) <= D("0.05")
        # Hourly candles are the minutes folded.
        assert len(hours) == 30 and hours[-2][0] + 3_600_000 == hours[-1][0]
        return [c[:5] for c in candles[:-1]]

    first, again, other = run(scenario, seed=11), run(scenario, seed=11), run(scenario, seed=12)
    assert [c[1:] for c in first] == [c[1:] for c in again]
    assert [c[1:] for c in first] != [c[1:] for c in other]


def test_our_fills_are_public_trades_and_count_in_the_candle_and_the_ticker() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp:
            before = (await perp.fetch_ohlcv(PERP, "1m", limit=1))[-1]
            # A taker buy: it is on the tape as a trade whose buyer was the taker.
            await perp.create_order(PERP, "market", "buy", 0.7)
            mine = (await perp.fetch_my_trades(PERP))[-1]
            trades = await perp.fetch_trades(PERP, limit=50)
            assert any(
                t["price"] == mine["price"] and t["amount"] == 0.7 and t["side"] == "buy" and t["takerOrMaker"] is None
                for t in trades
            ), trades
            after = (await perp.fetch_ohlcv(PERP, "1m", limit=1))[-1]
            assert after[0] == before[0] and after[5] >= before[5] + 0.7
            ticker = await perp.fetch_ticker(PERP)
            assert ticker["last"] == trades[-1]["price"]
            book = await perp.fetch_order_book(PERP, 5)
            tops = await perp.fetch_bids_asks([PERP])
            assert tops[PERP]["bid"] == book["bids"][0][0] and tops[PERP]["ask"] == book["asks"][0][0]

    run(scenario)


def test_the_market_prints_build_the_live_candle_and_the_24h_window() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp:
            emu.advance(30.0)  # the simulated participants print ~2 trades a second
            trades = await perp.fetch_trades(PERP, limit=1000)
            ticker = await perp.fapiPublicGetTicker24hr({"symbol": "ETHUSDT"})
            candles = await perp.fapiPublicGetKlines(
                {"symbol": "ETHUSDT", "interval": "1m", "startTime": ticker["openTime"], "limit": 1500}
            )
        assert len(trades) >= 20
        # The 24 h window is exactly the 1m candles since its open time, live minute included.
        assert int(candles[0][0]) == int(ticker["openTime"]) and len(candles) == 1441
        assert sum(int(c[8]) for c in candles) == int(ticker["count"])
        assert sum(D(c[5]) for c in candles) == D(ticker["volume"])
        assert D(candles[0][1]) == D(ticker["openPrice"]) and D(candles[-1][4]) == D(ticker["lastPrice"])
        assert max(D(c[2]) for c in candles) == D(ticker["highPrice"])
        assert int(ticker["lastId"]) == trades[-1]["info"]["a"] and D(ticker["lastPrice"]) == D(
            str(trades[-1]["price"])
        )
        assert int(ticker["lastId"]) - int(ticker["firstId"]) + 1 == int(ticker["count"])


def test_mark_and_index_klines_follow_the_books_and_open_interest_includes_our_position() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp:
            emu.advance(5.0)
            mark = await perp.fetch_mark_ohlcv(PERP, "1m", limit=3)
            index = await perp.fetch_index_ohlcv(PERP, "1m", limit=3)
            premium = await perp.fetch_funding_rate(PERP)
            assert mark[-1][4] == premium["markPrice"] and index[-1][4] == premium["indexPrice"]
            premium_klines = await perp.fapiPublicGetPremiumIndexKlines(
                {"symbol": "ETHUSDT", "interval": "1m", "limit": 3}
            )
            mark_d, index_d = D(str(premium["markPrice"])), D(str(premium["indexPrice"]))
            assert D(premium_klines[-1][4]) == ((mark_d - index_d) / index_d).quantize(D("0.00000001"))
            assert len(premium_klines) == 3 and D(premium_klines[0][4]) > 0  # the backfill: the perp at a premium
            oi0 = (await perp.fetch_open_interest(PERP))["openInterestAmount"]
            await perp.create_order(PERP, "market", "sell", 2)
            oi1 = (await perp.fetch_open_interest(PERP))["openInterestAmount"]
            assert abs(oi1 - oi0 - 2) < 1  # the seeded level swings slowly; our 2 contracts are on top

    run(scenario)


def test_unknown_paths_answer_binance_error_json_never_an_html_page() -> None:
    async def scenario(emu: Emulator) -> None:
        for method, path in (
            ("GET", "/api/v3/nothingHere"),
            ("GET", "/no/such/thing"),
            ("PUT", "/api/v3/order"),
            ("GET", "/sapi/v1/margin/account"),
        ):
            status, content_type, body = await raw(emu, method, path)
            assert (status, content_type) == (404, "application/json"), (method, path)
            assert body == {"code": -1000, "msg": "An unknown error occured while processing the request."}

    run(scenario)


# --- account settings -----------------------------------------------------------------------------------


def test_leverage_is_stored_per_symbol_and_enforced_in_the_margin_required() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp:
            bid = (await perp.fetch_order_book(PERP, 5))["bids"][0][0]
            price = round(bid * 0.9, 2)  # rests far from the touch
            amount = 400  # about 1,000,000 USDT of notional against the 1,000,000 USDT wallet
            assert (await perp.set_leverage(1, PERP))["leverage"] == 1
            with pytest.raises(ccxt.InsufficientFunds):
                await perp.create_order(PERP, "limit", "buy", amount * 1.2, price, {"postOnly": True})
            await perp.set_leverage(2, PERP)
            order = await perp.create_order(PERP, "limit", "buy", amount * 1.2, price, {"postOnly": True})
            config = {row["symbol"]: row for row in await perp.fapiPrivateGetSymbolConfig()}
            assert config["ETHUSDT"]["leverage"] == 2 and config["BTCUSDT"]["leverage"] == 5
            risk = {p["symbol"]: p for p in await perp.fapiPrivateV2GetPositionRisk()}
            assert risk["ETHUSDT"]["leverage"] == "2"
            with pytest.raises(ccxt.BadRequest):
                await perp.set_leverage(126, PERP)
            await perp.cancel_order(order["id"], PERP)

    run(scenario)


def test_margin_type_and_position_mode_change_like_binance() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp:
            assert (await perp.set_margin_mode("isolated", PERP))["msg"] == "success"
            # Unchanged: Binance says -4046, which ccxt raises as MarginModeAlreadySet.
            with pytest.raises(ccxt.MarginModeAlreadySet):
                await perp.set_margin_mode("isolated", PERP)
            config = {row["symbol"]: row for row in await perp.fapiPrivateGetSymbolConfig()}
            assert config["ETHUSDT"]["marginType"] == "ISOLATED" and config["BTCUSDT"]["marginType"] == "CROSSED"
            bid = (await perp.fetch_order_book(PERP, 5))["bids"][0][0]
            order = await perp.create_order(PERP, "limit", "buy", 0.1, round(bid * 0.9, 2), {"postOnly": True})
            with pytest.raises(ccxt.ExchangeError, match="-4047"):
                await perp.set_margin_mode("cross", PERP)
            with pytest.raises(ccxt.ExchangeError, match="-4067"):
                await perp.set_position_mode(True)
            await perp.cancel_order(order["id"], PERP)
            await perp.set_position_mode(True)
            assert (await perp.fetch_position_mode(PERP))["hedged"] is True
            with pytest.raises(ccxt.ExchangeError, match="-4061"):
                await perp.create_order(PERP, "limit", "buy", 0.1, round(bid * 0.9, 2))
            await perp.set_position_mode(False)

    run(scenario)


def test_trading_fees_come_from_the_markets() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binance") as spot, client(emu, "binanceusdm") as perp:
            fee = await spot.fetch_trading_fee(SPOT)
            market = emu.engine.markets[SPOT]
            assert (D(str(fee["maker"])), D(str(fee["taker"]))) == (market.maker_fee, market.taker_fee)
            fees = await spot.fetch_trading_fees()
            assert set(fees) >= {SPOT, "BTC/USDT"}
            pfee = await perp.fetch_trading_fee(PERP)
            assert D(str(pfee["maker"])) == emu.engine.markets[PERP].maker_fee

    run(scenario)


async def _user_streams(emu: Emulator, perp: Any, session: aiohttp.ClientSession) -> tuple[Any, Any]:
    """A spot WS-API user-data subscription and the USDⓈ-M listenKey stream, both subscribed."""
    import hashlib
    import hmac

    from legguard.adapters.emulator._emulator import DEFAULT_API_SECRET

    base = f"ws://127.0.0.1:{emu.port}"
    listen_key = (await perp.fapiPrivatePostListenKey())["listenKey"]
    spot_ws = await session.ws_connect(f"{base}/ws-api/v3")
    perp_ws = await session.ws_connect(f"{base}/fstream/private/ws?listenKey={listen_key}")
    params: dict[str, Any] = {"apiKey": emu.api_key, "timestamp": emu.now_ms()}
    payload = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    params["signature"] = hmac.new(DEFAULT_API_SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
    await spot_ws.send_json({"id": "1", "method": "userDataStream.subscribe.signature", "params": params})
    assert (await asyncio.wait_for(spot_ws.receive_json(), WAIT))["status"] == 200
    return spot_ws, perp_ws


async def _next_event(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.receive_json(), WAIT)
        event = message.get("event", message)
        if event.get("e") == kind:
            return dict(event)


def test_transfer_moves_usdt_between_wallets_and_both_user_streams_hear_of_it() -> None:
    async def scenario(emu: Emulator) -> None:
        async with (
            client(emu, "binance") as spot,
            client(emu, "binanceusdm") as perp,
            aiohttp.ClientSession() as session,
        ):
            spot_ws, perp_ws = await _user_streams(emu, perp, session)
            spot0 = (await spot.fetch_balance())["USDT"]["free"]
            perp0 = (await perp.fetch_balance())["USDT"]["total"]
            transfer = await spot.transfer("USDT", 250, "spot", "swap")
            assert (await spot.fetch_balance())["USDT"]["free"] == spot0 - 250
            assert (await perp.fetch_balance())["USDT"]["total"] == perp0 + 250
            update = await _next_event(spot_ws, "balanceUpdate")
            assert (update["a"], update["d"]) == ("USDT", "-250.00000000")
            position = await _next_event(spot_ws, "outboundAccountPosition")
            assert position["B"][0]["f"] == f"{D(str(spot0)) - 250:.8f}"
            account = await _next_event(perp_ws, "ACCOUNT_UPDATE")
            assert account["a"]["m"] == "DEPOSIT" and account["a"]["B"][0]["wb"] == f"{D(str(perp0)) + 250:.8f}"
            income = await perp.fapiPrivateGetIncome({"incomeType": "TRANSFER"})
            assert [(r["income"], r["tranId"]) for r in income] == [("250.00000000", int(transfer["id"]))]
            with pytest.raises(ccxt.InsufficientFunds):
                await spot.transfer("USDT", 10**9, "swap", "spot")
            history = await spot.fetch_transfers("USDT", params={"type": "MAIN_UMFUTURE"})
            assert [t["amount"] for t in history] == [250]

    run(scenario)


def test_funding_is_settled_from_the_premium_and_paid_by_positions() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp, aiohttp.ClientSession() as session:
            _, perp_ws = await _user_streams(emu, perp, session)
            await perp.create_order(PERP, "market", "buy", 1)
            wallet0 = emu.engine.perp_wallet()
            emu.advance(60.0)  # funding every 60 s in this emulator; one settlement has happened
            history = await perp.fetch_funding_rate_history(PERP, limit=1)
            rate = D(str(history[-1]["fundingRate"]))
            # The simulated perp trades at a premium over spot, so longs pay: F = P + clamp(I - P, +-0.05 %), which
            # is exactly the interest I = 0.01 % whenever the premium sits within the clamp band of it.
            assert rate >= D("0.0001")
            payments = await perp.fetch_funding_history(PERP)
            assert len(payments) == 1
            paid = D(str(payments[0]["amount"]))
            mark = D(history[-1]["info"]["fundingTime"] and str(payments[0]["info"]["income"]))
            assert paid < 0 and emu.engine.perp_wallet() == wallet0 + paid
            assert mark == paid
            account = await _next_event(perp_ws, "ACCOUNT_UPDATE")
            while account["a"]["m"] != "FUNDING_FEE":
                account = await _next_event(perp_ws, "ACCOUNT_UPDATE")
            assert account["a"]["P"][0]["s"] == "ETHUSDT"
            # The control API flips the rate: shorts would pay, so our long receives.
            async with session.post(
                f"http://127.0.0.1:{emu.port}/_emulator/funding", json={"symbol": "ETHUSDT", "rate": "-0.0005"}
            ) as resp:
                assert (await resp.json())["predictedRate"] == "-0.0005"
            emu.advance(60.0)
            payments = await perp.fetch_funding_history(PERP)
            assert len(payments) == 2 and payments[-1]["amount"] > 0
            income = await perp.fapiPrivateGetIncome({"symbol": "ETHUSDT"})
            assert {r["incomeType"] for r in income} == {"FUNDING_FEE", "COMMISSION"}

    run(scenario, funding_interval=60.0)


def test_income_books_realized_pnl_and_commission_of_our_fills() -> None:
    async def scenario(emu: Emulator) -> None:
        async with client(emu, "binanceusdm") as perp:
            await perp.create_order(PERP, "market", "buy", 1)
            emu.move(emu.engine.markets[PERP], (emu.engine.mid(PERP) or D(0)) + 20)
            await perp.create_order(PERP, "market", "sell", 1, params={"reduceOnly": True})
            fills = emu.engine.fills(PERP)
            income = await perp.fapiPrivateGetIncome({"symbol": "ETHUSDT"})
            pnl = [D(r["income"]) for r in income if r["incomeType"] == "REALIZED_PNL"]
            fees = [D(r["income"]) for r in income if r["incomeType"] == "COMMISSION"]
            assert pnl == [f.realized_pnl for f in fills if f.realized_pnl] and pnl[0] > 0
            assert fees == [-f.fee for f in fills]

    run(scenario)


def test_the_kline_stream_closes_each_candle_as_rest_reports_it() -> None:
    async def scenario(emu: Emulator) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{emu.port}/fstream/ws/ethusdt@kline_1m") as ws,
            client(emu, "binanceusdm") as perp,
        ):
            await asyncio.wait_for(emu.wait_until(lambda: bool(emu.hub.subscribed(MarketKind.LINEAR))), WAIT)
            closed: list[dict[str, Any]] = []
            while not closed:
                emu.advance(1.0)
                event = await asyncio.wait_for(ws.receive_json(), WAIT)
                while True:
                    if event["k"]["x"]:
                        closed.append(event["k"])
                    try:
                        event = await asyncio.wait_for(ws.receive_json(), 0.05)
                    except TimeoutError:
                        break
                assert emu.scheduler.elapsed() < 130
            k = closed[0]
            rest = await perp.fapiPublicGetKlines(
                {"symbol": "ETHUSDT", "interval": "1m", "startTime": k["t"], "limit": 1}
            )
            assert [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["n"]] == [
                int(rest[0][0]),
                *rest[0][1:6],
                int(rest[0][6]),
                int(rest[0][8]),
            ]

    run(scenario)


def test_array_streams_cover_every_market_and_mark_price_keeps_its_cadence() -> None:
    async def scenario(emu: Emulator) -> None:
        streams = "!miniTicker@arr/ethusdt@markPrice/ethusdt@markPrice@1s/!markPrice@arr"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{emu.port}/fstream/stream?streams={streams}") as ws,
        ):
            await asyncio.wait_for(emu.wait_until(lambda: len(emu.hub.subscribed(MarketKind.LINEAR)) == 4), WAIT)
            got: dict[str, list[Any]] = {}
            for _ in range(6):
                emu.advance(1.0)
                for _ in range(2 if emu._stream_ticks % 3 else 4):  # the 3 s streams join every third second
                    message = await asyncio.wait_for(ws.receive_json(), WAIT)
                    got.setdefault(message["stream"], []).append(message["data"])
        assert len(got["ethusdt@markPrice@1s"]) == 6 and len(got["ethusdt@markPrice"]) == 2
        assert len(got["!miniTicker@arr"]) == 6 and len(got["!markPrice@arr"]) == 2
        assert {t["s"] for t in got["!miniTicker@arr"][-1]} == {"BTCUSDT", "ETHUSDT"}
        assert {t["s"] for t in got["!markPrice@arr"][-1]} == {"BTCUSDT", "ETHUSDT"}
        assert got["ethusdt@markPrice@1s"][-1]["p"] == got["ethusdt@markPrice"][-1]["p"]

    run(scenario)
