"""The ccxt boundary's translations: ccxt exceptions to `_types` errors, ccxt order/market/book structures to
`OrderUpdate`/`Market`/`BookSnapshot` (Decimal via `str`, never float arithmetic), the per-order fee ledger,
the request-weight budget, and the URL-based choice of Binance's market-specific error table.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async
import trio
from ccxt.base.precise import Precise

from legguard.adapters._redact import MAX_DETAIL as MAX_DETAIL
from legguard.adapters._redact import Redactor as Redactor
from legguard.adapters._redact import scrub as scrub
from legguard.domain import (
    ZERO,
    AuthenticationFailed,
    BookSnapshot,
    DuplicateOrder,
    MalformedResponse,
    Market,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderStatus,
    OrderUpdate,
    OutcomeUnknown,
    RateLimited,
    RejectReason,
    Side,
    VenueError,
)

# --- Binance's error tables, completed for our needs --------------------------------------------------


class ReduceOnlyRejected(ccxt.InvalidOrder):  # type: ignore[misc]
    """Binance USDⓈ-M -2022 "ReduceOnly Order is rejected." (ccxt files it under plain InvalidOrder)."""


# Entries added to ccxt's own exception tables through the constructor config, so ccxt's `handle_errors`
# itself classifies these answers: a duplicate client order id is a plain InvalidOrder (spot -2010) or
# InvalidOrder (USDⓈ-M -4116) in stock ccxt, and the engine must tell "it exists" from "it was refused".
EXCEPTION_OVERRIDES: dict[str, Any] = {
    "exact": {"Duplicate order sent.": ccxt.DuplicateOrderId},
    "linear": {
        "exact": {
            "-4116": ccxt.DuplicateOrderId,
            "-2022": ReduceOnlyRejected,
        }
    },
}

# ccxt's Binance `get_exceptions_by_url` recognises only Binance's own hostnames; against any other base
# URL (the emulator, a proxy) it falls back to the generic table, where -5022 (post-only would cross) and
# -2019 (margin insufficient) surface as bare ExchangeError. We classify by which configured API group the
# URL belongs to instead.
_GROUP_MARKET_TYPES = (("fapi", "linear"), ("dapi", "inverse"), ("eapi", "option"), ("papi", "portfolioMargin"))


def market_type_of_url(api_urls: Mapping[str, Any], url: str) -> str | None:
    """The Binance market type ('spot', 'linear', ...) of a request URL, from the longest configured API base
    URL it starts with; None if it matches none."""
    best: tuple[int, str] | None = None
    for group, base in api_urls.items():
        if not isinstance(base, str) or not base:
            continue
        matches = url == base or url.startswith((base + "/", base + "?"))
        if matches and (best is None or len(base) > best[0]):
            best = (len(base), group)
    if best is None:
        return None
    group = best[1]
    for prefix, market_type in _GROUP_MARKET_TYPES:
        if group.startswith(prefix):
            return market_type
    return "spot"


def exceptions_by_url(self: Any, url: str | None, exact_or_broad: str) -> dict[str, Any]:
    """Replacement for ccxt Binance's `get_exceptions_by_url`: ccxt's own answer when it recognises the
    URL, else the table of the API group the URL was configured for."""
    found: dict[str, Any] = ccxt_async.binance.get_exceptions_by_url(self, url, exact_or_broad)
    if found or url is None:
        return found
    market_type = market_type_of_url(self.urls.get("api", {}), url)
    if market_type is None:
        return {}
    table: dict[str, Any] = self.exceptions.get(market_type, {}).get(exact_or_broad, {})
    return table


# --- secrets (the scrubber lives in _redact.py: the log sinks use it without importing ccxt) ---------------

# --- errors -------------------------------------------------------------------------------------------


def translate_error(
    exc: BaseException,
    *,
    what: str,
    secrets: Iterable[str],
    client_order_id: str | None = None,
    placing: bool = False,
    post_only: bool = False,
) -> VenueError:
    """The `_types` error for a failed ccxt call. `placing`: the call was a new order, so a definite refusal
    becomes OrderRejected (the order does not exist); anything that may have reached the matching engine
    becomes OutcomeUnknown / MalformedResponse."""
    detail = f"{what}: {type(exc).__name__}: {scrub(str(exc), secrets)}"
    cid = client_order_id or "?"
    if isinstance(exc, ccxt.DuplicateOrderId):
        return DuplicateOrder(cid) if client_order_id else VenueError(detail)
    if isinstance(exc, ccxt.OrderImmediatelyFillable | ccxt.OrderNotFillable):
        reason = (
            RejectReason.POST_ONLY_CROSS
            if post_only or isinstance(exc, ccxt.OrderImmediatelyFillable)
            else (RejectReason.OTHER)
        )
        return OrderRejected(cid, reason, detail)
    if isinstance(exc, ReduceOnlyRejected):
        return OrderRejected(cid, RejectReason.REDUCE_ONLY_REJECTED, detail)
    if isinstance(exc, ccxt.OrderNotFound):
        if placing:
            return OrderRejected(cid, RejectReason.OTHER, detail)
        return OrderNotFound(cid, detail)
    if isinstance(exc, ccxt.InsufficientFunds):
        return OrderRejected(cid, RejectReason.INSUFFICIENT_FUNDS, detail) if placing else VenueError(detail)
    if isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return RateLimited(detail)
    if isinstance(exc, ccxt.AuthenticationError):
        return AuthenticationFailed(detail)
    if isinstance(exc, ccxt.InvalidNonce):
        # -1021: the timestamp was outside recvWindow; Binance refused the request before matching.
        return OrderRejected(cid, RejectReason.OTHER, detail) if placing else VenueError(detail)
    if isinstance(exc, ccxt.BadResponse):
        return MalformedResponse(detail)
    if isinstance(exc, ccxt.OperationFailed):
        # NetworkError, RequestTimeout, ExchangeNotAvailable (5xx), -1000/-1001/-1006/-1007: the request may
        # have been executed.
        return OutcomeUnknown(detail)
    if isinstance(exc, ccxt.InvalidOrder | ccxt.BadRequest | ccxt.ArgumentsRequired):
        return OrderRejected(cid, RejectReason.INVALID_ORDER, detail) if placing else VenueError(detail)
    if isinstance(exc, ccxt.ExchangeError):
        return OrderRejected(cid, RejectReason.OTHER, detail) if placing else VenueError(detail)
    if isinstance(exc, asyncio.CancelledError):
        # Cancelled from the asyncio side (loop or session closing), not by trio: nobody knows what happened.
        return OutcomeUnknown(f"{what}: cancelled inside asyncio")
    if isinstance(exc, ccxt.BaseError):
        return OutcomeUnknown(detail) if placing else VenueError(detail)
    # Anything else escaped ccxt's own parsing of the venue's answer.
    return MalformedResponse(detail)


# Exceptions that mean "ccxt could not make sense of what the venue sent" when they escape a ccxt call.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    IndexError,
    ArithmeticError,
)


# --- numbers ------------------------------------------------------------------------------------------


def dec(value: object, what: str) -> Decimal:
    """A venue number as Decimal, through `str` (ccxt hands out floats and strings). Raises
    MalformedResponse naming the field."""
    if isinstance(value, bool) or value is None:
        raise MalformedResponse(f"{what}: expected a number, got {value!r}")
    if isinstance(value, Decimal):
        d = value
    else:
        try:
            d = Decimal(str(value))
        except (InvalidOperation, ValueError):
            raise MalformedResponse(f"{what}: expected a number, got {value!r}") from None
    if not d.is_finite():
        raise MalformedResponse(f"{what}: expected a finite number, got {value!r}")
    return plain(d)


def plain(d: Decimal) -> Decimal:
    """`d` without float-formatting noise: Decimal('1000.0') -> 1000, Decimal('1E+1') -> 10."""
    n = d.normalize()
    return n.quantize(Decimal(1)) if n == n.to_integral_value() else n


def dec_or(value: object, what: str, default: Decimal) -> Decimal:
    return default if value is None or value == "" else dec(value, what)


# --- markets ------------------------------------------------------------------------------------------


def market_from_ccxt(m: Mapping[str, Any], tick_size_mode: bool) -> Market:
    """A `Market` from a ccxt market structure (Binance: precision is given as tick sizes)."""
    symbol = str(m["symbol"])
    kind = MarketKind.SPOT if m.get("spot") else MarketKind.LINEAR
    precision = m.get("precision") or {}
    limits = m.get("limits") or {}

    def size(key: str) -> Decimal:
        raw = precision.get(key)
        if raw is None:
            raise MalformedResponse(f"market {symbol}: precision.{key} missing")
        value = dec(raw, f"market {symbol} precision.{key}")
        # DECIMAL_PLACES mode gives a digit count; Binance uses TICK_SIZE, but stay correct either way.
        return value if tick_size_mode else Decimal(1).scaleb(-int(value))

    tick, step = size("price"), size("amount")
    min_qty = dec_or((limits.get("amount") or {}).get("min"), f"market {symbol} limits.amount.min", step)
    min_notional = dec_or((limits.get("cost") or {}).get("min"), f"market {symbol} limits.cost.min", ZERO)
    return Market(
        symbol=symbol,
        venue_symbol=str(m["id"]),
        kind=kind,
        base=str(m["base"]),
        quote=str(m["quote"]),
        tick_size=tick,
        step_size=step,
        min_qty=min_qty,
        min_notional=min_notional,
        maker_fee=dec_or(m.get("maker"), f"market {symbol} maker", ZERO),
        taker_fee=dec_or(m.get("taker"), f"market {symbol} taker", ZERO),
    )


def book_from_ccxt(symbol: str, book: Mapping[str, Any], depth: int) -> BookSnapshot:
    def side(name: str) -> tuple[tuple[Decimal, Decimal], ...]:
        levels = book.get(name)
        if not isinstance(levels, list | tuple):
            raise MalformedResponse(f"book {symbol}: {name} is not a list")
        out = []
        for level in levels[:depth]:
            out.append((dec(level[0], f"book {symbol} {name} price"), dec(level[1], f"book {symbol} {name} amount")))
        return tuple(out)

    nonce = book.get("nonce")
    return BookSnapshot(
        symbol=symbol,
        bids=side("bids"),
        asks=side("asks"),
        timestamp=trio.current_time(),
        sequence=int(nonce) if isinstance(nonce, int | float) and math.isfinite(nonce) else 0,
    )


# --- orders -------------------------------------------------------------------------------------------

STATUS: Mapping[str, OrderStatus] = {
    "open": OrderStatus.OPEN,
    "canceling": OrderStatus.OPEN,  # Binance PENDING_CANCEL: not finished yet
    "closed": OrderStatus.CLOSED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}

LIQUIDATION_PREFIX = "autoclose-"
ADL_PREFIX = "adl_autoclose"


def origin_of(client_order_id: str) -> OrderOrigin:
    """Binance names the venue's own USDⓈ-M orders by client id: `autoclose-…` liquidation, `adl_autoclose…`
    auto-deleverage."""
    if client_order_id.startswith(ADL_PREFIX):
        return OrderOrigin.ADL
    if client_order_id.startswith(LIQUIDATION_PREFIX):
        return OrderOrigin.LIQUIDATION
    return OrderOrigin.OURS


@dataclass(frozen=True, slots=True)
class TradeFee:
    quantity: Decimal
    fee: Decimal
    currency: str | None


class FeeLedger:
    """Per order, every trade seen so far (by trade id) with its quantity and fee, merged from REST fills,
    trade lists and stream events. Binance reports a fee per trade, never cumulatively; this turns them into
    the cumulative `fee_base` / `fee_quote` an `OrderUpdate` carries, whichever source told us first and
    however often a trade is reported."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._orders: OrderedDict[tuple[str, str], dict[str, TradeFee]] = OrderedDict()

    def add(self, key: tuple[str, str], trade_id: str, trade: TradeFee) -> None:
        trades = self._orders.get(key)
        if trades is None:
            trades = self._orders[key] = {}
            while len(self._orders) > self.capacity:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(key)
        trades[trade_id] = trade

    def totals(self, key: tuple[str, str], base: str, quote: str) -> tuple[Decimal, Decimal, Decimal]:
        """(traded quantity, fee in base, fee in quote) over the trades known for the order. Fees in a third
        asset (BNB) change neither leg's holdings and are left out."""
        qty = fee_base = fee_quote = ZERO
        for t in self._orders.get(key, {}).values():
            qty += t.quantity
            if t.currency == base:
                fee_base += t.fee
            elif t.currency == quote:
                fee_quote += t.fee
        return qty, fee_base, fee_quote

    def record_order(self, key: tuple[str, str], order: Mapping[str, Any]) -> None:
        """Trades inside a ccxt order: REST `fills` (parsed into `trades`) or one stream execution."""
        for trade in order.get("trades") or []:
            self.record_trade(key, trade)
        info = order.get("info")
        if isinstance(info, Mapping) and info.get("x") in ("TRADE", "CALCULATED"):
            trade_id = info.get("t")
            if trade_id is not None and str(trade_id) not in ("", "-1", "0"):
                self.add(
                    key,
                    str(trade_id),
                    TradeFee(
                        dec_or(info.get("l"), "execution l (last quantity)", ZERO),
                        dec_or(info.get("n"), "execution n (commission)", ZERO),
                        _currency_of(order.get("fee")),
                    ),
                )

    def record_trade(self, key: tuple[str, str], trade: Mapping[str, Any]) -> None:
        trade_id = trade.get("id")
        if trade_id is None:
            return
        fee = trade.get("fee") or {}
        self.add(
            key,
            str(trade_id),
            TradeFee(
                dec_or(trade.get("amount"), "trade amount", ZERO),
                dec_or(fee.get("cost"), "trade fee", ZERO),
                fee.get("currency"),
            ),
        )


