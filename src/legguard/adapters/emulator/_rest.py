"""The emulator's REST side: Binance spot `/api/v3/...` and USDⓈ-M `/fapi/v1|v2|v3/...` endpoints with
Binance's authentication (X-MBX-APIKEY, HMAC-SHA256 over query + body, timestamp / recvWindow), request
weights and error codes, plus the loopback-only test control API under `/_emulator/`.

An `outage` answers every request and websocket handshake 503 for a while (the emulator keeping its books,
orders and balances). Other faults are applied in the middleware, around the handler: `reject`, `http_error`
and `delay` act before
the request is processed; `ack_timeout` and `malformed_response` after it took effect (the outcome is
then unknown to the client, which is the point).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from legguard.adapters.market._matching import Fill
from legguard.domain import ZERO, Market, MarketKind, OrderOrigin, OrderRequest, OrderType, Side

from . import _wire as w
from ._market_data import INTERVALS

if TYPE_CHECKING:
    from ._emulator import Emulator

Params = dict[str, str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NUMBER = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_SPOT_CLIENT_ID = re.compile(r"^[a-zA-Z0-9_-]{1,36}$")
_PERP_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_MARKET_PREFIXES = {"/api/": MarketKind.SPOT, "/fapi/": MarketKind.LINEAR, "/futures/": MarketKind.LINEAR}
_OTHER_API_PREFIXES = ("/sapi/", "/dapi/", "/eapi/", "/papi/")
_OI_PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")


def _kind_of(path: str) -> MarketKind | None:
    for prefix, kind in _MARKET_PREFIXES.items():
        if path.startswith(prefix):
            return kind
    if path.startswith(_OTHER_API_PREFIXES):
        return MarketKind.SPOT  # weights and faults of the spot API family
    return None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


def _error(err: w.WireError) -> web.Response:
    return _json(err.body(), status=err.status)


# --- parameters ---------------------------------------------------------------------------------------


async def _read(request: web.Request) -> tuple[Params, str, str]:
    """All parameters (query, then body), and the raw query and body as signed."""
    raw_query = request.raw_path.partition("?")[2]
    body = await request.text() if request.body_exists else ""
    params: Params = dict(parse_qsl(raw_query, keep_blank_values=True))
    params.update(parse_qsl(body, keep_blank_values=True))
    return params, raw_query, body


def _strip_signature(raw: str) -> tuple[str, str | None]:
    kept, signature = [], None
    for part in raw.split("&") if raw else []:
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        else:
            kept.append(part)
    return "&".join(kept), signature


def _decimal(params: Params, name: str, *, required: bool = True) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise w.missing_param(name)
        return None
    if not _NUMBER.match(raw):
        raise w.illegal_chars(name)
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise w.illegal_chars(name) from None


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _int(params: Params, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise w.illegal_chars(name) from None


def _side(params: Params) -> Side:
    raw = params.get("side")
    if not raw:
        raise w.missing_param("side")
    if raw not in ("BUY", "SELL"):
        raise w.INVALID_SIDE
    return Side.BUY if raw == "BUY" else Side.SELL


# --- the REST API -------------------------------------------------------------------------------------


class _Rest:
    def __init__(self, emulator: Emulator) -> None:
        self.emu = emulator
        self._transfers = 0  # tranId of the last wallet transfer

    # --- auth ---

    async def signed(self, request: web.Request) -> Params:
        """Check API key, signature and timestamp window, in Binance's order; return the parameters."""
        params, raw_query, body = await _read(request)
        self._check_key(request)
        query_payload, query_sig = _strip_signature(raw_query)
        body_payload, body_sig = _strip_signature(body)
        signature = query_sig or body_sig
        if not signature:
            raise w.missing_param("signature")
        if "timestamp" not in params:
            raise w.missing_param("timestamp")
        if not self.emu.secret_matches(signature, (query_payload + body_payload).encode()):
            raise w.BAD_SIGNATURE
        w.check_timestamp(params)
        return params

    async def keyed(self, request: web.Request) -> Params:
        """USER_STREAM endpoints: API key only."""
        params, _, _ = await _read(request)
        self._check_key(request)
        return params

    def _check_key(self, request: web.Request) -> None:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise w.API_KEY_FORMAT
        if key != self.emu.api_key:
            raise w.API_KEY_INVALID

    # --- shared public endpoints ---

    async def ping(self, request: web.Request) -> web.Response:
        return _json({})

    async def server_time(self, request: web.Request) -> web.Response:
        return _json({"serverTime": self.emu.now_ms()})

    async def spot_exchange_info(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        markets = self._selected(MarketKind.SPOT, params)
        return _json(
            {
                "timezone": "UTC",
                "serverTime": self.emu.now_ms(),
                "rateLimits": w.SPOT_RATE_LIMITS,
                "exchangeFilters": [],
                "symbols": [w.spot_symbol_info(m) for m in markets],
            }
        )

    async def perp_exchange_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "timezone": "UTC",
                "serverTime": self.emu.now_ms(),
                "futuresType": "U_MARGINED",
                "rateLimits": w.PERP_RATE_LIMITS,
                "exchangeFilters": [],
                "assets": [
                    {"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"},
                    {"asset": "BTC", "marginAvailable": True, "autoAssetExchange": "-0.10000000"},
                    {"asset": "ETH", "marginAvailable": True, "autoAssetExchange": "-5"},
                ],
                "symbols": [w.perp_symbol_info(m) for m in self.emu.markets(MarketKind.LINEAR)],
            }
        )

    async def inverse_exchange_info(self, request: web.Request) -> web.Response:
        # ccxt.binance loads COIN-M markets too; the emulator lists none.
        return _json(
            {"timezone": "UTC", "serverTime": self.emu.now_ms(), "rateLimits": [], "exchangeFilters": [], "symbols": []}
        )

    def _selected(self, kind: MarketKind, params: Params) -> list[Market]:
        if params.get("symbol"):
            return [self.emu.market(kind, params["symbol"])]
        if params.get("symbols"):
            try:
                ids = json.loads(params["symbols"])
            except ValueError:
                raise w.illegal_chars("symbols") from None
            return [self.emu.market(kind, str(i)) for i in ids]
        return self.emu.markets(kind)

    async def depth(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        market = self.emu.market(kind, params.get("symbol"))
        limit = _int(params, "limit", 100 if kind is MarketKind.SPOT else 500)
        assert limit is not None
        if not 1 <= limit <= 5000:
            raise w.WireError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '1 - 5000'.")
        feed = self.emu.feeds[market.symbol]
        bids, asks = feed.snapshot(limit)
        body: dict[str, Any] = {"lastUpdateId": feed.update_id}
        if kind is MarketKind.LINEAR:
            now = self.emu.now_ms()
            body.update({"E": now, "T": now})
        body.update({"bids": w.levels(market, bids), "asks": w.levels(market, asks)})
        return _json(body)

    async def book_ticker(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        out = []
        for m in self._selected(kind, params):
            bids, asks = self.emu.feeds[m.symbol].snapshot(1)
            row: dict[str, Any] = {
                "symbol": m.venue_symbol,
                "bidPrice": w.fmt_price(m, bids[0][0] if bids else ZERO),
                "bidQty": w.fmt_qty(m, bids[0][1] if bids else ZERO),
                "askPrice": w.fmt_price(m, asks[0][0] if asks else ZERO),
                "askQty": w.fmt_qty(m, asks[0][1] if asks else ZERO),
            }
            if kind is MarketKind.LINEAR:
                row["time"] = self.emu.now_ms()
            out.append(row)
        return _json(out[0] if params.get("symbol") else out)

    async def ticker_price(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        out = []
        for m in self._selected(kind, params):
            row: dict[str, Any] = {"symbol": m.venue_symbol, "price": w.fmt_price(m, self._mid(m))}
            if kind is MarketKind.LINEAR:
                row["time"] = self.emu.now_ms()
            out.append(row)
        return _json(out[0] if params.get("symbol") else out)

    async def avg_price(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        m = self.emu.market(MarketKind.SPOT, params.get("symbol"))
        return _json({"mins": 5, "price": w.fmt_price(m, self._mid(m))})

    def _mid(self, m: Market) -> Decimal:
        mid = self.emu.engine.mid(m.symbol)
        return (mid or ZERO).quantize(m.tick_size)

    # --- spot trading ---

    async def spot_new_order(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.SPOT, params.get("symbol"))
        side = _side(params)
        order_type = params.get("type")
        if not order_type:
            raise w.missing_param("type")
        if order_type not in w.SPOT_ORDER_TYPES:
            raise w.INVALID_TYPE
        cid = params.get("newClientOrderId") or self.emu.client_order_id()
        if not _SPOT_CLIENT_ID.match(cid):
            raise w.SPOT_CLIENT_ID
        if params.get("reduceOnly"):
            raise w.SPOT_REDUCE_ONLY
        tif = params.get("timeInForce")
        price: Decimal | None = None
        if order_type == "LIMIT":
            if not tif:
                raise w.missing_param("timeInForce")
            if tif not in ("GTC", "IOC"):
                raise w.INVALID_TIF  # FOK is not served
            price = _decimal(params, "price")
        elif order_type == "LIMIT_MAKER":
            if tif:
                raise w.not_required("timeInForce")
            price = _decimal(params, "price")
            tif = "GTC"
        else:
            if params.get("price"):
                raise w.not_required("price")
            tif = "GTC"
        quantity = _decimal(params, "quantity", required=order_type != "MARKET")
        if order_type == "MARKET":
            quote = _decimal(params, "quoteOrderQty", required=False)
            if (quantity is None) == (quote is None):
                if quantity is not None:
                    raise w.not_required("quoteOrderQty")
                both_empty = "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!"
                raise w.WireError(400, -1102, both_empty)
            if quote is not None:
                quantity = self._quantity_for_quote(m, side, quote)
        assert quantity is not None
        if price is not None and (_places(price) > w.SPOT_PLACES or price <= 0 or price > w.MAX_PRICE):
            raise w.PRECISION if _places(price) > w.SPOT_PLACES else w.SPOT_PRICE_FILTER
        if _places(quantity) > w.SPOT_PLACES:
            raise w.PRECISION
        if quantity <= 0 or quantity > w.SPOT_MAX_QTY:
            raise w.SPOT_LOT_SIZE
        self._check_open_orders(m)
        order = OrderRequest(
            client_order_id=cid,
            symbol=m.symbol,
            side=side,
            type=OrderType.MARKET if order_type == "MARKET" else OrderType.LIMIT,
            amount=quantity,
            price=price,
            post_only=order_type == "LIMIT_MAKER",
        )
        meta = w.WireOrder(m, cid, order_type, tif, price, self.emu.now_ms())
        _, fills = self.emu.place(order, meta)
        meta, update = self.emu.wire_update((m.symbol, cid))
        resp_type = params.get("newOrderRespType") or ("ACK" if order_type == "LIMIT_MAKER" else "FULL")
        return _json(w.spot_new_order_ack(meta, update, fills, resp_type))

    def _quantity_for_quote(self, m: Market, side: Side, quote: Decimal) -> Decimal:
        """A quoteOrderQty market order as the base quantity that spends (at most) that much on the book."""
        bids, asks = self.emu.feeds[m.symbol].snapshot(5000)
        levels, left, qty = (asks if side is Side.BUY else bids), quote, ZERO
        for price, size in levels:
            take = min(size, left / price)
            qty += take
            left -= take * price
            if left <= 0:
                break
        return qty.quantize(m.step_size, ROUND_DOWN)

    def _check_open_orders(self, m: Market) -> None:
        if len(self.emu.engine.open_orders(m.symbol)) >= w.MAX_OPEN_ORDERS:
            raise (
                w.WireError(400, -1013, "Filter failure: MAX_NUM_ORDERS")
                if m.kind is MarketKind.SPOT
                else w.WireError(400, -4045, "Reach max stop order limit.")
            )

    async def spot_query_order(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.SPOT, params.get("symbol"))
        key = self._find(m, params, w.UNKNOWN_ORDER_QUERY)
        meta, update = self.emu.wire_update(key)
        return _json(w.spot_order(meta, update))

    async def spot_cancel_order(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.SPOT, params.get("symbol"))
        key = self._find(m, params, w.UNKNOWN_ORDER_CANCEL)
        cancel_id = params.get("newClientOrderId") or self.emu.client_order_id()
        self.emu.cancel(key, cancel_id)
        meta, update = self.emu.wire_update(key)
        return _json(w.spot_cancel(meta, update, cancel_id, self.emu.now_ms()))

    async def spot_cancel_all(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.SPOT, params.get("symbol"))
        updates = self.emu.cancel_all(m)
        if not updates:
            raise w.UNKNOWN_ORDER_CANCEL
        out = []
        for update in updates:
            meta, wired = self.emu.wire_update((m.symbol, update.client_order_id))
            out.append(w.spot_cancel(meta, wired, self.emu.client_order_id(), self.emu.now_ms()))
        return _json(out)

    def _find(self, m: Market, params: Params, not_found: w.WireError) -> tuple[str, str]:
        if not params.get("orderId") and not params.get("origClientOrderId"):
            raise w.WireError(
                400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            )
        try:
            return self.emu.find(m, params.get("orderId"), params.get("origClientOrderId"))
        except w.WireError:
            raise not_found from None

    async def open_orders(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params = await self.signed(request)
        symbol = self.emu.market(kind, params["symbol"]).symbol if params.get("symbol") else None
        return _json(self._orders(kind, symbol, only_open=True))

    async def all_orders(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params = await self.signed(request)
        m = self.emu.market(kind, params.get("symbol"))
        limit = _int(params, "limit", 500) or 500
        return _json(self._orders(kind, m.symbol, only_open=False)[-min(limit, 1000) :])

    def _orders(self, kind: MarketKind, symbol: str | None, *, only_open: bool) -> list[dict[str, Any]]:
        source = self.emu.engine.open_orders(symbol) if only_open else self.emu.engine.all_orders(symbol)
        out = []
        for u in sorted(source, key=lambda u: int(u.venue_order_id or 0)):
            key = (u.symbol, u.client_order_id)
            if key not in self.emu.meta or self.emu.meta[key].market.kind is not kind:
                continue
            meta, update = self.emu.wire_update(key)
            out.append(
                w.spot_order(meta, update) if kind is MarketKind.SPOT else w.perp_order(meta, update, for_query=True)
            )
        return out

    async def spot_account(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        balances = self.emu.engine.balances()
        omit_zero = params.get("omitZeroBalances") == "true"
        maker = round(self.emu.markets(MarketKind.SPOT)[0].maker_fee * 10_000)
        taker = round(self.emu.markets(MarketKind.SPOT)[0].taker_fee * 10_000)
        return _json(
            {
                "makerCommission": int(maker),
                "takerCommission": int(taker),
                "buyerCommission": 0,
                "sellerCommission": 0,
                "canTrade": True,
                "canWithdraw": False,
                "canDeposit": False,
                "updateTime": self.emu.now_ms(),
                "accountType": "SPOT",
                "balances": [
                    {"asset": a, "free": w.fixed(b.free, 8), "locked": w.fixed(b.locked, 8)}
                    for a, b in balances.items()
                    if not omit_zero or b.total
                ],
                "permissions": ["SPOT"],
            }
        )

    async def my_trades(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params = await self.signed(request)
        if kind is MarketKind.SPOT or params.get("symbol"):
            markets = [self.emu.market(kind, params.get("symbol"))]
        else:
            markets = self.emu.markets(kind)
        order_id = _int(params, "orderId")
        from_id = _int(params, "fromId")
        start, end = _int(params, "startTime"), _int(params, "endTime")
        limit = min(_int(params, "limit", 500) or 500, 1000)
        fills: list[tuple[Market, Fill]] = []
        for m in markets:
            for f in self.emu.engine.fills(m.symbol):
                stamp = w.ms(f.timestamp)
                if order_id is not None and int(f.venue_order_id) != order_id:
                    continue
                if from_id is not None and f.trade_id < from_id:
                    continue
                if (start is not None and stamp < start) or (end is not None and stamp > end):
                    continue
                fills.append((m, f))
        fills.sort(key=lambda mf: mf[1].trade_id)
        fills = fills[:limit] if from_id is not None else fills[-limit:]
        if kind is MarketKind.SPOT:
            return _json([w.spot_my_trade(m, f) for m, f in fills])
        return _json([w.perp_user_trade(m, f) for m, f in fills])

    # --- USDⓈ-M trading ---

    async def perp_new_order(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        side = _side(params)
        order_type = params.get("type")
        if not order_type:
            raise w.missing_param("type")
        if order_type not in w.PERP_ORDER_TYPES:
            raise w.INVALID_TYPE
        if params.get("positionSide", "BOTH") != "BOTH":
            raise w.WireError(400, -4061, "Order's position side does not match user's setting.")
        cid = params.get("newClientOrderId") or self.emu.client_order_id()
        if not _PERP_CLIENT_ID.match(cid):
            raise w.PERP_CLIENT_ID
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        tif = params.get("timeInForce") or "GTC"
        price: Decimal | None = None
        if order_type == "LIMIT":
            if not params.get("timeInForce"):
                raise w.missing_param("timeInForce")
            if tif not in w.PERP_TIME_IN_FORCE:
                raise w.INVALID_TIF
            price = _decimal(params, "price")
            assert price is not None
            if _places(price) > w.places_of(m.tick_size):
                raise w.PRECISION
            if price <= 0:
                raise w.WireError(400, -4001, "Price less than 0.")
        quantity = _decimal(params, "quantity")
        assert quantity is not None
        if _places(quantity) > w.places_of(m.step_size):
            raise w.PRECISION
        if quantity <= 0:
            raise w.PERP_QTY_ZERO
        if quantity > w.PERP_MAX_QTY:
            raise w.WireError(400, -4005, "Quantity greater than max quantity.")
        self._check_open_orders(m)
        order = OrderRequest(
            client_order_id=cid,
            symbol=m.symbol,
            side=side,
            type=OrderType.LIMIT if order_type == "LIMIT" else OrderType.MARKET,
            amount=quantity,
            price=price,
            post_only=tif == "GTX",
            reduce_only=reduce_only,
        )
        if self.emu.dual_side_position:
            raise w.WireError(400, -4061, "Order's position side does not match user's setting.")
        if not reduce_only:
            self.emu.check_margin(m, (price or self.emu.engine.mark_price(m.symbol) or ZERO) * quantity)
        meta = w.WireOrder(m, cid, order_type, tif, price, self.emu.now_ms(), reduce_only=reduce_only)
        self.emu.place(order, meta)
        meta, update = self.emu.wire_update((m.symbol, cid))
        return _json(w.perp_order(meta, update, for_query=False))

    async def perp_query_order(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        key = self._find(m, params, w.UNKNOWN_ORDER_QUERY)
        meta, update = self.emu.wire_update(key)
        return _json(w.perp_order(meta, update, for_query=True))

    async def perp_cancel_order(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        key = self._find(m, params, w.UNKNOWN_ORDER_CANCEL)
        self.emu.cancel(key)
        meta, update = self.emu.wire_update(key)
        return _json(w.perp_order(meta, update, for_query=False))

    async def perp_cancel_all(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        self.emu.cancel_all(self.emu.market(MarketKind.LINEAR, params.get("symbol")))
        return _json({"code": 200, "msg": "The operation of cancel all open order is done."})

    async def countdown_cancel_all(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        countdown = _int(params, "countdownTime")
        if countdown is None:
            raise w.missing_param("countdownTime")
        if countdown < 0:
            raise w.illegal_chars("countdownTime")
        self.emu.arm_countdown(m, countdown)
        return _json({"symbol": m.venue_symbol, "countdownTime": str(countdown)})

    async def listen_key(self, request: web.Request) -> web.Response:
        await self.keyed(request)
        if request.method == "POST":
            return _json({"listenKey": self.emu.new_listen_key()})
        if request.method == "PUT":
            return _json({"listenKey": self.emu.keepalive_listen_key()})
        self.emu.close_listen_key()
        return _json({})

    async def premium_index(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        out = [self._premium(m) for m in self._selected(MarketKind.LINEAR, params)]
        return _json(out[0] if params.get("symbol") else out)

    def _premium(self, m: Market) -> dict[str, Any]:
        now = self.emu.now_ms()
        mark = self.emu.engine.mark_price(m.symbol) or ZERO
        index = self.emu.index_price(m)
        return {
            "symbol": m.venue_symbol,
            "markPrice": w.fixed(mark, 8),
            "indexPrice": w.fixed(index, 8),
            "estimatedSettlePrice": w.fixed(index, 8),
            "lastFundingRate": w.fixed(self.emu.data.predicted_rate(m.symbol), 8),
            "nextFundingTime": self.emu.data.next_funding_ms(now),
            "interestRate": "0.00010000",
            "time": now,
        }

    async def funding_rate(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        symbol = self.emu.market(MarketKind.LINEAR, params["symbol"]).symbol if params.get("symbol") else None
        start, end = _int(params, "startTime"), _int(params, "endTime")
        limit = min(_int(params, "limit", 100) or 100, 1000)
        rows = [
            e
            for e in self.emu.data.funding_history
            if (symbol is None or e.symbol == symbol)
            and (start is None or e.time_ms >= start)
            and (end is None or e.time_ms <= end)
        ]
        rows = rows[:limit] if start is not None else rows[-limit:]
        return _json(
            [
                {
                    "symbol": self.emu.engine.markets[e.symbol].venue_symbol,
                    "fundingRate": w.fixed(e.rate, 8),
                    "fundingTime": e.time_ms,
                }
                for e in rows
            ]
        )

    async def leverage_bracket(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        if params.get("symbol"):
            return _json(w.leverage_brackets(self.emu.market(MarketKind.LINEAR, params["symbol"])))
        return _json([w.leverage_brackets(m) for m in self.emu.markets(MarketKind.LINEAR)])

    async def commission_rate(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        return _json(
            {
                "symbol": m.venue_symbol,
                "makerCommissionRate": w._plain(m.maker_fee),
                "takerCommissionRate": w._plain(m.taker_fee),
            }
        )

    async def position_mode(self, request: web.Request) -> web.Response:
        await self.signed(request)
        return _json({"dualSidePosition": self.emu.dual_side_position})

    async def symbol_config(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        return _json(
            [
                {
                    "symbol": m.venue_symbol,
                    "marginType": self.emu.margin_type[m.symbol],
                    "isAutoAddMargin": False,
                    "leverage": self.emu.leverage[m.symbol],
                    "maxNotionalValue": str(_max_notional(self.emu.leverage[m.symbol])),
                }
                for m in self._selected(MarketKind.LINEAR, params)
            ]
        )

    async def position_risk(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        v2 = request.path.startswith("/fapi/v2/")
        markets = self._selected(MarketKind.LINEAR, params)
        rows = [self._position(m, v2=v2) for m in markets]
        if not v2:  # v3 lists only symbols with a position
            rows = [r for r, m in zip(rows, markets, strict=True) if self.emu.engine.positions()[m.symbol]]
        return _json(rows)

    def _margins(self, m: Market) -> dict[str, Decimal]:
        engine = self.emu.engine
        position = engine.positions()[m.symbol]
        mark = engine.mark_price(m.symbol) or ZERO
        notional = position * mark
        order_im, bids, asks = ZERO, ZERO, ZERO
        for o in engine.open_orders(m.symbol):
            meta = self.emu.meta.get((m.symbol, o.client_order_id))
            notional_open = ((meta.price if meta else None) or mark) * o.remaining
            if o.side is Side.BUY:
                bids += notional_open
            else:
                asks += notional_open
            if not (meta and meta.reduce_only):
                order_im += notional_open / self.emu.leverage[m.symbol]
        return {
            "position": position,
            "mark": mark,
            "notional": notional,
            "initial": abs(notional) / self.emu.leverage[m.symbol],
            "maint": abs(notional) * w.MAINT_MARGIN_RATIO,
            "order_im": order_im,
            "bids": bids,
            "asks": asks,
            "upnl": engine.unrealized_pnl(m.symbol),
            "entry": engine.position_entry_price(m.symbol) or ZERO,
        }

    def _liquidation_price(self, m: Market, position: Decimal, entry: Decimal) -> Decimal:
        """Binance's one-way cross-margin formula with this position alone against the whole wallet."""
        if position == 0:
            return ZERO
        wallet, qty, side = self.emu.engine.perp_wallet(), abs(position), Decimal(1 if position > 0 else -1)
        denominator = qty * w.MAINT_MARGIN_RATIO - side * qty
        if denominator == 0:
            return ZERO
        price = (wallet - side * qty * entry) / denominator
        return max(price, ZERO)

    def _position(self, m: Market, *, v2: bool) -> dict[str, Any]:
        g = self._margins(m)
        now = self.emu.now_ms()
        liq = self._liquidation_price(m, g["position"], g["entry"])
        if v2:
            return {
                "entryPrice": w.fixed(g["entry"], 8),
                "marginType": "isolated" if self.emu.margin_type[m.symbol] == "ISOLATED" else "cross",
                "isAutoAddMargin": "false",
                "isolatedMargin": "0.00000000",
                "leverage": str(self.emu.leverage[m.symbol]),
                "liquidationPrice": w.fixed(liq, 8),
                "markPrice": w.fixed(g["mark"], 8),
                "maxNotionalValue": str(_max_notional(self.emu.leverage[m.symbol])),
                "positionAmt": w.fmt_qty(m, g["position"]),
                "symbol": m.venue_symbol,
                "unRealizedProfit": w.fixed(g["upnl"], 8),
                "positionSide": "BOTH",
                "updateTime": now,
            }
        return {
            "symbol": m.venue_symbol,
            "positionSide": "BOTH",
            "positionAmt": w.fmt_qty(m, g["position"]),
            "entryPrice": w.fixed(g["entry"], 8),
            "breakEvenPrice": w.fixed(g["entry"], 8),
            "markPrice": w.fixed(g["mark"], 8),
            "unRealizedProfit": w.fixed(g["upnl"], 8),
            "liquidationPrice": w.fixed(liq, 8),
            "isolatedMargin": "0",
            "notional": w.fixed(g["notional"], 8),
            "marginAsset": m.quote,
            "isolatedWallet": "0",
            "initialMargin": w.fixed(g["initial"] + g["order_im"], 8),
            "maintMargin": w.fixed(g["maint"], 8),
            "positionInitialMargin": w.fixed(g["initial"], 8),
            "openOrderInitialMargin": w.fixed(g["order_im"], 8),
            "adl": 0,
            "bidNotional": w.fixed(g["bids"], 8),
            "askNotional": w.fixed(g["asks"], 8),
            "updateTime": now,
        }

    def _account_totals(self) -> dict[str, Decimal]:
        wallet = self.emu.engine.perp_wallet()
        per = [self._margins(m) for m in self.emu.markets(MarketKind.LINEAR)]
        upnl = sum((g["upnl"] for g in per), ZERO)
        position_im = sum((g["initial"] for g in per), ZERO)
        order_im = sum((g["order_im"] for g in per), ZERO)
        maint = sum((g["maint"] for g in per), ZERO)
        available = max(wallet + upnl - position_im - order_im, ZERO)
        return {
            "wallet": wallet,
            "upnl": upnl,
            "margin_balance": wallet + upnl,
            "position_im": position_im,
            "order_im": order_im,
            "initial": position_im + order_im,
            "maint": maint,
            "available": available,
        }

    async def perp_account(self, request: web.Request) -> web.Response:
        await self.signed(request)
        v2 = request.path.startswith("/fapi/v2/")
        t = self._account_totals()
        now = self.emu.now_ms()
        f = w.fixed
        body: dict[str, Any] = {}
        if v2:
            body.update(
                {
                    "feeTier": 0,
                    "canTrade": True,
                    "canDeposit": False,
                    "canWithdraw": False,
                    "updateTime": 0,
                    "multiAssetsMargin": False,
                    "tradeGroupId": -1,
                }
            )
        body.update(
            {
                "totalInitialMargin": f(t["initial"], 8),
                "totalMaintMargin": f(t["maint"], 8),
                "totalWalletBalance": f(t["wallet"], 8),
                "totalUnrealizedProfit": f(t["upnl"], 8),
                "totalMarginBalance": f(t["margin_balance"], 8),
                "totalPositionInitialMargin": f(t["position_im"], 8),
                "totalOpenOrderInitialMargin": f(t["order_im"], 8),
                "totalCrossWalletBalance": f(t["wallet"], 8),
                "totalCrossUnPnl": f(t["upnl"], 8),
                "availableBalance": f(t["available"], 8),
                "maxWithdrawAmount": f(t["available"], 8),
            }
        )
        asset: dict[str, Any] = {
            "asset": "USDT",
            "walletBalance": f(t["wallet"], 8),
            "unrealizedProfit": f(t["upnl"], 8),
            "marginBalance": f(t["margin_balance"], 8),
            "maintMargin": f(t["maint"], 8),
            "initialMargin": f(t["initial"], 8),
            "positionInitialMargin": f(t["position_im"], 8),
            "openOrderInitialMargin": f(t["order_im"], 8),
            "crossWalletBalance": f(t["wallet"], 8),
            "crossUnPnl": f(t["upnl"], 8),
            "availableBalance": f(t["available"], 8),
            "maxWithdrawAmount": f(t["available"], 8),
            "updateTime": now,
        }
        if v2:
            asset["marginAvailable"] = True
        body["assets"] = [asset]
        positions = []
        for m in self.emu.markets(MarketKind.LINEAR):
            g = self._margins(m)
            row: dict[str, Any] = {
                "symbol": m.venue_symbol,
                "positionSide": "BOTH",
                "positionAmt": w.fmt_qty(m, g["position"]),
                "unrealizedProfit": f(g["upnl"], 8),
                "isolatedMargin": "0",
                "notional": f(g["notional"], 8),
                "isolatedWallet": "0",
                "initialMargin": f(g["initial"] + g["order_im"], 8),
                "maintMargin": f(g["maint"], 8),
                "updateTime": now,
            }
            if v2:
                row.update(
                    {
                        "leverage": str(self.emu.leverage[m.symbol]),
                        "isolated": self.emu.margin_type[m.symbol] == "ISOLATED",
                        "entryPrice": f(g["entry"], 8),
                        "breakEvenPrice": f(g["entry"], 8),
                        "maxNotional": str(_max_notional(self.emu.leverage[m.symbol])),
                        "bidNotional": f(g["bids"], 8),
                        "askNotional": f(g["asks"], 8),
                        "positionInitialMargin": f(g["initial"], 8),
                        "openOrderInitialMargin": f(g["order_im"], 8),
                    }
                )
            if v2 or g["position"] or g["order_im"]:
                positions.append(row)
        body["positions"] = positions
        return _json(body)

    async def perp_balance(self, request: web.Request) -> web.Response:
        await self.signed(request)
        t = self._account_totals()
        f = w.fixed
        return _json(
            [
                {
                    "accountAlias": "legguard",
                    "asset": "USDT",
                    "balance": f(t["wallet"], 8),
                    "crossWalletBalance": f(t["wallet"], 8),
                    "crossUnPnl": f(t["upnl"], 8),
                    "availableBalance": f(t["available"], 8),
                    "maxWithdrawAmount": f(t["available"], 8),
                    "marginAvailable": True,
                    "updateTime": self.emu.now_ms(),
                }
            ]
        )

    # --- market data (`_emulator_market.py`): one small handler per endpoint ---

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        out = [w.rest_ticker_24h(self.emu.stats(m)) for m in self._selected(kind, params)]
        return _json(out[0] if params.get("symbol") else out)

    async def trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/trades, /api/v3/historicalTrades, /fapi/v1/trades, /fapi/v1/historicalTrades."""
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        if request.path.endswith("/historicalTrades"):
            self._check_key(request)  # MARKET_DATA: API key, no signature
        m = self.emu.market(kind, params.get("symbol"))
        limit = self._limit(params, 500, 1000)
        from_id = _int(params, "fromId")
        tape = list(self.emu.data.tapes[m.symbol].trades)
        if from_id is not None:
            tape = [t for t in tape if t.id >= from_id][:limit]
        return _json([w.rest_trade(m, t) for t in tape[-limit:]])

    async def agg_trades(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        m = self.emu.market(kind, params.get("symbol"))
        limit = self._limit(params, 500, 1000)
        from_id, start, end = _int(params, "fromId"), _int(params, "startTime"), _int(params, "endTime")
        if start is not None and end is not None and end - start > 3_600_000:
            raise w.WireError(400, -1127, "More than 1 hours between startTime and endTime.")
        tape = [
            t
            for t in self.emu.data.tapes[m.symbol].trades
            if (from_id is None or t.id >= from_id)
            and (start is None or t.time_ms >= start)
            and (end is None or t.time_ms <= end)
        ]
        tape = tape[:limit] if (from_id is not None or start is not None) else tape[-limit:]
        return _json([w.rest_agg_trade(m, t) for t in tape])

    def _limit(self, params: Params, default: int, maximum: int) -> int:
        limit = _int(params, "limit", default)
        assert limit is not None
        if not 1 <= limit <= maximum:
            raise w.WireError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _interval(self, params: Params) -> str:
        interval = params.get("interval")
        if not interval:
            raise w.missing_param("interval")
        if interval not in INTERVALS:
            raise w.WireError(400, -1120, "Invalid interval.")
        return interval

    async def klines(self, request: web.Request) -> web.Response:
        kind = _request_kind(request)
        params, _, _ = await _read(request)
        m = self.emu.market(kind, params.get("symbol"))
        interval = self._interval(params)
        limit = self._limit(params, 500, 1000 if kind is MarketKind.SPOT else 1500)
        candles = self.emu.data.tapes[m.symbol].candles.klines(
            interval, _int(params, "startTime"), _int(params, "endTime"), limit, self.emu.now_ms()
        )
        return _json([w.kline_row(m, c, INTERVALS[interval]) for c in candles])

    async def mark_price_klines(self, request: web.Request) -> web.Response:
        return self._price_klines(await _read(request), index=False)

    async def index_price_klines(self, request: web.Request) -> web.Response:
        return self._price_klines(await _read(request), index=True)

    def _price_klines(self, read: tuple[Params, str, str], *, index: bool) -> web.Response:
        params = read[0]
        m = self.emu.market(MarketKind.LINEAR, params.get("pair" if index else "symbol"))
        interval = self._interval(params)
        limit = self._limit(params, 500, 1500)
        series = (self.emu.data.indexes if index else self.emu.data.marks)[m.symbol]
        candles = series.klines(interval, _int(params, "startTime"), _int(params, "endTime"), limit, self.emu.now_ms())
        return _json([w.kline_row(m, c, INTERVALS[interval], prices_only=True) for c in candles])

    async def premium_index_klines(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        interval = self._interval(params)
        limit = self._limit(params, 500, 1500)
        series = self.emu.data.premium_index[m.symbol]
        candles = series.klines(interval, _int(params, "startTime"), _int(params, "endTime"), limit, self.emu.now_ms())
        return _json([w.premium_kline_row(c, INTERVALS[interval]) for c in candles])

    async def open_interest(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        now = self.emu.now_ms()
        oi = self.emu.data.open_interest(m.symbol, now, self.emu.engine.positions()[m.symbol])
        return _json({"openInterest": w.fmt_qty(m, oi), "symbol": m.venue_symbol, "time": now})

    async def open_interest_hist(self, request: web.Request) -> web.Response:
        params, _, _ = await _read(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        period = params.get("period")
        if period not in _OI_PERIODS:
            raise w.WireError(400, -1120, "Invalid period.") if period else w.missing_param("period")
        step = INTERVALS[period]
        limit = self._limit(params, 30, 500)
        marks = self.emu.data.marks[m.symbol].klines(
            period, _int(params, "startTime"), _int(params, "endTime"), limit, self.emu.now_ms()
        )
        out = []
        for c in marks:
            stamp = c.open_ms + step
            if stamp > self.emu.now_ms():
                continue
            oi = self.emu.data.open_interest(m.symbol, stamp, ZERO)
            out.append(
                {
                    "symbol": m.venue_symbol,
                    "sumOpenInterest": w.fixed(oi, 8),
                    "sumOpenInterestValue": w.fixed(oi * c.close, 8),
                    "timestamp": str(stamp),
                }
            )
        return _json(out)

    # --- account settings, fees, income, transfers: one small handler per endpoint ---

    async def set_leverage(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        leverage = _int(params, "leverage")
        if leverage is None:
            raise w.missing_param("leverage")
        self.emu.set_leverage(m, leverage)
        return _json({"leverage": leverage, "maxNotionalValue": str(_max_notional(leverage)), "symbol": m.venue_symbol})

    async def set_margin_type(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        m = self.emu.market(MarketKind.LINEAR, params.get("symbol"))
        margin_type = params.get("marginType")
        if not margin_type:
            raise w.missing_param("marginType")
        self.emu.set_margin_type(m, margin_type.upper())
        return _json({"code": 200, "msg": "success"})

    async def set_position_mode(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        raw = params.get("dualSidePosition")
        if not raw:
            raise w.missing_param("dualSidePosition")
        if raw.lower() not in ("true", "false"):
            raise w.WireError(400, -1100, "Illegal characters found in parameter 'dualSidePosition'.")
        self.emu.set_position_mode(raw.lower() == "true")
        return _json({"code": 200, "msg": "success"})

    async def spot_trade_fee(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        markets = [self.emu.market(MarketKind.SPOT, params["symbol"])] if params.get("symbol") else None
        rows = [
            {
                "symbol": m.venue_symbol,
                "makerCommission": w._plain(m.maker_fee),
                "takerCommission": w._plain(m.taker_fee),
            }
            for m in (markets or self.emu.markets(MarketKind.SPOT))
        ]
        return _json(rows)

    async def income(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        symbol = self.emu.market(MarketKind.LINEAR, params["symbol"]).venue_symbol if params.get("symbol") else None
        kind = params.get("incomeType")
        start, end = _int(params, "startTime"), _int(params, "endTime")
        limit = self._limit(params, 100, 1000)
        rows = [
            r
            for r in self._income_rows()
            if (symbol is None or r["symbol"] == symbol)
            and (kind is None or r["incomeType"] == kind)
            and (start is None or r["time"] >= start)
            and (end is None or r["time"] <= end)
        ]
        rows.sort(key=lambda r: (r["time"], r["tranId"]))
        return _json(rows[:limit] if start is not None else rows[-limit:])

    def _income_rows(self) -> list[dict[str, Any]]:
        """REALIZED_PNL and COMMISSION from our perp fills, TRANSFER and FUNDING_FEE as booked."""
        rows = list(self.emu.income)
        for m in self.emu.markets(MarketKind.LINEAR):
            for f in self.emu.engine.fills(m.symbol):
                stamp = w.ms(f.timestamp)
                base = {"symbol": m.venue_symbol, "asset": f.fee_asset, "time": stamp, "tradeId": str(f.trade_id)}
                if f.realized_pnl:
                    rows.append(
                        {
                            **base,
                            "incomeType": "REALIZED_PNL",
                            "income": w.fixed(f.realized_pnl, 8),
                            "info": "REALIZED_PNL",
                            "tranId": 2 * f.trade_id,
                        }
                    )
                if f.fee:
                    rows.append(
                        {
                            **base,
                            "incomeType": "COMMISSION",
                            "income": w.fixed(-f.fee, 8),
                            "info": "COMMISSION",
                            "tranId": 2 * f.trade_id + 1,
                        }
                    )
        keys = ("symbol", "incomeType", "income", "asset", "info", "time", "tranId", "tradeId")
        return [{k: r[k] for k in keys} for r in rows]

    async def system_status(self, request: web.Request) -> web.Response:
        return _json({"status": 0, "msg": "normal"})

    async def funding_info(self, request: web.Request) -> web.Response:
        hours = self.emu.data.funding_interval_ms / 3_600_000
        return _json(
            [
                {
                    "symbol": m.venue_symbol,
                    "adjustedFundingRateCap": "0.00750000",
                    "adjustedFundingRateFloor": "-0.00750000",
                    # Binance's intervals are whole hours; a scenario's shorter one is given as a fraction.
                    "fundingIntervalHours": int(hours) if hours == int(hours) else hours,
                    "disclaimer": False,
                }
                for m in self.emu.markets(MarketKind.LINEAR)
            ]
        )

    async def perp_account_config(self, request: web.Request) -> web.Response:
        await self.signed(request)
        return _json(
            {
                "feeTier": 0,
                "canTrade": True,
                "canDeposit": True,
                "canWithdraw": True,
                "dualSidePosition": self.emu.dual_side_position,
                "updateTime": 0,
                "multiAssetsMargin": False,
                "tradeGroupId": -1,
            }
        )

    async def transfer(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        for name in ("type", "asset"):
            if not params.get(name):
                raise w.missing_param(name)
        amount = _decimal(params, "amount")
        assert amount is not None
        return _json({"tranId": self.emu.transfer(params["type"], params["asset"], amount)})

    async def transfer_history(self, request: web.Request) -> web.Response:
        params = await self.signed(request)
        kind = params.get("type")
        if not kind:
            raise w.missing_param("type")
        start, end = _int(params, "startTime"), _int(params, "endTime")
        size = min(_int(params, "size", 10) or 10, 100)
        rows = [
            r
            for r in self.emu.transfers
            if r["type"] == kind
            and (start is None or r["timestamp"] >= start)
            and (end is None or r["timestamp"] <= end)
        ]
        return _json({"total": len(rows), "rows": rows[-size:]})

    # --- control (loopback only) ---

    async def control_state(self, request: web.Request) -> web.Response:
        return _json(self.emu.state())

    async def control_ccxt_urls(self, request: web.Request) -> web.Response:
        tls = request.query.get("tls", "0").lower() in ("1", "true", "yes")
        if tls and self.emu.tls_port is None:
            return _json({"error": "tls: this emulator serves no TLS listener"}, status=400)
        return _json({e: self.emu.ccxt_urls(e, tls=tls) for e in ("binance", "binanceusdm")})

    async def control_ccxt_config(self, request: web.Request) -> web.Response:
        if self.emu.tls_port is None:
            return _json({"error": "ccxt-config: this emulator serves no TLS listener"}, status=400)
        return _json({e: self.emu.ccxt_config(e) for e in ("binance", "binanceusdm")})

    async def control_faults(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return _json({"faults": [f.to_json() for f in self.emu.faults]})
        spec = await _json_body(request)
        if spec.get("clear") is True:
            self.emu.clear_faults()  # an outage ends too
            return _json({"faults": []})
        try:
            fault = self.emu.add_fault(spec)
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json({"added": fault.to_json(), "faults": [f.to_json() for f in self.emu.faults]})

    async def control_move(self, request: web.Request) -> web.Response:
        spec = await _json_body(request)
        try:
            m = self._control_market(spec)
            mid = self.emu.driver.mid_of(m)
            if "price" in spec:
                price = _control_decimal(spec, "price")
            elif "bps" in spec:
                price = mid * (1 + _control_decimal(spec, "bps") / 10_000)
            else:
                raise ValueError("move: give 'price' (new mid) or 'bps' (shift of the mid in basis points)")
            self.emu.move(m, price, both=bool(spec.get("both", False)))
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json({"symbol": m.venue_symbol, "market": m.kind.value, "mid": str(self.emu.driver.mid_of(m))})

    async def control_trade(self, request: web.Request) -> web.Response:
        spec = await _json_body(request)
        try:
            m = self._control_market(spec)
            side = spec.get("side")
            if side not in ("buy", "sell"):
                raise ValueError(f"side: {side!r} is not one of ['buy', 'sell'] (the aggressor)")
            self.emu.trade(m, Side(side), _control_decimal(spec, "price"), _control_decimal(spec, "quantity"))
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(self.emu.state())

    async def control_liquidate(self, request: web.Request) -> web.Response:
        spec = await _json_body(request)
        try:
            m = self._control_market({**spec, "market": "linear"})
            origin = OrderOrigin.ADL if spec.get("adl") else OrderOrigin.LIQUIDATION
            update = self.emu.liquidate(m, _control_decimal(spec, "quantity"), origin)
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json({"clientOrderId": update.client_order_id, "status": update.status.value})

    async def control_advance(self, request: web.Request) -> web.Response:
        spec = await _json_body(request)
        seconds = spec.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return _json({"error": f"seconds: must be a number, got {seconds!r}"}, status=400)
        try:
            self.emu.advance(float(seconds))
        except (RuntimeError, ValueError) as exc:
            return _json({"error": str(exc)}, status=409 if isinstance(exc, RuntimeError) else 400)
        return _json({"now": self.emu.now_ms()})

    async def control_funding(self, request: web.Request) -> web.Response:
        """Set the rate the next funding times settle at (`"rate": null`: back to the premium formula)."""
        spec = await _json_body(request)
        try:
            m = self._control_market({**spec, "market": "linear"})
            if spec.get("rate") is None:
                self.emu.data.funding_override.pop(m.symbol, None)
            else:
                self.emu.data.funding_override[m.symbol] = _control_decimal(spec, "rate")
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        now = self.emu.now_ms()
        return _json(
            {
                "symbol": m.venue_symbol,
                "predictedRate": str(self.emu.data.predicted_rate(m.symbol)),
                "nextFundingTime": self.emu.data.next_funding_ms(now),
            }
        )

    async def control_lag(self, request: web.Request) -> web.Response:
        """User-data events trail the REST view by `user_stream_ms` (0: delivered at once)."""
        spec = await _json_body(request)
        lag = spec.get("user_stream_ms")
        if not isinstance(lag, int | float) or isinstance(lag, bool) or lag < 0:
            return _json({"error": f"user_stream_ms: must be a number >= 0, got {lag!r}"}, status=400)
        self.emu.user_stream_lag = float(lag) / 1000
        return _json({"user_stream_ms": lag})

    def _control_market(self, spec: Mapping[str, Any]) -> Market:
        kind_name = spec.get("market", "spot")
        if kind_name not in ("spot", "linear"):
            raise ValueError(f"market: {kind_name!r} is not one of ['linear', 'spot']")
        symbol = spec.get("symbol")
        kind = MarketKind(kind_name)
        try:
            return self.emu.market(kind, symbol if isinstance(symbol, str) else None)
        except w.WireError:
            ids = [m.venue_symbol for m in self.emu.markets(kind)]
            raise ValueError(f"symbol: {symbol!r} is not one of {ids}") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body: not JSON"}', content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body: must be a JSON object"}', content_type="application/json")
    return body


def _control_decimal(spec: Mapping[str, Any], name: str) -> Decimal:
    raw = spec.get(name)
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if raw is None or isinstance(raw, bool) or not value.is_finite():
        raise ValueError(f"{name}: {raw!r} is not a number")
    return value


def _max_notional(leverage: int) -> int:
    eligible = [cap for lev, cap, _ in w.BRACKETS if lev >= leverage]
    return eligible[-1] if eligible else w.BRACKETS[-1][1]


def _request_kind(request: web.Request) -> MarketKind:
    kind = _kind_of(request.path)
    assert kind is not None
    return kind


# --- weights, faults, errors --------------------------------------------------------------------------


def _weight(request: web.Request) -> int:
    path, kind = request.path, _kind_of(request.path)
    if path.endswith("/depth"):
        limit = int(request.query.get("limit", "100")) if request.query.get("limit", "").isdigit() else 100
        if kind is MarketKind.SPOT:
            return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
    if path.endswith("/exchangeInfo"):
        return 20 if kind is MarketKind.SPOT else 1
    if path.endswith("/account"):
        return 20 if kind is MarketKind.SPOT else 5
    if path.endswith("/openOrders") and "symbol" not in request.query:
        return 80 if kind is MarketKind.SPOT else 40
    if path.endswith(("/myTrades", "/userTrades", "/allOrders")):
        return 20 if kind is MarketKind.SPOT else 5
    return 1


def _middleware(emulator: Emulator) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            if not _loopback(request):
                return _json({"error": "the control API answers loopback clients only"}, status=403)
            return await handler(request)
        if emulator.down:
            # The whole venue is away: REST, websocket handshakes, everything but the control API.
            return _http_error({"status": 503, "body": "503 Service Unavailable (emulator fault: outage)"})
        kind = _kind_of(request.path)
        if kind is None:
            return await handler(request)
        try:
            # A fault for one order type reads the request's parameters first (aiohttp keeps the body for the
            # handler); any other request is matched on its method and path alone, as before.
            order_type = (await _read(request))[0].get("type") if emulator.faults_by_order_type else None
            fault = emulator.take_fault(kind, request.method, request.path, order_type=order_type)
            if fault is not None and fault.fault == "reject":
                raise w.error_for_code(kind, fault.params["code"], fault.params.get("msg"), fault.params.get("status"))
            if fault is not None and fault.fault == "http_error" and not fault.params.get("process", False):
                return _http_error(fault.params)
            if fault is not None and fault.fault == "delay":
                # A real gateway that holds a request still executes it after the client hung up: the body
                # is read now, and the wait and the handler run shielded from the connection's fate.
                await request.read()
                task = asyncio.ensure_future(_delayed(emulator, request, handler, kind, fault.params["delay_ms"]))
                emulator.late_requests.add(task)
                task.add_done_callback(emulator.late_requests.discard)
                used, response = await asyncio.shield(task)
            else:
                used = emulator.charge_weight(kind, _weight(request))
                response = await handler(request)
        except w.WireError as err:
            return _error(err)
        except web.HTTPException:
            raise
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
        # The user-stream events this request caused (a fill, a cancel) leave before its answer does.
        await emulator.hub.flush()
        if fault is None:
            return response
        if fault.fault == "ack_timeout":
            # It took effect; the acknowledgement never comes. Hold the connection until shutdown.
            await _held(emulator, emulator.closing.wait())
            return _json(w.INTERNAL.body(), status=503)
        if fault.fault == "malformed_response" and isinstance(response, web.Response):
            text = response.text or "{}"
            return web.Response(status=200, text=text[: max(1, len(text) // 2)], content_type="application/json")
        if fault.fault == "http_error":
            return _http_error(fault.params)
        return response

    return middleware


async def _delayed(
    emulator: Emulator, request: web.Request, handler: Handler, kind: MarketKind, delay_ms: float
) -> tuple[int, web.StreamResponse]:
    await _held(emulator, emulator.sleep(float(delay_ms) / 1000))
    used = emulator.charge_weight(kind, _weight(request))
    return used, await handler(request)


async def _held(emulator: Emulator, waiting: Awaitable[Any]) -> None:
    emulator.held += 1
    emulator.notify()
    try:
        await waiting
    finally:
        emulator.held -= 1
        emulator.notify()


def _http_error(params: Mapping[str, Any]) -> web.Response:
    status = int(params.get("status", 503))
    return web.Response(
        status=status, text=str(params.get("body", f"{status} emulated failure")), content_type="text/html"
    )


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


async def _not_found(request: web.Request) -> web.Response:
    """Anything not served: Binance's own answer to an unknown path (JSON error, never an HTML page)."""
    return _error(w.UNKNOWN_PATH)


def make_app(emulator: Emulator) -> web.Application:
    app = web.Application(middlewares=[_middleware(emulator)])
    rest, hub, r = _Rest(emulator), emulator.hub, app.router
    # spot
    r.add_get("/api/v3/ping", rest.ping)
    r.add_get("/api/v3/time", rest.server_time)
    r.add_get("/api/v3/exchangeInfo", rest.spot_exchange_info)
    r.add_get("/api/v3/depth", rest.depth)
    r.add_get("/api/v3/ticker/bookTicker", rest.book_ticker)
    r.add_get("/api/v3/ticker/price", rest.ticker_price)
    r.add_get("/api/v3/avgPrice", rest.avg_price)
    r.add_get("/api/v3/ticker/24hr", rest.ticker_24hr)
    r.add_get("/api/v3/trades", rest.trades)
    r.add_get("/api/v3/historicalTrades", rest.trades)
    r.add_get("/api/v3/aggTrades", rest.agg_trades)
    r.add_get("/api/v3/klines", rest.klines)
    r.add_get("/api/v3/uiKlines", rest.klines)
    r.add_post("/api/v3/order", rest.spot_new_order)
    r.add_get("/api/v3/order", rest.spot_query_order)
    r.add_delete("/api/v3/order", rest.spot_cancel_order)
    r.add_delete("/api/v3/openOrders", rest.spot_cancel_all)
    r.add_get("/api/v3/openOrders", rest.open_orders)
    r.add_get("/api/v3/allOrders", rest.all_orders)
    r.add_get("/api/v3/account", rest.spot_account)
    r.add_get("/api/v3/myTrades", rest.my_trades)
    # spot wallet (SAPI)
    r.add_get("/sapi/v1/asset/tradeFee", rest.spot_trade_fee)
    r.add_get("/sapi/v1/system/status", rest.system_status)
    r.add_post("/sapi/v1/asset/transfer", rest.transfer)
    r.add_get("/sapi/v1/asset/transfer", rest.transfer_history)
    # USDⓈ-M
    r.add_get("/fapi/v1/ping", rest.ping)
    r.add_get("/fapi/v1/time", rest.server_time)
    r.add_get("/fapi/v1/exchangeInfo", rest.perp_exchange_info)
    r.add_get("/fapi/v1/depth", rest.depth)
    r.add_get("/fapi/v1/ticker/bookTicker", rest.book_ticker)
    r.add_get("/fapi/v1/ticker/price", rest.ticker_price)
    r.add_get("/fapi/v2/ticker/price", rest.ticker_price)
    r.add_get("/fapi/v1/fundingInfo", rest.funding_info)
    r.add_get("/fapi/v1/accountConfig", rest.perp_account_config)
    r.add_get("/fapi/v1/premiumIndex", rest.premium_index)
    r.add_get("/fapi/v1/fundingRate", rest.funding_rate)
    r.add_get("/fapi/v1/ticker/24hr", rest.ticker_24hr)
    r.add_get("/fapi/v1/trades", rest.trades)
    r.add_get("/fapi/v1/historicalTrades", rest.trades)
    r.add_get("/fapi/v1/aggTrades", rest.agg_trades)
    r.add_get("/fapi/v1/klines", rest.klines)
    r.add_get("/fapi/v1/markPriceKlines", rest.mark_price_klines)
    r.add_get("/fapi/v1/indexPriceKlines", rest.index_price_klines)
    r.add_get("/fapi/v1/premiumIndexKlines", rest.premium_index_klines)
    r.add_get("/fapi/v1/openInterest", rest.open_interest)
    r.add_get("/futures/data/openInterestHist", rest.open_interest_hist)
    r.add_post("/fapi/v1/order", rest.perp_new_order)
    r.add_get("/fapi/v1/order", rest.perp_query_order)
    r.add_delete("/fapi/v1/order", rest.perp_cancel_order)
    r.add_delete("/fapi/v1/allOpenOrders", rest.perp_cancel_all)
    r.add_get("/fapi/v1/openOrders", rest.open_orders)
    r.add_get("/fapi/v1/allOrders", rest.all_orders)
    r.add_get("/fapi/v1/userTrades", rest.my_trades)
    r.add_post("/fapi/v1/countdownCancelAll", rest.countdown_cancel_all)
    for method in ("POST", "PUT", "DELETE"):
        r.add_route(method, "/fapi/v1/listenKey", rest.listen_key)
    r.add_get("/fapi/v1/leverageBracket", rest.leverage_bracket)
    r.add_get("/fapi/v2/leverageBracket", rest.leverage_bracket)
    r.add_get("/fapi/v1/commissionRate", rest.commission_rate)
    r.add_get("/fapi/v1/positionSide/dual", rest.position_mode)
    r.add_post("/fapi/v1/positionSide/dual", rest.set_position_mode)
    r.add_post("/fapi/v1/leverage", rest.set_leverage)
    r.add_post("/fapi/v1/marginType", rest.set_margin_type)
    r.add_get("/fapi/v1/income", rest.income)
    r.add_get("/fapi/v1/symbolConfig", rest.symbol_config)
    r.add_get("/fapi/v2/positionRisk", rest.position_risk)
    r.add_get("/fapi/v3/positionRisk", rest.position_risk)
    r.add_get("/fapi/v2/account", rest.perp_account)
    r.add_get("/fapi/v3/account", rest.perp_account)
    r.add_get("/fapi/v2/balance", rest.perp_balance)
    r.add_get("/fapi/v3/balance", rest.perp_balance)
    # COIN-M: an empty market list, so ccxt.binance's default load_markets works
    r.add_get("/dapi/v1/exchangeInfo", rest.inverse_exchange_info)
    # websockets
    for base in ("/ws", "/stream/ws", "/fstream/ws", "/fstream/public/ws", "/fstream/market/ws"):
        r.add_get(base, hub.market_stream)
        r.add_get(base + "/{tail:.*}", hub.market_stream)
    for combined in ("/stream", "/fstream/stream", "/fstream/public/stream", "/fstream/market/stream"):
        r.add_get(combined, hub.market_stream)
    r.add_get("/fstream/private/ws", hub.perp_user_stream)
    r.add_get("/ws-api/v3", hub.spot_api)
    # control
    r.add_get("/_emulator/state", rest.control_state)
    r.add_get("/_emulator/ccxt-urls", rest.control_ccxt_urls)
    r.add_get("/_emulator/ccxt-config", rest.control_ccxt_config)
    r.add_route("GET", "/_emulator/faults", rest.control_faults)
    r.add_route("POST", "/_emulator/faults", rest.control_faults)
    r.add_post("/_emulator/move", rest.control_move)
    r.add_post("/_emulator/trade", rest.control_trade)
    r.add_post("/_emulator/liquidate", rest.control_liquidate)
    r.add_post("/_emulator/advance", rest.control_advance)
    r.add_post("/_emulator/funding", rest.control_funding)
    r.add_post("/_emulator/lag", rest.control_lag)
    r.add_route("*", "/{tail:.*}", _not_found)
    return app
