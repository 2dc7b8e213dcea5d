"""Binance's wire vocabulary for the emulator: the error codes and texts it answers with, and the JSON
shapes of its orders, trades, books and user-data events, built from the matching engine's state.

Every shape here is held key-for-key and type-for-type to a recorded real message by
`tests/adapters/test_wire_shapes.py`; numbers travel as strings, formatted the way Binance formats them
(spot: 8 decimals; USDⓈ-M: the tick / step precision of the symbol).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from legguard.adapters.market._matching import Fill
from legguard.domain import ZERO, Market, MarketKind, OrderOrigin, OrderStatus, OrderUpdate, Side

JSON = dict[str, Any]

SPOT_PLACES = 8
FUNDING_INTERVAL_MS = 8 * 3600 * 1000


# --- errors -------------------------------------------------------------------------------------------


class WireError(Exception):
    """A Binance error response: HTTP status plus `{"code": code, "msg": msg}`."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        self.status = status
        self.code = code
        self.msg = msg
        super().__init__(f"HTTP {status} {code} {msg}")

    def body(self) -> JSON:
        return {"code": self.code, "msg": self.msg}


# The texts below are Binance's own (spot and USDⓈ-M API error-code pages); ccxt maps codes and texts to
# its exception classes, so they must not be paraphrased.
def missing_param(name: str) -> WireError:
    return WireError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def illegal_chars(name: str) -> WireError:
    return WireError(
        400,
        -1100,
        f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.",
    )


def not_required(name: str) -> WireError:
    return WireError(400, -1106, f"Parameter '{name}' sent when not required.")


API_KEY_FORMAT = WireError(401, -2014, "API-key format invalid.")
API_KEY_INVALID = WireError(401, -2015, "Invalid API-key, IP, or permissions for action.")
BAD_SIGNATURE = WireError(400, -1022, "Signature for this request is not valid.")
RECV_WINDOW = WireError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
RECV_WINDOW_TOO_LARGE = WireError(400, -1131, "recvWindow must be less than 60000")
INVALID_SYMBOL = WireError(400, -1121, "Invalid symbol.")
INVALID_SIDE = WireError(400, -1117, "Invalid side.")
INVALID_TYPE = WireError(400, -1116, "Invalid orderType.")
INVALID_TIF = WireError(400, -1115, "Invalid timeInForce.")
PRECISION = WireError(400, -1111, "Precision is over the maximum defined for this asset.")
UNKNOWN_ORDER_CANCEL = WireError(400, -2011, "Unknown order sent.")
UNKNOWN_ORDER_QUERY = WireError(400, -2013, "Order does not exist.")
INVALID_LISTEN_KEY = WireError(400, -1125, "This listenKey does not exist.")
INTERNAL = WireError(500, -1001, "Internal error; unable to process your request. Please try again.")
UNKNOWN_PATH = WireError(404, -1000, "An unknown error occured while processing the request.")

SPOT_POST_ONLY = WireError(400, -2010, "Order would immediately match and take.")
SPOT_BALANCE = WireError(400, -2010, "Account has insufficient balance for requested action.")
SPOT_DUPLICATE = WireError(400, -2010, "Duplicate order sent.")
SPOT_PRICE_FILTER = WireError(400, -1013, "Filter failure: PRICE_FILTER")
SPOT_LOT_SIZE = WireError(400, -1013, "Filter failure: LOT_SIZE")
SPOT_MIN_NOTIONAL = WireError(400, -1013, "Filter failure: MIN_NOTIONAL")
SPOT_REDUCE_ONLY = not_required("reduceOnly")
SPOT_CLIENT_ID = WireError(
    400, -1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'."
)

PERP_POST_ONLY = WireError(
    400, -5022, "Due to the order could not be executed as maker, the Post Only order will be rejected."
)
PERP_MARGIN = WireError(400, -2019, "Margin is insufficient.")
PERP_DUPLICATE = WireError(400, -4116, "ClientOrderId is duplicated.")
PERP_REDUCE_ONLY = WireError(400, -2022, "ReduceOnly Order is rejected.")
PERP_TICK = WireError(400, -4014, "Price not increased by tick size.")
PERP_STEP = WireError(400, -4023, "Qty not increased by step size.")
PERP_QTY_ZERO = WireError(400, -4003, "Quantity less than or equal to zero.")
PERP_MIN_QTY = WireError(400, -4004, "Quantity less than min qty.")
PERP_CLIENT_ID = WireError(400, -4015, "Client order id is not valid.")