def _first(info: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = info.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _currency_of(fee: object) -> str | None:
    if isinstance(fee, Mapping):
        currency = fee.get("currency")
        return str(currency) if currency is not None else None
    return None


def order_update(
    order: Mapping[str, Any],
    markets: Mapping[str, Market],
    fees: FeeLedger,
    *,
    symbol: str | None = None,
    client_order_id: str | None = None,
    side: Side | None = None,
) -> OrderUpdate:
    """An `OrderUpdate` from a ccxt order structure; `symbol`/`client_order_id`/`side` fill in what a
    terse answer leaves out. Raises MalformedResponse naming what is missing."""
    sym = order.get("symbol") or symbol
    if not isinstance(sym, str) or sym not in markets:
        raise MalformedResponse(f"order update for unknown symbol {sym!r}")
    market = markets[sym]
    cid = order.get("clientOrderId") or client_order_id
    if not isinstance(cid, str) or not cid:
        raise MalformedResponse(f"order update on {sym} without a client order id")
    raw_status = order.get("status")
    status = STATUS.get(str(raw_status)) if raw_status is not None else None
    if status is None:
        raise MalformedResponse(f"order {cid}: unknown status {raw_status!r}")
    raw_side = order.get("side")
    if raw_side in ("buy", "sell"):
        order_side = Side(raw_side)
    elif side is not None:
        order_side = side
    else:
        raise MalformedResponse(f"order {cid}: unknown side {raw_side!r}")
    # Binance's own strings where ccxt kept them (REST origQty/executedQty, stream q/z): exact, unlike the
    # floats of ccxt's unified fields.
    raw_info = order.get("info")
    info: Mapping[str, Any] = raw_info if isinstance(raw_info, Mapping) else {}
    raw_amount = _first(info, "origQty", "q")
    raw_filled = _first(info, "executedQty", "z")
    amount = dec(raw_amount if raw_amount is not None else order.get("amount"), f"order {cid} amount")
    filled = dec_or(raw_filled if raw_filled is not None else order.get("filled"), f"order {cid} filled", ZERO)
    average = None
    if filled > 0 and order.get("average") is not None:
        average = dec(order.get("average"), f"order {cid} average")
    key = (sym, cid)
    fees.record_order(key, order)
    _, fee_base, fee_quote = fees.totals(key, market.base, market.quote)
    venue_id = order.get("id")
    return OrderUpdate(
        client_order_id=cid,
        symbol=sym,
        side=order_side,
        status=status,
        amount=amount,
        filled=filled,
        average=average,
        fee_base=fee_base,
        fee_quote=fee_quote,
        origin=origin_of(cid),
        venue_order_id=None if venue_id is None else str(venue_id),
        timestamp=trio.current_time(),
    )


# --- the request-weight budget ------------------------------------------------------------------------


class WeightBudget:
    """The venue's request budget, spent before each request and refused (RateLimited) rather than waited
    for: the engine, not ccxt's throttler, decides what to do when it runs out.

    Units are ccxt's own rate-limit costs (one unit per `rateLimit` ms at the advertised limit), so the
    budget follows ccxt's per-endpoint weights. Two shares are kept back: the bottom `deadman` units only for
    the dead-man's switch (`countdownCancelAll`), and the `reserve` units above them for requests that reduce
    risk (cancels, unwinds, queries); new entries can spend neither. A `priority` request (the dead-man's
    switch) is never refused: if even its share is gone (the venue said 429), it runs the budget into debt,
    which everything else waits out.

    Invariant: tokens <= burst after every refill; tokens only go below `deadman + reserve` through
    risk-reducing requests, below `deadman` only through priority requests, below 0 only through priority
    requests or `exhaust`.
    """

    def __init__(self, rate_per_second: float, burst: float, reserve: float, deadman: float = 0.0) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be > 0, got {rate_per_second}")
        if not 0 <= reserve < burst:
            raise ValueError(f"reserve must be >= 0 and < burst ({burst}), got {reserve}")
        if not 0 <= deadman < burst - reserve:
            raise ValueError(f"deadman must be >= 0 and < burst - reserve ({burst - reserve}), got {deadman}")
        self.rate = rate_per_second
        self.burst = burst
        self.reserve = reserve
        self.deadman = deadman
        self.tokens = burst
        self._last: float | None = None

    def _refill(self) -> None:
        now = trio.current_time()
        if self._last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, cost: float, *, reducing: bool, what: str, priority: bool = False) -> None:
        self._refill()
        if priority:
            self.tokens -= cost  # never refused (see the class docstring)
            return
        floor = self.deadman + (0.0 if reducing else self.reserve)
        if self.tokens - cost < floor:
            retry_after = max((cost + floor - self.tokens) / self.rate, 0.001)
            raise RateLimited(f"{what}: local request budget exhausted", retry_after=retry_after)
        self.tokens -= cost

    def available(self) -> float:
        """Units left now (for status and metrics)."""
        self._refill()
        return self.tokens

    def exhaust(self) -> None:
        """The venue said we are over its limit: spend everything, so we back off until refilled."""
        self._refill()
        self.tokens = min(self.tokens, 0.0)


