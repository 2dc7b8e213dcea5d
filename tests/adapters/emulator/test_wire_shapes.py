"""Every message the emulator serves that has a recorded real Binance counterpart has the same keys with the
same JSON types (values differ, of course). The pairs are listed explicitly in REST_PAIRS and WS_PAIRS.

Served but with no recorded message to hold them to (shapes follow Binance's API documentation):
spot POST/DELETE /api/v3/order, openOrders/allOrders, myTrades; USDⓈ-M POST/DELETE /fapi/v1/order
responses, /fapi/v2|v3/account, /fapi/v3/positionRisk, /fapi/v2|v3/balance, leverageBracket, listenKey,
countdownCancelAll; spot depthUpdate; ACCOUNT_UPDATE; outboundAccountPosition; WS-API responses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest

from legguard.adapters.emulator._emulator import DEFAULT_API_SECRET, Emulator
from legguard.adapters.emulator._server import serve_emulator
from legguard.domain import OrderOrigin

FIXTURES = Path("/work/shared/fixtures/binance-recorded")
pytestmark = pytest.mark.skipif(not FIXTURES.exists(), reason="recorded Binance fixtures not available")

# Keys of a recorded message the emulator leaves out, and why. Nothing else may differ.
ONLY_FOR_TRAILING_STOPS = {"activatePrice", "priceRate"}  # Binance sends them for TRAILING_STOP_MARKET only

# (label, ccxt exchange id, implicit ccxt method, params) -> fixture under http/, keys allowed missing.
REST_PAIRS: list[tuple[str, str, str, dict[str, Any], str, set[str]]] = [
    ("GET /api/v3/ping", "binance", "publicGetPing", {}, "http_spot_market_ping.json", set()),
    ("GET /api/v3/time", "binance", "publicGetTime", {}, "http_spot_market_time.json", set()),
    ("GET /api/v3/exchangeInfo", "binance", "publicGetExchangeInfo", {}, "http_spot_market_exchange_info.json", set()),
    ("GET /api/v3/depth", "binance", "publicGetDepth", {"symbol": "BTCUSDT"}, "http_spot_market_depth.json", set()),
    (
        "GET /api/v3/ticker/bookTicker",
        "binance",
        "publicGetTickerBookTicker",
        {"symbol": "BTCUSDT"},
        "http_spot_market_book_ticker.json",
        set(),
    ),
    (
        "GET /api/v3/ticker/price",
        "binance",
        "publicGetTickerPrice",
        {"symbol": "BTCUSDT"},
        "http_spot_market_ticker_price.json",
        set(),
    ),
    (
        "GET /api/v3/avgPrice",
        "binance",
        "publicGetAvgPrice",
        {"symbol": "BTCUSDT"},
        "http_spot_market_avg_price.json",
        set(),
    ),
    ("GET /api/v3/account", "binance", "privateGetAccount", {}, "http_spot_wallet_account.json", set()),
    (
        "GET /fapi/v1/exchangeInfo",
        "binanceusdm",
        "fapiPublicGetExchangeInfo",
        {},
        "http_futures_market_exchange_info.json",
        set(),
    ),
    (
        "GET /fapi/v1/depth",
        "binanceusdm",
        "fapiPublicGetDepth",
        {"symbol": "BTCUSDT"},
        "http_futures_market_depth.json",
        set(),
    ),
    (
        "GET /fapi/v1/premiumIndex",
        "binanceusdm",
        "fapiPublicGetPremiumIndex",
        {"symbol": "BTCUSDT"},
        "http_futures_market_premium_index.json",
        set(),
    ),
    (
        "GET /fapi/v1/fundingRate",
        "binanceusdm",
        "fapiPublicGetFundingRate",
        {"symbol": "BTCUSDT", "limit": 2},
        "http_futures_market_funding_rate.json",
        set(),
    ),
    (
        "GET /fapi/v1/ticker/bookTicker",
        "binanceusdm",
        "fapiPublicGetTickerBookTicker",
        {"symbol": "BTCUSDT"},
        "http_futures_market_book_ticker.json",
        set(),
    ),
    (
        "GET /fapi/v1/ticker/price",
        "binanceusdm",
        "fapiPublicGetTickerPrice",
        {"symbol": "BTCUSDT"},
        "http_futures_market_ticker_price.json",
        set(),
    ),
    (
        "GET /fapi/v1/openOrders",
        "binanceusdm",
        "fapiPrivateGetOpenOrders",
        {"symbol": "ETHUSDT"},
        "http_futures_account_orders.json",
        ONLY_FOR_TRAILING_STOPS,
    ),
    (
        "GET /fapi/v1/userTrades",
        "binanceusdm",
        "fapiPrivateGetUserTrades",
        {"symbol": "ETHUSDT"},
        "http_futures_account_trades.json",
        set(),
    ),
    (
        "GET /fapi/v2/positionRisk",
        "binanceusdm",
        "fapiPrivateV2GetPositionRisk",
        {},
        "http_futures_account_positions_one_way.json",
        set(),
    ),
    (
        "GET /fapi/v1/positionSide/dual",
        "binanceusdm",
        "fapiPrivateGetPositionSideDual",
        {},
        "http_futures_account_position_side_dual.json",
        set(),
    ),
    (
        "GET /fapi/v1/symbolConfig",
        "binanceusdm",
        "fapiPrivateGetSymbolConfig",
        {},
        "http_futures_account_symbol_config.json",
        set(),
    ),
    (
        "GET /fapi/v1/commissionRate",
        "binanceusdm",
        "fapiPrivateGetCommissionRate",
        {"symbol": "ETHUSDT"},
        "http_futures_wallet_commission_rate_ethusdt.json",
        set(),
    ),
]

# (label of the emulator message) -> fixture under ws/ (user-data fixtures are wrapped in {"stream", "data"}).
WS_PAIRS: dict[str, str] = {
    "USDⓈ-M depthUpdate": "ws_futures_depth_diff_update.json",
    "spot executionReport NEW": "ws_spot_execution_report_new.json",
    "spot executionReport TRADE": "ws_spot_execution_report_trade.json",
    "spot executionReport CANCELED": "ws_spot_execution_report_canceled.json",
    "spot executionReport EXPIRED": "ws_spot_execution_report_expired.json",
    "ORDER_TRADE_UPDATE NEW": "ws_futures_order_update_new_reduce_only_qty.json",
    "ORDER_TRADE_UPDATE TRADE": "ws_futures_order_update_trade_reduce_only_qty.json",
    "ORDER_TRADE_UPDATE liquidation": "ws_futures_order_update_liquidation.json",
    "ORDER_TRADE_UPDATE ADL": "ws_futures_order_update_adl.json",
}


# --- the comparison -------------------------------------------------------------------------------------


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def differences(recorded: Any, ours: Any, path: str = "$", missing_ok: frozenset[str] = frozenset()) -> list[str]:
    """Where `ours` differs from `recorded` in keys or JSON types (lists: each element against the recorded
    element with the same filterType, else the first recorded element)."""
    if _type(recorded) != _type(ours):
        return [f"{path}: recorded {_type(recorded)}, emulator {_type(ours)}"]
    out: list[str] = []
    if isinstance(recorded, dict):
        for key in sorted(set(recorded) - set(ours) - missing_ok):
            out.append(f"{path}.{key}: missing from the emulator's message")
        for key in sorted(set(ours) - set(recorded)):
            out.append(f"{path}.{key}: not in the recorded message")
        for key in sorted(set(recorded) & set(ours)):
            out += differences(recorded[key], ours[key], f"{path}.{key}", missing_ok)
    elif isinstance(recorded, list) and recorded:
        by_type = {e.get("filterType"): e for e in recorded if isinstance(e, dict) and "filterType" in e}
        if by_type:
            theirs = {e.get("filterType") for e in ours if isinstance(e, dict)}
            if theirs != set(by_type):
                out.append(f"{path}: filter types {sorted(theirs)} != recorded {sorted(by_type)}")
        if not ours:
            out.append(f"{path}: empty, the recorded list is not (nothing to compare)")
        for i, element in enumerate(ours):
            model = by_type.get(element.get("filterType"), recorded[0]) if isinstance(element, dict) else recorded[0]
            out += differences(model, element, f"{path}[{i}]", missing_ok)
    return out


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_the_comparison_catches_a_missing_key_an_extra_key_and_a_type_change() -> None:
    model = {"a": "1", "b": [{"c": 1}], "d": None}
    assert differences(model, {"a": "2", "b": [{"c": 7}], "d": None}) == []
    assert differences(model, {"a": 2, "b": [{"c": 7}], "d": None}) == ["$.a: recorded str, emulator int"]
    assert differences(model, {"a": "2", "b": [{"c": 7, "e": 0}], "d": None}) == [
        "$.b[0].e: not in the recorded message"
    ]
    assert differences(model, {"a": "2", "b": [], "d": None}) == [
        "$.b: empty, the recorded list is not (nothing to compare)"
    ]
    assert differences(model, {"b": [{"c": 7}], "d": None}, missing_ok=frozenset({"a"})) == []


# --- REST -----------------------------------------------------------------------------------------------


def test_rest_messages_have_the_recorded_shapes() -> None:
    async def scenario(emu: Emulator) -> dict[str, list[str]]:
        problems: dict[str, list[str]] = {}
        clients = {}
        for exchange_id, cls in (("binance", ccxt.binance), ("binanceusdm", ccxt.binanceusdm)):
            clients[exchange_id] = cls({**emu.ccxt_config(exchange_id, credentials=True), "enableRateLimit": False})
        try:
            perp = clients["binanceusdm"]
            await perp.load_markets()
            # Something to report: a resting order, and a filled one with its trade and position.
            bid = emu.engine.book("ETH/USDT:USDT", 1).best_bid
            assert bid is not None
            await perp.create_order("ETH/USDT:USDT", "limit", "buy", 0.5, float(bid), {"postOnly": True})
            await perp.create_order("ETH/USDT:USDT", "limit", "buy", 0.2, float(bid - 3), {"postOnly": True})
            emu.move(emu.engine.markets["ETH/USDT:USDT"], bid - 1)
            for label, exchange_id, method, params, fixture, missing_ok in REST_PAIRS:
                ours = await getattr(clients[exchange_id], method)(params)
                found = differences(recorded(f"http/{fixture}"), ours, missing_ok=frozenset(missing_ok))
                if found:
                    problems[label] = found
            ours = await perp.fapiPrivateGetOrder({"symbol": "ETHUSDT", "orderId": 2})
            found = differences(
                recorded("http/http_futures_account_orders.json")[0],
                ours,
                missing_ok=frozenset(ONLY_FOR_TRAILING_STOPS),
            )
            if found:
                problems["GET /fapi/v1/order"] = found
        finally:
            for ex in clients.values():
                await ex.close()
        return problems

    async def main() -> dict[str, list[str]]:
        async with serve_emulator(seed=3, autoclock=False) as emu:
            return await scenario(emu)

    assert asyncio.run(main()) == {}


# --- websockets -----------------------------------------------------------------------------------------


def _sign(params: dict[str, Any]) -> str:
    payload = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return hmac.new(DEFAULT_API_SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()


async def _next(ws: aiohttp.ClientWebSocketResponse, want: Any) -> dict[str, Any]:
    """The next message satisfying `want`, skipping the others (balance and account updates)."""
    while True:
        message = await asyncio.wait_for(ws.receive_json(), 5)
        event = message.get("event", message)
        if want(event):
            return dict(event)


def test_stream_messages_have_the_recorded_shapes() -> None:
    async def scenario(emu: Emulator) -> dict[str, dict[str, Any]]:
        got: dict[str, dict[str, Any]] = {}
        base = f"ws://127.0.0.1:{emu.port}"
        spot_sym, perp_sym = "ETH/USDT", "ETH/USDT:USDT"
        spot_ex = ccxt.binance({**emu.ccxt_config("binance", credentials=True), "enableRateLimit": False})
        perp_ex = ccxt.binanceusdm({**emu.ccxt_config("binanceusdm", credentials=True), "enableRateLimit": False})
        try:
            await spot_ex.load_markets()
            await perp_ex.load_markets()
            listen_key = (await perp_ex.fapiPrivatePostListenKey())["listenKey"]
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"{base}/fstream/public/ws/0") as depth,
                session.ws_connect(f"{base}/ws-api/v3") as spot_user,
                session.ws_connect(f"{base}/fstream/private/ws?listenKey={listen_key}") as perp_user,
            ):
                await depth.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1})
                assert await asyncio.wait_for(depth.receive_json(), 5) == {"result": None, "id": 1}
                emu.advance(1.0)
                got["USDⓈ-M depthUpdate"] = await _next(depth, lambda e: e.get("e") == "depthUpdate")

                params: dict[str, Any] = {"apiKey": emu.api_key, "timestamp": emu.now_ms()}
                params["signature"] = _sign(params)
                await spot_user.send_json({"id": "1", "method": "userDataStream.subscribe.signature", "params": params})
                assert (await asyncio.wait_for(spot_user.receive_json(), 5))["status"] == 200

                def report(x: str) -> Any:
                    return lambda e: e.get("e") == "executionReport" and e.get("x") == x

                spot_bid = Decimal(str((await spot_ex.fetch_order_book(spot_sym, 5))["bids"][0][0]))
                await spot_ex.create_order(spot_sym, "limit", "buy", 0.5, float(spot_bid), {"postOnly": True})
                got["spot executionReport NEW"] = await _next(spot_user, report("NEW"))
                emu.move(emu.engine.markets[spot_sym], spot_bid - 1)
                got["spot executionReport TRADE"] = await _next(spot_user, report("TRADE"))
                order = await spot_ex.create_order(
                    spot_sym, "limit", "sell", 0.5, float(spot_bid + 50), {"postOnly": True}
                )
                await spot_ex.cancel_order(order["id"], spot_sym)
                got["spot executionReport CANCELED"] = await _next(spot_user, report("CANCELED"))
                await spot_ex.privatePostOrder(
                    {
                        "symbol": "ETHUSDT",
                        "side": "BUY",
                        "type": "LIMIT",
                        "timeInForce": "IOC",
                        "quantity": "0.5",
                        "price": str(spot_bid - 100),
                    }
                )
                got["spot executionReport EXPIRED"] = await _next(spot_user, report("EXPIRED"))

                def update(x: str) -> Any:
                    return lambda e: e.get("e") == "ORDER_TRADE_UPDATE" and e["o"]["x"] == x

                perp_bid = Decimal(str((await perp_ex.fetch_order_book(perp_sym, 5))["bids"][0][0]))
                await perp_ex.create_order(perp_sym, "limit", "buy", 0.5, float(perp_bid), {"postOnly": True})
                got["ORDER_TRADE_UPDATE NEW"] = await _next(perp_user, update("NEW"))
                emu.move(emu.engine.markets[perp_sym], perp_bid - 1)
                got["ORDER_TRADE_UPDATE TRADE"] = await _next(perp_user, update("TRADE"))
                perp = emu.engine.markets[perp_sym]
                emu.liquidate(perp, Decimal("0.1"), OrderOrigin.LIQUIDATION)
                got["ORDER_TRADE_UPDATE liquidation"] = await _next(perp_user, update("CALCULATED"))
                emu.liquidate(perp, Decimal("0.1"), OrderOrigin.ADL)
                got["ORDER_TRADE_UPDATE ADL"] = await _next(perp_user, update("CALCULATED"))
        finally:
            await spot_ex.close()
            await perp_ex.close()
        return got

    async def main() -> dict[str, dict[str, Any]]:
        async with serve_emulator(seed=5, autoclock=False) as emu:
            return await scenario(emu)

    got = asyncio.run(main())
    assert got["ORDER_TRADE_UPDATE ADL"]["o"]["c"].startswith("adl_autoclose-")
    problems = {}
    for label, fixture in WS_PAIRS.items():
        message = recorded(f"ws/{fixture}")
        found = differences(message.get("data", message), got[label])
        if found:
            problems[label] = found
    assert problems == {}