def perp_min_notional(min_notional: Decimal) -> WireError:
    return WireError(
        400, -4164, f"Order's notional must be no smaller than {_plain(min_notional)} (unless you choose reduce only)."
    )


def rate_limited(limit: int, market: MarketKind) -> WireError:
    # 429 is what makes ccxt raise DDoSProtection before it even reads the code.
    return WireError(
        429,
        -1003,
        f"Too many requests; current limit of IP(127.0.0.1) is {limit} requests per minute. "
        "Please use the websocket for live updates to avoid polling the API."
        if market is MarketKind.LINEAR
        else f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
    )


# Default texts for faults that reject with a bare code (`{"fault": "reject", "code": -1003}`).
KNOWN_CODES: dict[tuple[MarketKind, int], WireError] = {
    (kind, err.code): err
    for kind, errs in (
        (
            MarketKind.SPOT,
            (
                SPOT_BALANCE,
                SPOT_PRICE_FILTER,
                UNKNOWN_ORDER_CANCEL,
                UNKNOWN_ORDER_QUERY,
                BAD_SIGNATURE,
                RECV_WINDOW,
                API_KEY_INVALID,
                API_KEY_FORMAT,
                INTERNAL,
                rate_limited(1200, MarketKind.SPOT),
                INVALID_SYMBOL,
            ),
        ),
        (
            MarketKind.LINEAR,
            (
                PERP_MARGIN,
                PERP_POST_ONLY,
                PERP_DUPLICATE,
                PERP_REDUCE_ONLY,
                PERP_TICK,
                UNKNOWN_ORDER_CANCEL,
                UNKNOWN_ORDER_QUERY,
                BAD_SIGNATURE,
                RECV_WINDOW,
                API_KEY_INVALID,
                API_KEY_FORMAT,
                INTERNAL,
                rate_limited(6000, MarketKind.LINEAR),
                INVALID_SYMBOL,
            ),
        ),
    )
    for err in errs
}


def error_for_code(kind: MarketKind, code: int, msg: str | None = None, status: int | None = None) -> WireError:
    known = KNOWN_CODES.get((kind, code))
    default_status = 429 if code == -1003 else 500 if code in (-1000, -1001, -1007) else 400
    return WireError(
        status if status is not None else known.status if known else default_status,
        code,
        msg if msg is not None else known.msg if known else "An unknown error occured while processing the request.",
    )


# --- numbers ------------------------------------------------------------------------------------------


def _plain(value: Decimal) -> str:
    """`10` rather than `1E+1`, `0.001` rather than `1E-3`."""
    text = format(value.normalize(), "f")
    return text


def fixed(value: Decimal, places: int) -> str:
    return f"{value:.{places}f}"