def report_trade_fee(ex: Any, report: Mapping[str, Any]) -> tuple[str, TradeFee] | None:
    """(trade id, its quantity and fee) of one raw spot executionReport of a trade, exactly as `FeeLedger`
    records it once ccxt.pro's `parse_ws_order` has read the same report (`record_order`: `l`, `n`, and the
    fee's currency only when the fee is above zero, through ccxt's `safe_currency_code`); None when the report
    is not a trade or is malformed (then ccxt's own handling of it decides)."""
    if report.get("x") not in ("TRADE", "CALCULATED"):
        return None
    trade_id = report.get("t")
    if trade_id is None or str(trade_id) in ("", "-1", "0"):
        return None
    fee = report.get("n")
    try:
        charged = isinstance(fee, str) and Precise.string_gt(fee, "0")
        currency = ex.safe_currency_code(report.get("N")) if charged else None
        trade = TradeFee(dec_or(report.get("l"), "execution l (last quantity)", ZERO),
                         dec_or(fee, "execution n (commission)", ZERO), currency)  # fmt: skip
    except (MalformedResponse, TypeError, ValueError, ArithmeticError):
        return None
    return str(trade_id), trade


# --- the lean decode of an order answer (the kill switch's path) ---------------------------------------

# The raw Binance fields the lean decode reads from an order answer (spot `/api/v3/order` new and cancel,
# USDⓈ-M `/fapi/v1/order`), each a non-empty string in every answer it accepts.
_LEAN_STRINGS = ("symbol", "status", "side", "origQty", "executedQty")