def places_of(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def fmt_price(market: Market, value: Decimal) -> str:
    if market.kind is MarketKind.SPOT:
        return fixed(value, SPOT_PLACES)
    return fixed(value, places_of(market.tick_size))


def fmt_qty(market: Market, value: Decimal) -> str:
    if market.kind is MarketKind.SPOT:
        return fixed(value, SPOT_PLACES)
    return fixed(value, places_of(market.step_size))


def fmt_quote(market: Market, value: Decimal) -> str:
    """Quote amounts (cumulative quote, notional): 8 decimals on spot, trimmed on futures like Binance."""
    if market.kind is MarketKind.SPOT:
        return fixed(value, SPOT_PLACES)
    return fixed(value, 5)


def fmt_fee(value: Decimal) -> str:
    return fixed(value, 8)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


# --- our view of an order beyond what the engine keeps ------------------------------------------------


@dataclass(slots=True)
class WireOrder:
    """What the request said about an order that the engine's OrderUpdate does not carry."""

    market: Market
    client_order_id: str
    order_type: str  # LIMIT, LIMIT_MAKER, MARKET
    time_in_force: str  # GTC, GTX, IOC, FOK ("GTC" for spot LIMIT_MAKER and MARKET, like Binance)
    price: Decimal | None
    created_ms: int
    reduce_only: bool = False
    origin: OrderOrigin = OrderOrigin.OURS

    @property
    def on_book(self) -> bool:
        return self.order_type != "MARKET"


_STATUS = {
    OrderStatus.OPEN: "NEW",
    OrderStatus.CLOSED: "FILLED",
    OrderStatus.CANCELED: "CANCELED",
    OrderStatus.EXPIRED: "EXPIRED",
    OrderStatus.REJECTED: "REJECTED",
}


def wire_status(update: OrderUpdate) -> str:
    if update.status is OrderStatus.OPEN and update.filled > 0:
        return "PARTIALLY_FILLED"
    return _STATUS.get(update.status, "NEW")


def _side(side: Side) -> str:
    return "BUY" if side is Side.BUY else "SELL"


def _cost(update: OrderUpdate) -> Decimal:
    return (update.average * update.filled) if update.average is not None else ZERO


def order_id(update: OrderUpdate) -> int:
    assert update.venue_order_id is not None, "every engine order has a venue id"
    return int(update.venue_order_id)


# --- spot REST ----------------------------------------------------------------------------------------


def spot_order(meta: WireOrder, update: OrderUpdate) -> JSON:
    """GET /api/v3/order, openOrders and allOrders element."""
    m = meta.market
    return {
        "symbol": m.venue_symbol,
        "orderId": order_id(update),
        "orderListId": -1,
        "clientOrderId": update.client_order_id,
        "price": fmt_price(m, meta.price or ZERO),
        "origQty": fmt_qty(m, update.amount),
        "executedQty": fmt_qty(m, update.filled),
        "cummulativeQuoteQty": fmt_quote(m, _cost(update)),
        "status": wire_status(update),
        "timeInForce": meta.time_in_force,
        "type": meta.order_type,
        "side": _side(update.side),
        "stopPrice": fixed(ZERO, SPOT_PLACES),
        "icebergQty": fixed(ZERO, SPOT_PLACES),
        "time": meta.created_ms,
        "updateTime": ms(update.timestamp),
        "isWorking": meta.on_book,
        "workingTime": meta.created_ms if meta.on_book else -1,
        "origQuoteOrderQty": fixed(ZERO, SPOT_PLACES),
        "selfTradePreventionMode": "EXPIRE_MAKER",
    }


def spot_fill(m: Market, fill: Fill) -> JSON:
    return {
        "price": fmt_price(m, fill.price),
        "qty": fmt_qty(m, fill.quantity),
        "commission": fmt_fee(fill.fee),
        "commissionAsset": fill.fee_asset,
        "tradeId": fill.trade_id,
    }


def spot_new_order_ack(meta: WireOrder, update: OrderUpdate, fills: list[Fill], resp_type: str) -> JSON:
    """POST /api/v3/order in the ACK, RESULT or FULL response type."""
    m = meta.market
    ack: JSON = {
        "symbol": m.venue_symbol,
        "orderId": order_id(update),
        "orderListId": -1,
        "clientOrderId": update.client_order_id,
        "transactTime": meta.created_ms,
    }
    if resp_type == "ACK":
        return ack
    ack.update(
        {
            "price": fmt_price(m, meta.price or ZERO),
            "origQty": fmt_qty(m, update.amount),
            "executedQty": fmt_qty(m, update.filled),
            "origQuoteOrderQty": fixed(ZERO, SPOT_PLACES),
            "cummulativeQuoteQty": fmt_quote(m, _cost(update)),
            "status": wire_status(update),
            "timeInForce": meta.time_in_force,
            "type": meta.order_type,
            "side": _side(update.side),
            "workingTime": meta.created_ms if meta.on_book else -1,
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }
    )
    if resp_type == "FULL":
        ack["fills"] = [spot_fill(m, f) for f in fills]
    return ack


def spot_cancel(meta: WireOrder, update: OrderUpdate, cancel_client_id: str, now_ms: int) -> JSON:
    """DELETE /api/v3/order: `clientOrderId` is the cancel request's own id, the order's is `origClientOrderId`."""
    m = meta.market
    return {
        "symbol": m.venue_symbol,
        "origClientOrderId": update.client_order_id,
        "orderId": order_id(update),
        "orderListId": -1,
        "clientOrderId": cancel_client_id,
        "transactTime": now_ms,
        "price": fmt_price(m, meta.price or ZERO),
        "origQty": fmt_qty(m, update.amount),
        "executedQty": fmt_qty(m, update.filled),
        "origQuoteOrderQty": fixed(ZERO, SPOT_PLACES),
        "cummulativeQuoteQty": fmt_quote(m, _cost(update)),
        "status": wire_status(update),
        "timeInForce": meta.time_in_force,
        "type": meta.order_type,
        "side": _side(update.side),
        "selfTradePreventionMode": "EXPIRE_MAKER",
    }


def spot_my_trade(m: Market, fill: Fill) -> JSON:
    return {
        "symbol": m.venue_symbol,
        "id": fill.trade_id,
        "orderId": int(fill.venue_order_id),
        "orderListId": -1,
        "price": fmt_price(m, fill.price),
        "qty": fmt_qty(m, fill.quantity),
        "quoteQty": fmt_quote(m, fill.price * fill.quantity),
        "commission": fmt_fee(fill.fee),
        "commissionAsset": fill.fee_asset,
        "time": ms(fill.timestamp),
        "isBuyer": fill.side is Side.BUY,
        "isMaker": fill.maker,
        "isBestMatch": True,
    }


# --- USDⓈ-M REST --------------------------------------------------------------------------------------


def perp_order(meta: WireOrder, update: OrderUpdate, *, for_query: bool) -> JSON:
    """GET /fapi/v1/order and openOrders element (`for_query`), else the POST/DELETE order response."""
    m = meta.market
    avg = update.average if update.average is not None else ZERO
    common: JSON = {
        "orderId": order_id(update),
        "symbol": m.venue_symbol,
        "status": wire_status(update),
        "clientOrderId": update.client_order_id,
        "price": fmt_price(m, meta.price or ZERO),
        "avgPrice": fmt_price(m, avg),
        "origQty": fmt_qty(m, update.amount),
        "executedQty": fmt_qty(m, update.filled),
        "cumQuote": fmt_quote(m, _cost(update)),
        "timeInForce": meta.time_in_force,
        "type": meta.order_type,
        "reduceOnly": meta.reduce_only,
        "closePosition": False,
        "side": _side(update.side),
        "positionSide": "BOTH",
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": meta.order_type,
        "updateTime": ms(update.timestamp),
    }
    if for_query:
        common["time"] = meta.created_ms
    else:
        common["cumQty"] = fmt_qty(m, update.filled)
        common["priceMatch"] = "NONE"
        common["selfTradePreventionMode"] = "EXPIRE_MAKER"
        common["goodTillDate"] = 0
    return common


def perp_user_trade(m: Market, fill: Fill) -> JSON:
    return {
        "symbol": m.venue_symbol,
        "id": fill.trade_id,
        "orderId": int(fill.venue_order_id),
        "side": _side(fill.side),
        "price": fmt_price(m, fill.price),
        "qty": fmt_qty(m, fill.quantity),
        "realizedPnl": fmt_fee(fill.realized_pnl),
        "marginAsset": m.quote,
        "quoteQty": fmt_quote(m, fill.price * fill.quantity),
        "commission": fmt_fee(fill.fee),
        "commissionAsset": fill.fee_asset,
        "time": ms(fill.timestamp),
        "positionSide": "BOTH",
        "buyer": fill.side is Side.BUY,
        "maker": fill.maker,
    }


# --- books --------------------------------------------------------------------------------------------


def levels(m: Market, side: tuple[tuple[Decimal, Decimal], ...] | list[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[fmt_price(m, p), fmt_qty(m, q)] for p, q in side]


# --- user-data events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execution:
    """One step of one order as Binance reports it: the new cumulative state plus, for a trade, the fill."""

    meta: WireOrder
    update: OrderUpdate
    execution_type: str  # NEW, TRADE, CANCELED, EXPIRED, CALCULATED
    status: str  # NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED
    filled: Decimal  # cumulative, after this step
    cost: Decimal  # cumulative quote, after this step
    fill: Fill | None = None
    client_order_id: str | None = None  # spot cancels: the cancel request's id; the order's goes in "C"


def spot_execution_report(ex: Execution, event_ms: int) -> JSON:
    m, fill = ex.meta.market, ex.fill
    canceled = ex.execution_type == "CANCELED"
    return {
        "e": "executionReport",
        "E": event_ms,
        "s": m.venue_symbol,
        "c": ex.client_order_id if canceled and ex.client_order_id else ex.update.client_order_id,
        "S": _side(ex.update.side),
        "o": ex.meta.order_type,
        "f": ex.meta.time_in_force,
        "q": fmt_qty(m, ex.update.amount),
        "p": fmt_price(m, ex.meta.price or ZERO),
        "P": fixed(ZERO, SPOT_PLACES),
        "F": fixed(ZERO, SPOT_PLACES),
        "g": -1,
        "C": ex.update.client_order_id if canceled else "",
        "x": ex.execution_type,
        "X": ex.status,
        "r": "NONE",
        "i": order_id(ex.update),
        "l": fmt_qty(m, fill.quantity if fill else ZERO),
        "z": fmt_qty(m, ex.filled),
        "L": fmt_price(m, fill.price if fill else ZERO),
        "n": fmt_fee(fill.fee) if fill else "0",
        "N": fill.fee_asset if fill else None,
        "T": ms(fill.timestamp) if fill else event_ms,
        "t": fill.trade_id if fill else -1,
        "I": order_id(ex.update) * 2 + 1,  # Binance's "ignore" field: an internal id
        "w": ex.status in ("NEW", "PARTIALLY_FILLED") and ex.meta.on_book,
        "m": fill.maker if fill else False,
        "M": False,
        "O": ex.meta.created_ms,
        "Z": fmt_quote(m, ex.cost),
        "Y": fmt_quote(m, fill.price * fill.quantity if fill else ZERO),
        "Q": fixed(ZERO, SPOT_PLACES),
    }


def perp_order_trade_update(ex: Execution, event_ms: int) -> JSON:
    m, fill, meta = ex.meta.market, ex.fill, ex.meta
    avg = ex.cost / ex.filled if ex.filled else ZERO
    notional = (
        (meta.price or ZERO) * (ex.update.amount - ex.filled) if ex.status in ("NEW", "PARTIALLY_FILLED") else ZERO
    )
    liquidation = meta.origin is not OrderOrigin.OURS
    return {
        "e": "ORDER_TRADE_UPDATE",
        "E": event_ms,
        "T": event_ms,
        "o": {
            "s": m.venue_symbol,
            "c": ex.update.client_order_id,
            "S": _side(ex.update.side),
            "o": meta.order_type,
            "f": meta.time_in_force,
            "q": fmt_qty(m, ex.update.amount),
            "p": fmt_price(m, meta.price or ZERO) if meta.price is not None else "0",
            "ap": fmt_price(m, avg),
            "sp": None if liquidation else "0",
            "x": ex.execution_type,
            "X": ex.status,
            "i": order_id(ex.update),
            "l": fmt_qty(m, fill.quantity if fill else ZERO),
            "z": fmt_qty(m, ex.filled),
            "L": fmt_price(m, fill.price if fill else ZERO),
            "N": fill.fee_asset if fill else None,
            "n": fmt_fee(fill.fee) if fill else None,
            "T": ms(fill.timestamp) if fill else event_ms,
            "t": fill.trade_id if fill else 0,
            "b": fmt_quote(m, notional) if ex.update.side is Side.BUY else "0",
            "a": fmt_quote(m, notional) if ex.update.side is Side.SELL else "0",
            "m": fill.maker if fill else False,
            "R": meta.reduce_only,
            "wt": "CONTRACT_PRICE",
            "ot": meta.order_type,
            "ps": "BOTH",
            "cp": False,
            "AP": None,
            "cr": None,
            "pP": False,
            "si": 0,
            "ss": 0,
            "rp": fmt_fee(fill.realized_pnl) if fill else "0",
            "gtd": 0,
            "W": None if liquidation else meta.created_ms,
            "V": None,
        },
    }


# --- request checks -----------------------------------------------------------------------------------


def check_timestamp(params: Mapping[str, str], server_ms: int | None = None) -> None:
    """Binance's rule: accept iff timestamp < server + 1000 and server - timestamp <= recvWindow."""
    raw = params.get("timestamp")
    if not raw:
        raise missing_param("timestamp")
    try:
        stamp = int(raw)
        window = int(params.get("recvWindow") or 5000)
    except ValueError:
        raise illegal_chars("timestamp" if not raw.isdigit() else "recvWindow") from None
    if window > 60_000 or window <= 0:
        raise RECV_WINDOW_TOO_LARGE
    server = server_ms if server_ms is not None else int(time.time() * 1000)
    if stamp >= server + 1000:
        raise WireError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    if server - stamp > window:
        raise RECV_WINDOW


# --- exchange info ------------------------------------------------------------------------------------

# Request-weight and order limits as the recorded exchangeInfo responses advertise them; the emulator
# enforces REQUEST_WEIGHT.
SPOT_RATE_LIMITS: list[JSON] = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 6100},
]
PERP_RATE_LIMITS: list[JSON] = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]
SPOT_MAX_QTY = Decimal(9000)
PERP_MAX_QTY = Decimal(10000)
MAX_PRICE = Decimal(1_000_000)
MAX_OPEN_ORDERS = 200