def lean_order_update(
    ex: Any,
    raw: object,
    market: Mapping[str, Any],
    markets: Mapping[str, Market],
    fees: FeeLedger,
    *,
    client_order_id: str | None,
    side: Side | None,
) -> OrderUpdate | None:
    """The `OrderUpdate` that `order_update(ex.parse_order(raw, market), ...)` makes of a Binance order answer,
    read straight from the fields it needs: ccxt's `parse_order` builds a whole unified order (timestamps,
    ISO dates, trades, remaining, cost) and costs ~150-200 µs, on the path between the venue's answer and the
    kill switch's next request. ccxt stays the authority for everything the result holds: its status table
    (`parse_order_status`), its average (`safe_order`'s `Precise` arithmetic, through its `parse_number`), its
    currency codes; and the same `FeeLedger` records the placement's `fills` as ccxt's trades would be.
    `client_order_id`: the id asked about (a spot cancel answers with the cancel's own id; it wins, as in
    `CcxtVenue._update`), or None to take the answer's. None when the answer is not the plain shape this
    reads (an error body, a missing or non-string field, an unknown status, a market other than `market`, an
    inverse contract): the caller then takes ccxt's own path, which knows every shape. Tests hold the two
    paths equal on the emulator's answers and Binance's recorded ones."""
    if not isinstance(raw, dict) or "code" in raw or market.get("inverse"):
        return None
    values = [raw.get(k) for k in _LEAN_STRINGS]
    if not all(isinstance(v, str) and v for v in values):
        return None
    market_id, raw_status, raw_side, raw_amount, raw_filled = (str(v) for v in values)
    symbol = market.get("symbol")
    if market_id != market.get("id") or symbol not in markets:
        return None
    status = STATUS.get(str(ex.parse_order_status(raw_status)))
    cid = client_order_id or raw.get("clientOrderId")
    order_id = raw.get("orderId")
    if status is None or not isinstance(cid, str) or not cid or order_id is None:
        return None
    cost = raw.get("cummulativeQuoteQty", raw.get("cumQuote"))
    fills = raw.get("fills", [])
    if not isinstance(cost, str) or not isinstance(fills, list):
        return None
    trades: list[tuple[str, TradeFee]] = []
    for fill in fills:
        if not isinstance(fill, dict):
            return None
        trade_id, qty, commission = fill.get("tradeId"), fill.get("qty"), fill.get("commission")
        if trade_id is None or not isinstance(qty, str) or not isinstance(commission, str):
            return None
        currency = ex.safe_currency_code(fill.get("commissionAsset"))
        trades.append((str(trade_id), TradeFee(dec_or(ex.parse_number(qty), "trade amount", ZERO),
                                                dec_or(ex.parse_number(commission), "trade fee", ZERO),
                                                currency)))  # fmt: skip
    lower = raw_side.lower()
    order_side = Side(lower) if lower in ("buy", "sell") else side
    if order_side is None:
        return None
    filled = dec(raw_filled, f"order {cid} filled")
    average = None
    if filled > 0:
        # ccxt's `safe_order`: the venue's average if it gave a non-zero one, else cost / (filled x contract).
        text = ex.omit_zero(raw.get("avgPrice", raw.get("avgFilledPrice")))
        if text is None:  # (filled > 0 is ccxt's `Precise.string_gt(filled, "0")`, on the same exact value)
            contract = ex.number_to_string(ex.safe_value(market, "contractSize", 1))
            # x 1 leaves the value as it is, and `string_div` depends on the values only.
            base = raw_filled if contract == "1" else Precise.string_mul(raw_filled, contract)
            text = Precise.string_div(cost, base)
        number = ex.parse_number(text)
        average = None if number is None else dec(number, f"order {cid} average")
    key = (str(symbol), cid)
    for trade_id, trade in trades:
        fees.add(key, trade_id, trade)
    m = markets[str(symbol)]
    _, fee_base, fee_quote = fees.totals(key, m.base, m.quote)
    return OrderUpdate(
        client_order_id=cid,
        symbol=str(symbol),
        side=order_side,
        status=status,
        amount=dec(raw_amount, f"order {cid} amount"),
        filled=filled,
        average=average,
        fee_base=fee_base,
        fee_quote=fee_quote,
        origin=origin_of(cid),
        venue_order_id=str(order_id),
        timestamp=trio.current_time(),
    )