SPOT_ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET")
PERP_ORDER_TYPES = ("LIMIT", "MARKET")
PERP_TIME_IN_FORCE = ("GTC", "IOC", "GTX")


def spot_symbol_info(m: Market) -> JSON:
    return {
        "symbol": m.venue_symbol,
        "status": "TRADING",
        "baseAsset": m.base,
        "baseAssetPrecision": 8,
        "quoteAsset": m.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(SPOT_ORDER_TYPES),  # only what the emulator serves
        "icebergAllowed": False,
        "ocoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fixed(m.tick_size, 8),
                "maxPrice": fixed(MAX_PRICE, 8),
                "tickSize": fixed(m.tick_size, 8),
            },
            {"filterType": "PERCENT_PRICE", "multiplierUp": "5", "multiplierDown": "0.2", "avgPriceMins": 5},
            {
                "filterType": "LOT_SIZE",
                "minQty": fixed(m.min_qty, 8),
                "maxQty": fixed(SPOT_MAX_QTY, 8),
                "stepSize": fixed(m.step_size, 8),
            },
            {
                "filterType": "MIN_NOTIONAL",
                "minNotional": fixed(m.min_notional, 8),
                "applyToMarket": True,
                "avgPriceMins": 5,
            },
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": fixed(ZERO, 8),
                "maxQty": fixed(SPOT_MAX_QTY, 8),
                "stepSize": fixed(ZERO, 8),
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": MAX_OPEN_ORDERS},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": ["SPOT"],
    }


def perp_symbol_info(m: Market) -> JSON:
    price_places, qty_places = places_of(m.tick_size), places_of(m.step_size)
    return {
        "symbol": m.venue_symbol,
        "pair": m.venue_symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": m.base,
        "quoteAsset": m.quote,
        "marginAsset": m.quote,
        "pricePrecision": price_places,
        "quantityPrecision": qty_places,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.10",
        "filters": [
            {
                "minPrice": fixed(m.tick_size, price_places),
                "maxPrice": fixed(MAX_PRICE, price_places),
                "filterType": "PRICE_FILTER",
                "tickSize": fixed(m.tick_size, price_places),
            },
            {
                "stepSize": fixed(m.step_size, qty_places),
                "filterType": "LOT_SIZE",
                "maxQty": _plain(PERP_MAX_QTY),
                "minQty": fixed(m.min_qty, qty_places),
            },
            {
                "stepSize": fixed(m.step_size, qty_places),
                "filterType": "MARKET_LOT_SIZE",
                "maxQty": _plain(PERP_MAX_QTY),
                "minQty": fixed(m.min_qty, qty_places),
            },
            {"limit": MAX_OPEN_ORDERS, "filterType": "MAX_NUM_ORDERS"},
            {"limit": 10, "filterType": "MAX_NUM_ALGO_ORDERS"},
            {"notional": _plain(m.min_notional), "filterType": "MIN_NOTIONAL"},
            {
                "multiplierDown": "0.9000",
                "multiplierUp": "1.1000",
                "multiplierDecimal": "4",
                "filterType": "PERCENT_PRICE",
            },
        ],
        "orderTypes": list(PERP_ORDER_TYPES),
        "timeInForce": list(PERP_TIME_IN_FORCE),
    }


# Illustrative USDⓈ-M leverage brackets (leverage, notional cap, maintenance margin ratio), one table for
# every symbol; the emulator's margin numbers use the first bracket.
BRACKETS: tuple[tuple[int, int, Decimal], ...] = (
    (125, 50_000, Decimal("0.004")),
    (100, 250_000, Decimal("0.005")),
    (50, 1_000_000, Decimal("0.01")),
    (20, 10_000_000, Decimal("0.025")),
    (10, 20_000_000, Decimal("0.05")),
    (5, 50_000_000, Decimal("0.1")),
    (4, 100_000_000, Decimal("0.125")),
    (3, 200_000_000, Decimal("0.15")),
    (2, 300_000_000, Decimal("0.25")),
    (1, 500_000_000, Decimal("0.5")),
)
MAINT_MARGIN_RATIO = BRACKETS[0][2]


def leverage_brackets(m: Market) -> JSON:
    out, floor, cum, prev_mmr = [], 0, Decimal(0), Decimal(0)
    for i, (leverage, cap, mmr) in enumerate(BRACKETS, start=1):
        cum += floor * (mmr - prev_mmr)
        out.append(
            {
                "bracket": i,
                "initialLeverage": leverage,
                "notionalCap": cap,
                "notionalFloor": floor,
                "maintMarginRatio": float(mmr),
                "cum": float(cum),
            }
        )
        floor, prev_mmr = cap, mmr
    return {"symbol": m.venue_symbol, "notionalCoef": 1.0, "brackets": out}
