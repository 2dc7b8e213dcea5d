"""`CcxtVenue`: Binance spot (`binance`) and USDⓈ-M (`binanceusdm`) through unmodified ccxt / ccxt.pro, run
inside the engine's trio loop over one trio-asyncio loop (`open_ccxt_venue`); every ccxt call crosses with
`trio_asyncio.aio_as_trio`, so trio cancellation reaches the request in flight and surfaces as `trio.Cancelled`.

Order path. `arm()` (synchronous) does all the work ccxt's `create_order` would: market lookup, ccxt's own
`create_order_request` (amount/price to precision, post-only as ccxt sends it: spot `LIMIT_MAKER`, futures
`timeInForce=GTX`; `reduceOnly`; our `newClientOrderId`), a check that precision changed nothing, ccxt's own
`sign()` of the request, and its serialisation to HTTP/1.1 bytes with ccxt's default headers. `release()`
(synchronous) charges the local request budget, re-signs if the signature has aged past `resign_after`, takes
a warm keep-alive connection per order and then writes all of them back to back (`_http.py`): the two legs
of a package leave from one place, microseconds apart. `fire()` awaits the answer on trio and hands it to ccxt
exactly as ccxt's `fetch` would (`handle_errors`, `handle_http_status_code`, `parse_json`), then
`parse_order`. Cancels take the same path (the kill switch's first move); a cancel the engine armed for an
answer (`cancel_on_answer`) is written as soon as that answer's bytes are read, before ccxt sees them (one
`json.loads` of the status: resting, or an HTTP refusal of the other leg). Only the transport is ours; every
other call (queries, books, balances) goes through ccxt's own `fetch`. ccxt's throttler is off on both
instances: the engine owns the budget (`WeightBudget`), and spot and futures legs go out on different
connections, so neither waits for the other.

Streams. One ccxt.pro `watch_orders` stays pending per instance (spot: Binance's WS-API user-data
subscription; futures: the listenKey stream) to hold the subscription and report its loss; the order
events themselves are tapped from ccxt.pro's handler, one `OrderUpdate` per execution, into one merged
channel (`watch_orders()`). Books come from ccxt.pro's `watch_order_book`, from REST while its websocket
is unavailable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import math
import re
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import ccxt
import ccxt.pro as ccxtpro
import trio
import trio_asyncio
from ccxt.base.types import Entry

from legguard.adapters._redact import SECRETS
from legguard.adapters._venue import ArmedOrder, FundingPayment, FundingRate, implied_funding_rate
from legguard.domain import (
    Balance,
    BookSnapshot,
    MalformedResponse,
    MarginAccount,
    Market,
    MarketKind,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RateLimited,
    RejectReason,
    Side,
    StreamDisconnected,
    VenueError,
)

from ._convert import (
    EXCEPTION_OVERRIDES,
    PARSE_ERRORS,
    FeeLedger,
    Redactor,
    WeightBudget,
    book_from_ccxt,
    dec,
    exceptions_by_url,
    lean_order_update,
    market_from_ccxt,
    order_update,
    report_trade_fee,
    scrub,
    translate_error,
)
from ._http import Connection, HttpError, Origin, Pool, Response, WireTap, encode_request, split_url

log = logging.getLogger("legguard.adapters.ccxt")

# ccxt logs request headers (with the API key) at DEBUG: it gets this logger, which masks credentials.
_WIRE_LOG = logging.getLogger("legguard.adapters.ccxt.wire")
_REDACTOR = Redactor()
_WIRE_LOG.addFilter(_REDACTOR)

SPOT_ID, PERP_ID = "binance", "binanceusdm"
EXCHANGE_IDS = (SPOT_ID, PERP_ID)
# Binance's rule for newClientOrderId on both markets.
CLIENT_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,36}$")
PERP_BALANCE_PREFIX = "perp:"
_REFUSALS_KEPT = 64  # distinct refusal answers whose ccxt classification is kept per instance
# Hosts of Binance's testnets (spot: binance.vision's testnet; USDⓈ-M: binancefuture.com). A testnet venue
# refuses to exist if any URL of its ccxt instances points elsewhere: a run can never reach mainnet by accident.
TESTNET_HOST_RE = re.compile(r"^([a-z0-9-]+\.)*(testnet\.binance\.vision|binancefuture\.com)$")


def _handle_order_update(self: Any, client: Any, message: Any) -> None:
    """ccxt.pro's own handler, then a copy of every order event to the venue. ccxt's `watch_orders` hands
    out a cache in which several events of one order collapse into its latest state, and resolves a watch
    only on the next message after it is re-armed; the engine needs every execution (each carries its own
    trade and fee), at once."""
    ccxtpro.binance.handle_order_update(self, client, message)
    sink = getattr(self, "legguard_sink", None)
    if sink is not None:
        sink(message)


def _on_close(self: Any, client: Any, error: Any) -> None:
    """ccxt.pro's own bookkeeping, then word to the venue that a websocket closed. ccxt.pro reconnects by
    itself on the next watch; if no watch was pending at the close (one had just resolved), nothing else
    would ever say that the updates sent meanwhile were lost."""
    if (self.clients or {}).get(client.url) is client:
        # ccxt.pro forgets the client by URL, and reports one close twice (the close frame, then the end of
        # the connection): the late second report must not forget the client that has replaced this one.
        ccxtpro.binance.on_close(self, client, error)
    closed = getattr(self, "legguard_closed", None)
    if closed is not None:
        closed(client, error)


# Unmodified ccxt classes, with three additions: the error-table choice by configured URL
# (`exceptions_by_url`), the order-event tap and the close hook above.
_OVERRIDES = {
    "get_exceptions_by_url": exceptions_by_url,
    "handle_order_update": _handle_order_update,
    "on_close": _on_close,
}
_SpotExchange: Any = type("binance", (ccxtpro.binance,), dict(_OVERRIDES))
_PerpExchange: Any = type("binanceusdm", (ccxtpro.binanceusdm,), dict(_OVERRIDES))

# The ccxt implicit endpoints behind each operation, for their rate-limit cost.
_ENDPOINTS: Mapping[MarketKind, Mapping[str, str]] = {
    MarketKind.SPOT: {
        "order": "privatePostOrder",
        "fetch": "privateGetOrder",
        "cancel": "privateDeleteOrder",
        "open": "privateGetOpenOrders",
        "all": "privateGetAllOrders",
        "trades": "privateGetMyTrades",
        "depth": "publicGetDepth",
        "balance": "privateGetAccount",
        "markets": "publicGetExchangeInfo",
        "transfer": "sapiPostAssetTransfer",
    },
    MarketKind.LINEAR: {
        "order": "fapiPrivatePostOrder",
        "fetch": "fapiPrivateGetOrder",
        "cancel": "fapiPrivateDeleteOrder",
        "open": "fapiPrivateGetOpenOrders",
        "all": "fapiPrivateGetAllOrders",
        "trades": "fapiPrivateGetUserTrades",
        "depth": "fapiPublicGetDepth",
        "balance": "fapiPrivateV3GetAccount",
        "positions": "fapiPrivateV3GetPositionRisk",
        "funding": "fapiPublicGetPremiumIndex",
        "funding_history": "fapiPublicGetFundingRate",
        "income": "fapiPrivateGetIncome",
        "markets": "fapiPublicGetExchangeInfo",
        "countdown": "fapiPrivatePostCountdownCancelAll",
    },
}


# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CcxtVenueConfig:
    """How to reach Binance (or the emulator) through ccxt. Credentials are never shown by `repr`.

    `urls`: per exchange id (`binance`, `binanceusdm`), a replacement for ccxt's whole `urls['api']` (the
    emulator's `GET /_emulator/ccxt-urls`); None talks to Binance itself. `testnet`: Binance's testnets
    (ccxt's sandbox URLs, both markets) instead of mainnet. `ccxt_config`: extra constructor settings per
    exchange id (e.g. `hostname`, `cafile`), merged last.
    """

    api_key: str
    secret: str
    urls: Mapping[str, Mapping[str, Any]] | None = None
    ccxt_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    testnet: bool = False
    name: str = "binance"
    timeout: float = 10.0  # seconds, per REST request (past it: OutcomeUnknown)
    book_depth: int = 20
    budget_burst: float = 100.0  # ccxt rate-limit cost units (spot order 0.2, futures order 4; 20 refill/s)
    budget_reserve: float = 20.0  # kept for cancels, unwinds and queries
    budget_deadman: float = 20.0  # kept under that for the dead-man's switch (countdownCancelAll costs 10)
    stream_ready_timeout: float = 5.0  # wait at open for both user-data streams; 0: do not open them at open
    book_poll_interval: float = 0.5  # REST polling while a book's websocket is unavailable
    ws_retry_interval: float = 5.0  # how long a book stays on REST before the websocket is tried again
    resign_after: float = 1.0  # an armed order older than this is signed again at fire (recvWindow is 5 s)
    # An answer reporting fills whose fees no answer carried yet (Binance's cancel and query answers carry
    # none) waits this long for the user stream's execution reports, already sent, before REST is asked too
    # (whichever tells first).
    fee_wait: float = 0.002
    # Order answers on the order path are read by `lean_order_update` (the fields the core needs, equal to
    # ccxt's parse), falling back to ccxt's `parse_order` for any other shape; False: always ccxt's.
    lean_decode: bool = True
    close_grace: float = 0.25  # ccxt's pause at close that lets TLS transports finish

    def __post_init__(self) -> None:
        for name in ("api_key", "secret"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                # Never echo the value: it is a credential.
                raise ValueError(f"{name}: must be a non-empty string")
        if self.testnet and self.urls is not None:
            raise ValueError("testnet: Binance's testnet URLs and explicit urls exclude each other")
        for ident in (*(self.urls or {}), *self.ccxt_config):
            if ident not in EXCHANGE_IDS:
                raise ValueError(f"urls/ccxt_config: exchange id {ident!r} is not one of {list(EXCHANGE_IDS)}")
        positive = ("timeout", "budget_burst", "book_poll_interval", "ws_retry_interval", "resign_after")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        for name in ("budget_reserve", "budget_deadman", "stream_ready_timeout", "close_grace", "fee_wait"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if self.budget_reserve >= self.budget_burst:
            raise ValueError(f"budget_reserve: {self.budget_reserve!r} must be < budget_burst ({self.budget_burst!r})")
        if self.budget_reserve + self.budget_deadman >= self.budget_burst:
            raise ValueError(f"budget_deadman: {self.budget_deadman!r} plus budget_reserve ({self.budget_reserve!r}) "
                             f"must be < budget_burst ({self.budget_burst!r})")  # fmt: skip
        if not isinstance(self.lean_decode, bool):
            raise ValueError(f"lean_decode: must be true or false, got {self.lean_decode!r}")
        if isinstance(self.book_depth, bool) or not isinstance(self.book_depth, int) or self.book_depth < 1:
            raise ValueError(f"book_depth: must be an integer >= 1, got {self.book_depth!r}")

    def __repr__(self) -> str:
        if self.urls is None:
            where = "binance testnet" if self.testnet else "binance.com"
        else:
            where = ", ".join(f"{k}={v.get('public') or v.get('fapiPublic')}" for k, v in self.urls.items())
        return f"CcxtVenueConfig(name={self.name!r}, api_key=***, secret=***, urls=[{where}], timeout={self.timeout})"

    __str__ = __repr__


_NO_SCOPE = contextlib.nullcontext()


# --- per-instance state -------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Side:
    """One ccxt instance (spot or futures) with its own budget, user-stream pump and book fallbacks."""

    kind: MarketKind
    exchange_id: str
    ex: Any = field(repr=False)
    budget: WeightBudget = field(repr=False)
    pump_running: bool = False
    loss_reported: bool = False  # the close hook reported the user stream lost since the pump last armed
    ws_down_until: dict[str, float] = field(default_factory=dict)
    pools: dict[Origin, Pool] = field(default_factory=dict, repr=False)  # the order path's connections
    entries: dict[str, Any] = field(default_factory=dict, repr=False)  # operation -> ccxt endpoint declaration
    costs: dict[str, float] = field(default_factory=dict, repr=False)  # operation -> cost without params
    # Order-path refusals already classified by ccxt's `handle_errors`: (status, method, URL without its query,
    # body) -> (ccxt exception class, message). See `CcxtVenue._answer`.
    refusals: dict[tuple[int, str, str, str], tuple[type[Exception], str]] = field(default_factory=dict, repr=False)

    def entry(self, operation: str) -> Any:
        """ccxt's declaration of the implicit endpoint (path, api, method, cost). ccxt rebinds the camelCase
        names on the class at construction, so look for the declaration itself along the MRO (once: the
        order path asks for it on every order and cancel)."""
        if operation in self.entries:
            return self.entries[operation]
        name = _ENDPOINTS[self.kind][operation]
        found: Any = None
        for cls in type(self.ex).__mro__:
            candidate = cls.__dict__.get(name)
            if isinstance(candidate, Entry):
                found = candidate
                break
        self.entries[operation] = found
        return found

    def cost(self, operation: str, params: Mapping[str, Any] | None = None) -> float:
        if not params and operation in self.costs:
            return self.costs[operation]
        entry = self.entry(operation)
        if entry is None:
            return 1.0
        cost = float(self.ex.calculate_rate_limiter_cost(entry.api, entry.method, entry.path, dict(params or {}),
                                                         entry.config))  # fmt: skip
        if not params:
            self.costs[operation] = cost
        return cost


@dataclass(slots=True, eq=False)
class _Request:
    """A request ccxt built and signed, serialised for the wire: what `fire` and `cancel_order` send."""

    side: _Side
    entry: Any
    params: dict[str, Any]
    signed: dict[str, Any] = field(default_factory=dict)
    signed_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    wire: bytes = b""
    pool: Pool | None = None

    def __repr__(self) -> str:  # the signed request's headers carry the API key
        return f"<request {self.side.exchange_id} {self.entry.method} {self.entry.path}>"

    def sign(self, venue: CcxtVenue) -> None:
        """ccxt's own `sign()` (timestamp, HMAC, headers), with ccxt's default request headers, serialised."""
        ex = self.side.ex
        signed = ex.sign(self.entry.path, self.entry.api, self.entry.method, dict(self.params))
        self.signed, self.signed_ms = signed, ex.milliseconds()
        origin, target = split_url(signed["url"])
        self.headers = ex.prepare_request_headers(dict(signed["headers"] or {}))
        body = signed["body"]
        self.wire = encode_request(signed["method"], target, origin, self.headers,
                                   body.encode() if body is not None else None)  # fmt: skip
        self.pool = venue._pool(self.side, origin)


@dataclass(slots=True, eq=False)
class _Prepared:
    """An armed order: the request ccxt built and signed, waiting to be released, then its connection."""

    venue: CcxtVenue
    side: _Side
    market: dict[str, Any]
    request: _Request
    cost: float
    released: bool = False
    conn: Connection | None = None  # set once the bytes are written
    error: VenueError | None = None  # a refusal found at release, raised by fire

    @property
    def entry(self) -> Any:
        return self.request.entry

    @property
    def params(self) -> dict[str, Any]:
        return self.request.params

    @property
    def signed(self) -> dict[str, Any]:
        return self.request.signed

    def __repr__(self) -> str:  # the signed request's headers carry the API key
        cid = self.params.get("newClientOrderId")
        return f"<prepared {self.side.exchange_id} {self.entry.method} {self.entry.path} {cid}>"


# An order answer's `status` for an order that rests at the venue (spot and USDⓈ-M alike).
_RESTING = frozenset({"NEW", "PARTIALLY_FILLED"})


def _duplicate(body: bytes) -> bool:
    """A placement's error answer saying its client order id already exists (spot -2010 "Duplicate order
    sent.", USDⓈ-M -4116): the order is there, so it was not refused. The engine fetches it (`DuplicateOrder`)
    and its core arms nothing on such an answer: no cancel armed for a refusal may leave on it. Read as bytes,
    not decoded: this runs between a refusal's last byte and the cancel it releases (~0.2 µs against ~2 for a
    `json.loads`), and a false match only leaves the cancel to the refusal's own step."""
    return b"-4116" in body or b"Duplicate order sent." in body


@dataclass(slots=True, eq=False)
class _CancelOut:
    """A cancel written by `release_cancel`, waiting for `cancel_order` to read its answer."""

    side: _Side
    market: dict[str, Any]
    request: _Request
    conn: Connection | None


@dataclass(frozen=True, slots=True)
class _Dropped:
    kind: MarketKind
    detail: str


# --- the venue ----------------------------------------------------------------------------------------


class CcxtVenue:
    """Binance spot + USDⓈ-M behind the `Venue` protocol. Create it with `open_ccxt_venue`, which owns the
    trio-asyncio loop, the user-data stream pumps and the closing of both ccxt instances."""

    def __init__(self, config: CcxtVenueConfig) -> None:
        self.config = config
        self.name = config.name
        self._secrets = (config.api_key, config.secret)
        self._spot = self._side(MarketKind.SPOT, SPOT_ID, _SpotExchange, ["spot"])
        self._perp = self._side(MarketKind.LINEAR, PERP_ID, _PerpExchange, ["linear"])
        self._markets: dict[str, Market] = {}
        self._funding_intervals: dict[str, float | None] = {}  # perp symbol -> seconds between funding times
        self._by_symbol: dict[str, _Side] = {}
        self.fees = FeeLedger()
        self._updates_send, self._updates_recv = trio.open_memory_channel[list[OrderUpdate] | _Dropped](math.inf)
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._resign_ms = int(config.resign_after * 1000)
        self._ssl: dict[str, ssl.SSLContext | None] = {}
        self.tap: WireTap | None = None  # sees every order-path send and answer (`legguard bench`)
        # The kill switch's first move, prepared while the order is in flight: client id -> signed cancel.
        self._cancels: collections.OrderedDict[str, _Request] = collections.OrderedDict()
        self._cancels_out: dict[str, _CancelOut | VenueError] = {}  # written by release_cancel, not yet awaited
        # Cancels that leave the moment an order's answer is read (`cancel_on_answer`): the client id answered ->
        # [(on a refusal, else when it rests; symbol; client id cancelled)], until that answer (or the send fails).
        self._on_answer: dict[str, list[tuple[bool, str, str]]] = {}
        self.cancels_on_answer = 0  # cancels written on the answer they waited for, ahead of its step
        self._fees_seen = trio.Event()  # set (and replaced) whenever the user stream reports an order event
        self.fee_queries = 0  # REST trade queries made because no answer carried an order's fees
        # symbol -> (ccxt's markets dict it was read from, ccxt's market): `ex.market()` resolves the symbol
        # through ccxt's options on every call (~5 µs in the run, on the kill switch's cancel path).
        self._ccxt_market: dict[str, tuple[Any, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"CcxtVenue({self.config!r})"

    def _side(self, kind: MarketKind, exchange_id: str, cls: Any, types: list[str]) -> _Side:
        c = self.config
        settings: dict[str, Any] = {
            "apiKey": c.api_key,
            "secret": c.secret,
            "enableRateLimit": False,  # the engine owns the budget; see WeightBudget
            "timeout": int(c.timeout * 1000),
            "verbose": False,
            "options": {
                # No surprise calls: one exchangeInfo per instance, for the market type it trades.
                "fetchCurrencies": False,
                "fetchMargins": False,
                "fetchMarkets": {"types": types},
                "warnOnFetchOpenOrdersWithoutSymbol": False,
                "watchPositions": {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False},
                "watchBalance": {"fetchBalanceSnapshot": False, "awaitBalanceSnapshot": False},
            },
            "exceptions": EXCEPTION_OVERRIDES,
        }
        settings = ccxt.Exchange.deep_extend(settings, dict(c.ccxt_config.get(exchange_id, {})))
        ex = cls(settings)
        if c.testnet:
            ex.set_sandbox_mode(True)
            mainnet = [url for url in _all_urls(ex.urls["api"]) if not _is_testnet_url(url)]
            if mainnet:  # ccxt changed its sandbox URLs: refuse rather than trade real money
                raise VenueError(f"{exchange_id}: testnet requested but ccxt's sandbox URLs include {mainnet[0]}")
        if c.urls is not None and exchange_id in c.urls:
            # Replace, never merge: a group left pointing at binance.com would send these credentials there.
            ex.urls["api"] = json.loads(json.dumps(c.urls[exchange_id]))
        ex.logger = _WIRE_LOG
        ex.timeout_on_exit = int(c.close_grace * 1000)
        rate = 1000.0 / float(ex.rateLimit)
        side = _Side(kind, exchange_id, ex, WeightBudget(rate, c.budget_burst, c.budget_reserve, c.budget_deadman))
        ex.legguard_sink = functools.partial(self._on_order_event, side)
        ex.legguard_closed = functools.partial(self._on_ws_closed, side)
        return side

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _call(
        self,
        side: _Side,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        cost: float,
        reducing: bool = True,
        cid: str | None = None,
        placing: bool = False,
        post_only: bool = False,
        priority: bool = False,
    ) -> Any:
        """Run one ccxt coroutine on the asyncio side. Errors come back as `_types` errors, never chained to
        the ccxt exception (whose text may carry request details); trio cancellation passes through."""
        if self._closed:
            raise VenueError(f"{what}: the venue is closed")
        side.budget.take(cost, reducing=reducing, what=what, priority=priority)
        try:
            return await trio_asyncio.aio_as_trio(fn)(*args)
        except (ccxt.BaseError, asyncio.CancelledError, *PARSE_ERRORS) as exc:
            error = translate_error(exc, what=what, secrets=self._secrets, client_order_id=cid, placing=placing,
                                    post_only=post_only)  # fmt: skip
        if isinstance(error, RateLimited):
            side.budget.exhaust()
        raise error

    def _market_of(self, side: _Side, symbol: str) -> dict[str, Any]:
        """ccxt's market of `symbol` (`ex.market`), read again only when ccxt's markets were reloaded."""
        markets = side.ex.markets
        held = self._ccxt_market.get(symbol)
        if held is not None and held[0] is markets:
            return held[1]
        market: dict[str, Any] = side.ex.market(symbol)
        self._ccxt_market[symbol] = (markets, market)
        return market

    def _side_for(self, symbol: str) -> _Side:
        side = self._by_symbol.get(symbol)
        if side is None:
            raise VenueError(f"symbol {symbol!r} is not a market of this venue ({len(self._markets)} loaded)")
        return side

    def _update(self, order: Any, symbol: str, cid: str | None = None, side: Side | None = None) -> OrderUpdate:
        if not isinstance(order, dict):
            raise MalformedResponse(f"order on {symbol}: expected an order structure, got {type(order).__name__}")
        if cid is not None:
            # We asked by client id; a spot cancel answers with the cancel request's own id in clientOrderId.
            order = {**order, "clientOrderId": cid}
        return order_update(order, self._markets, self.fees, symbol=symbol, client_order_id=cid, side=side)

    # --- markets ----------------------------------------------------------------------------------------

    def request_budget(self) -> dict[str, float]:
        """Request-weight units left per market kind (status and metrics)."""
        return {"spot": self._spot.budget.available(), "perp": self._perp.budget.available()}

    async def load_markets(self) -> Mapping[str, Market]:
        if not self._markets:
            await _concurrently(*(functools.partial(self._load_side, side) for side in (self._spot, self._perp)))
        return self._markets

    async def _load_side(self, side: _Side) -> None:
        loaded = await self._call(side, f"{side.exchange_id} load_markets", side.ex.load_markets,
                                  cost=side.cost("markets"))  # fmt: skip
        tick_mode = side.ex.precisionMode == ccxt.TICK_SIZE
        for symbol, m in loaded.items():
            if m.get("active") is False:
                continue
            if side.kind is MarketKind.SPOT and not m.get("spot"):
                continue
            if side.kind is MarketKind.LINEAR and not (m.get("swap") and m.get("linear")):
                continue
            self._markets[symbol] = market_from_ccxt(m, tick_mode)
            self._by_symbol[symbol] = side

    # --- books ------------------------------------------------------------------------------------------

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> BookSnapshot:
        side = self._side_for(symbol)
        book = await self._call(side, f"book {symbol}", side.ex.fetch_order_book, symbol, limit,
                                cost=side.cost("depth", {"limit": limit}))  # fmt: skip
        return book_from_ccxt(symbol, book, self.config.book_depth)

    async def watch_order_book(self, symbol: str) -> BookSnapshot:
        """The next change of the book from ccxt.pro's diff-stream book. While the websocket is unavailable
        the book comes from REST every `book_poll_interval`; the websocket is tried again after
        `ws_retry_interval`."""
        side = self._side_for(symbol)
        now = trio.current_time()
        if now < side.ws_down_until.get(symbol, -math.inf):
            await trio.sleep(self.config.book_poll_interval)
            return await self.fetch_order_book(symbol, self.config.book_depth)
        try:
            book = await trio_asyncio.aio_as_trio(side.ex.watch_order_book)(symbol)
        except (ccxt.NetworkError, ccxt.NotSupported, ccxt.ExchangeError, asyncio.CancelledError) as exc:
            detail = translate_error(exc, what=f"book stream {symbol}", secrets=self._secrets)
            log.warning("%s; polling REST for %.1fs", detail, self.config.ws_retry_interval)
            side.ws_down_until[symbol] = trio.current_time() + self.config.ws_retry_interval
            return await self.fetch_order_book(symbol, self.config.book_depth)
        return book_from_ccxt(symbol, book, self.config.book_depth)

    # --- orders -----------------------------------------------------------------------------------------

    def arm(self, request: OrderRequest) -> ArmedOrder:
        cid = request.client_order_id

        def refuse(detail: str, reason: RejectReason = RejectReason.INVALID_ORDER) -> OrderRejected:
            return OrderRejected(cid, reason, detail)

        side = self._by_symbol.get(request.symbol)
        if side is None:
            raise refuse(f"symbol {request.symbol!r} is not a market of this venue")
        if not CLIENT_ID_RE.match(cid):
            raise refuse(f"client order id {cid!r} must match {CLIENT_ID_RE.pattern}")
        params: dict[str, Any] = {"newClientOrderId": cid}
        price: str | None = None
        if request.type is OrderType.LIMIT:
            assert request.price is not None  # OrderRequest guarantees it
            price = str(request.price)
            if request.post_only:
                params["postOnly"] = True
            else:
                params["timeInForce"] = "IOC" if request.ioc else "GTC"
        elif request.post_only:
            raise refuse("a market order cannot be post-only")
        if request.reduce_only:
            if side.kind is MarketKind.SPOT:
                raise refuse("spot orders cannot be reduce-only")
            params["reduceOnly"] = True
        ex = side.ex
        try:
            market = self._market_of(side, request.symbol)
            built = ex.create_order_request(request.symbol, request.type.value, request.side.value,
                                            str(request.amount), price, params)  # fmt: skip
        except ccxt.BaseError as exc:
            error = translate_error(exc, what=f"arm {cid}", secrets=self._secrets, client_order_id=cid, placing=True)
            raise error if isinstance(error, OrderRejected) else refuse(str(error), RejectReason.OTHER) from None
        # ccxt truncates amounts and rounds prices to the grid; a changed number would silently change the
        # hedge, so anything off-grid is refused here instead.
        m = self._markets[request.symbol]
        if Decimal(str(built.get("quantity"))) != request.amount:
            raise refuse(f"amount {request.amount} is not a multiple of the step size {m.step_size}")
        if price is not None and Decimal(str(built.get("price"))) != request.price:
            raise refuse(f"price {request.price} is not a multiple of the tick size {m.tick_size}")
        entry = side.entry("order")
        cost = float(ex.calculate_rate_limiter_cost(entry.api, entry.method, entry.path, built, entry.config))
        signed = _Request(side, entry, built)
        signed.sign(self)
        prepared = _Prepared(self, side, market, signed, cost)
        return ArmedOrder(request, payload=prepared, extra={"venue_request": _public_view(built)})

    def release(self, armed: Sequence[ArmedOrder]) -> None:
        """Write every armed order onto a warm connection now, back to back, without yielding: the budget,
        re-signing and connection checks for all of them first, then nothing but one `send` per order.
        `fire` then awaits each answer (an order without a warm connection is sent by `fire` after it
        connects; a refusal found here, e.g. the local budget, is raised by `fire`)."""
        ready: list[_Prepared] = []
        for a in armed:
            p = self._prepared(a)
            if p.released:
                continue
            p.released = True
            request = a.request
            if self._closed:
                p.error = VenueError(f"place {request.client_order_id}: the venue is closed")
                continue
            try:
                p.side.budget.take(p.cost, reducing=not request.post_only, what=f"place {request.client_order_id}")
            except VenueError as exc:
                p.error = exc
                continue
            r = p.request
            if p.side.ex.milliseconds() - r.signed_ms > self._resign_ms:
                try:
                    r.sign(self)
                except (ccxt.BaseError, ValueError) as exc:  # nothing was sent: a definite refusal
                    detail = f"re-sign failed: {scrub(str(exc), self._secrets)}"
                    p.error = OrderRejected(request.client_order_id, RejectReason.OTHER, detail)
                    continue
            assert r.pool is not None
            p.conn = r.pool.take()
            if p.conn is not None:
                ready.append(p)
        for p in ready:
            assert p.conn is not None
            try:
                p.conn.send_now(p.request.wire, p.params["newClientOrderId"])
            except HttpError:
                p.conn.close()
                p.conn = None  # `fire` sends it again on a new connection: nothing left this one

    def _prepared(self, armed: ArmedOrder) -> _Prepared:
        prepared = armed.payload
        if not isinstance(prepared, _Prepared) or prepared.venue is not self:
            raise ValueError(f"order {armed.request.client_order_id}: not armed by this venue")
        return prepared

    async def fire(self, armed: ArmedOrder) -> OrderUpdate:
        prepared, request = self._prepared(armed), armed.request
        if not prepared.released:
            self.release([armed])
        if prepared.error is not None:
            raise prepared.error
        cid, side = request.client_order_id, prepared.side
        conn, prepared.conn = prepared.conn, None
        if conn is not None:
            self._arm_cancel(side, prepared.market, cid)  # while the request is in flight
        try:
            raw = await self._exchange(prepared.request, conn, f"place {cid}", cid=cid, placing=True,
                                       post_only=request.post_only)  # fmt: skip
        except BaseException:
            self._cancels.pop(cid, None)
            self._on_answer.pop(cid, None)
            raise
        if not isinstance(raw, dict):
            raise MalformedResponse(f"place {cid}: expected a JSON object, got {type(raw).__name__}")
        update = self._decode(side, raw, prepared.market, f"place {cid}", cid=None, side_hint=request.side,
                              fallback_cid=cid)  # fmt: skip
        if update.client_order_id != cid or update.symbol != request.symbol:
            raise MalformedResponse(f"place {cid}: the answer is about {update.client_order_id} on {update.symbol}")
        if request.post_only and update.status is OrderStatus.EXPIRED and update.filled == 0:
            # USDⓈ-M may accept a GTX order and expire it at once instead of answering -5022.
            update = dataclasses.replace(update, reason=RejectReason.POST_ONLY_CROSS)
        if update.status.is_terminal:
            self._cancels.pop(cid, None)
        return update

    def _arm_cancel(self, side: _Side, market: dict[str, Any], cid: str) -> None:
        """Sign the cancel of an order just sent, so that a kill switch deciding within `resign_after` finds
        it ready; older ones are dropped (a stale signature would have to be made again anyway)."""
        cancels = self._cancels
        while cancels:
            oldest = next(iter(cancels.values()))
            if oldest.side.ex.milliseconds() - oldest.signed_ms <= self._resign_ms:
                break
            cancels.popitem(last=False)
        r = _Request(side, side.entry("cancel"), {"symbol": market["id"], "origClientOrderId": cid})
        try:
            r.sign(self)
        except (ccxt.BaseError, ValueError):
            return  # cancel_order builds it again and reports the problem where it matters
        cancels[cid] = r

    def cancel_on_answer(self, answer_of: str, refused: bool, symbol: str, client_order_id: str) -> None:
        """Write the cancel of `client_order_id` the moment the answer to the order `answer_of` (in flight) is
        read, if that answer says the order rests (NEW or PARTIALLY_FILLED; `refused` False, and then it is
        the same order) or refuses it (any HTTP error: `refused` True, the other leg): before the answer is
        handed to ccxt, decoded or stepped. The engine asks this of a cancel its journal holds already
        (`cancel_armed`), one its core sends for any such answer; the answer's step then commands it, and
        `release_cancel` finds it written. Any other answer, or none, writes nothing."""
        self._on_answer.setdefault(answer_of, []).append((refused, symbol, client_order_id))

    def disarm_cancel(self, answer_of: str, client_order_id: str) -> None:
        """Forget a cancel `cancel_on_answer` armed (the engine's core no longer sends it on that answer)."""
        self._forget_armed(client_order_id, (answer_of,))

    def _forget_armed(self, client_order_id: str, answers: Sequence[str]) -> None:
        """Drop the cancel of `client_order_id` armed for the answers to `answers`."""
        for answer_of in answers:
            armed = self._on_answer.get(answer_of)
            if armed is None:
                continue
            kept = [a for a in armed if a[2] != client_order_id]
            if kept:
                self._on_answer[answer_of] = kept
            else:
                del self._on_answer[answer_of]

    def cancel_written(self, client_order_id: str) -> bool:
        """A cancel of this order is written and its answer not awaited yet (`release_cancel`)."""
        return type(self._cancels_out.get(client_order_id)) is _CancelOut

    def _answer_read(self, cid: str, response: Response) -> None:
        """A placement's answer just read, with cancels waiting for it (`cancel_on_answer`)."""
        armed = self._on_answer.pop(cid)
        refused = response.status >= 400 and not _duplicate(response.body)
        rests = False
        if response.status == 200 and not all(on_refusal for on_refusal, _, _ in armed):
            try:
                answer = json.loads(response.body)
            except ValueError:
                answer = None  # ccxt's own handling reports it
            rests = isinstance(answer, dict) and answer.get("clientOrderId") == cid and answer.get("status") in _RESTING
        for on_refusal, symbol, target in armed:
            if refused if on_refusal else rests:
                self.cancels_on_answer += 1
                self.release_cancel(symbol, target)

    def release_cancel(self, symbol: str, client_order_id: str) -> None:
        """Write the cancel of an order now, without yielding: the engine calls this from the step that
        decided it, right after journaling it; `cancel_order` then only awaits the answer. Never raises: a
        refusal (unknown symbol, budget) is kept and raised by `cancel_order`."""
        if self._on_answer:  # written now: an answer it waited for finds nothing left to do
            self._forget_armed(client_order_id, list(self._on_answer))
        if client_order_id in self._cancels_out:
            return  # one already on its way; a second `cancel_order` writes its own
        try:
            self._cancels_out[client_order_id] = self._write_cancel(symbol, client_order_id)
        except VenueError as exc:
            self._cancels_out[client_order_id] = exc

    def _write_cancel(self, symbol: str, client_order_id: str) -> _CancelOut:
        """The request ccxt's own `cancel_order` builds for spot and USDⓈ-M (`symbol` + `origClientOrderId`),
        signed by ccxt (prepared while the order was in flight, if still fresh), written on a warm connection."""
        side = self._side_for(symbol)
        what = f"cancel {client_order_id}"
        if self._closed:
            raise VenueError(f"{what}: the venue is closed")
        market = self._market_of(side, symbol)
        side.budget.take(side.cost("cancel"), reducing=True, what=what)
        signed = self._cancels.pop(client_order_id, None)
        if signed is None or signed.side is not side or side.ex.milliseconds() - signed.signed_ms > self._resign_ms:
            params = {"symbol": market["id"], "origClientOrderId": client_order_id}
            signed = _Request(side, side.entry("cancel"), params)
            try:
                signed.sign(self)
            except (ccxt.BaseError, ValueError) as exc:
                raise VenueError(f"{what}: cannot sign: {scrub(str(exc), self._secrets)}") from None
        assert signed.pool is not None
        conn = signed.pool.take()
        if conn is not None:
            try:
                conn.send_now(signed.wire, f"cancel:{client_order_id}")
            except HttpError:
                conn.close()
                conn = None  # `_exchange` connects and sends it
        return _CancelOut(side, market, signed, conn)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderUpdate:
        """The kill switch's most common first move, so it takes the order path too: written before this task
        first yields (or already, by `release_cancel`); the answer goes through ccxt's error handling and
        `parse_order`."""
        out = self._cancels_out.pop(client_order_id, None)
        if isinstance(out, VenueError):
            raise out
        if out is None or out.side is not self._by_symbol.get(symbol):
            if out is not None and out.conn is not None:
                out.conn.close()
            out = self._write_cancel(symbol, client_order_id)
        side, what = out.side, f"cancel {client_order_id}"
        order = await self._exchange(out.request, out.conn, what, cid=client_order_id)
        # The fees first, so that the decode reads them from the ledger with everything else (the update is
        # made once, not made and then replaced: ~15 µs in the run, on the path of the kill switch's unwind).
        scanned = self._fees_ahead(side, order, symbol, client_order_id)
        update = self._decode(side, order, out.market, what, cid=client_order_id)
        return await self._with_fees(side, update, scanned=scanned)

    def _fees_ahead(self, side: _Side, raw: Any, symbol: str, client_order_id: str) -> bool:
        """Before a spot buy's cancel answer is decoded: if the ledger does not cover its fill yet, read the
        reports already received (`_fees_received`). True when it read them (nothing arrives before the
        decode: `_with_fees` need not read them again)."""
        if side.kind is not MarketKind.SPOT or not isinstance(raw, dict) or raw.get("side") != "BUY":
            return False
        market, text = self._markets.get(symbol), raw.get("executedQty")
        if market is None or not isinstance(text, str):
            return False
        try:
            filled = Decimal(text)
        except ArithmeticError:
            return False
        if not filled > 0 or self.fees.totals((symbol, client_order_id), market.base, market.quote)[0] >= filled:
            return False
        self._fees_received(side, market, client_order_id)
        return True

    def _decode(
        self,
        side: _Side,
        raw: Any,
        market: dict[str, Any],
        what: str,
        *,
        cid: str | None,
        side_hint: Side | None = None,
        fallback_cid: str | None = None,
    ) -> OrderUpdate:
        """An order answer of the order path as an `OrderUpdate`: the lean decode (`lean_order_update`, the
        fields the core needs, read straight from Binance's answer) when the answer has the plain shape, else
        ccxt's `parse_order` and `order_update`, which it equals. `cid`: the id asked about, overriding the
        answer's (a spot cancel answers with its own id); `fallback_cid`: used only if the answer has none."""
        if self.config.lean_decode:
            update = lean_order_update(side.ex, raw, market, self._markets, self.fees, client_order_id=cid,
                                       side=side_hint)  # fmt: skip
            if update is not None:
                return update
        try:
            parsed = side.ex.parse_order(raw, market)
        except (ccxt.BaseError, *PARSE_ERRORS) as exc:
            raise MalformedResponse(f"{what}: unparseable answer ({type(exc).__name__})") from None
        if cid is not None:
            return self._update(parsed, market["symbol"], cid)
        return order_update(parsed, self._markets, self.fees, symbol=market["symbol"], client_order_id=fallback_cid,
                            side=side_hint)  # fmt: skip

    async def _exchange(
        self,
        r: _Request,
        conn: Connection | None,
        what: str,
        *,
        cid: str,
        placing: bool = False,
        post_only: bool = False,
    ) -> Any:
        """Finish one order-path request whose bytes `conn` already carries (None: connect and send now),
        read the answer within the configured timeout, and hand it to ccxt the way ccxt's own `fetch` does:
        `handle_errors`, `handle_http_status_code`, `parse_json`. A connection is reused only after a whole
        keep-alive answer; on anything else (timeout, trio cancellation, a broken answer) it is closed."""
        assert r.pool is not None
        response: Response | None = None
        key = r.params.get("newClientOrderId") or f"cancel:{cid}"
        deadline = trio.current_time() + self.config.timeout
        # A caller's own deadline that ends first anyway (the engine's acknowledgement deadline, 2 s against
        # this 10 s) makes a scope of ours redundant: entering and leaving one cost ~5-10 µs in the run, on the
        # path of every answer to the kill switch.
        scope = _NO_SCOPE if trio.current_effective_deadline() <= deadline else trio.fail_at(deadline)
        try:
            try:
                with scope:
                    if conn is None:
                        conn = await r.pool.connect()
                        if r.side.ex.milliseconds() - r.signed_ms > self._resign_ms:
                            r.sign(self)
                        conn.send_now(r.wire, key)
                    response = await conn.read_response(key)
            except trio.TooSlowError:
                raise ccxt.RequestTimeout(f"{r.side.exchange_id} {r.entry.method} {r.signed['url']}") from None
            except HttpError as exc:
                raise ccxt.NetworkError(f"{r.side.exchange_id} {r.entry.method}: {exc}") from None
            finally:
                if conn is not None:
                    r.pool.give(conn, response)
            if placing and self._on_answer and cid in self._on_answer:
                self._answer_read(cid, response)  # the kill switch's cancel, before ccxt reads the answer
            return self._answer(r, response)
        except (ccxt.BaseError, *PARSE_ERRORS) as exc:
            error = translate_error(exc, what=what, secrets=self._secrets, client_order_id=cid, placing=placing,
                                    post_only=post_only)  # fmt: skip
        if isinstance(error, RateLimited):
            r.side.budget.exhaust()
        raise error

    @staticmethod
    def _answer(r: _Request, response: Response) -> Any:
        """What ccxt's `fetch` makes of an HTTP answer (the same calls, in the same order).

        A refusal ccxt has classified once (a 400 with Binance's `{"code", "msg"}` body: a post-only order that
        would cross, a filter failure) is raised again from that classification when the same body comes back
        for the same endpoint, as the same ccxt exception with the same message: ccxt's `handle_errors` walks
        its exact and broad tables (~40 µs alone) on the path of a leg's rejection. Only answers whose
        classification depends on the body alone: not -2015 (which ccxt classifies by its own state), not
        the rate limits (418/429) or server errors."""
        ex, s = r.side.ex, r.signed
        url, method, body = s["url"], s["method"], s["body"]
        text = response.body.decode("utf-8", errors="replace")
        text = ex.on_rest_response(response.status, response.reason, url, method, response.headers, text,
                                   r.headers, body)  # fmt: skip
        parsed = ex.parse_json(text)
        key = None
        if response.status == 400 and isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
            key = (response.status, str(method), str(url).split("?", 1)[0], text)
            known = r.side.refusals.get(key) if parsed["code"] != -2015 else None
            if known is not None:
                raise known[0](known[1])
        try:
            ex.handle_errors(response.status, response.reason, url, method, response.headers, text, parsed,
                             r.headers, body)  # fmt: skip
        except ccxt.BaseError as exc:
            if key is not None and parsed["code"] != -2015:
                if len(r.side.refusals) >= _REFUSALS_KEPT:
                    r.side.refusals.clear()
                r.side.refusals[key] = (type(exc), str(exc))
            raise
        ex.handle_http_status_code(response.status, response.reason, url, method, text)
        return parsed if parsed is not None else text

    def _pool(self, side: _Side, origin: Origin) -> Pool:
        pool = side.pools.get(origin)
        if pool is None:
            if origin.tls and side.exchange_id not in self._ssl:
                ex = side.ex
                # As ccxt's own `open()` builds it: its cafile, or no verification if told so.
                context = ssl.create_default_context(cafile=ex.cafile)
                if not ex.verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._ssl[side.exchange_id] = context
            pool = Pool(origin, self._ssl.get(side.exchange_id), tap=self.tap)
            side.pools[origin] = pool
            if self._nursery is not None and not self._closed:
                self._nursery.start_soon(pool.keep_warm, name=f"{side.exchange_id} order connections")
        return pool

    def set_tap(self, tap: WireTap | None) -> None:
        """Watch every order-path send and answer (time-stamped at the socket); None stops watching."""
        self.tap = tap
        for side in (self._spot, self._perp):
            for pool in side.pools.values():
                pool.tap = tap

    def _warm_order_path(self) -> None:
        """Open the order endpoints' connections now, so that the first order finds them warm."""
        for side in (self._spot, self._perp):
            entry = side.entry("order")
            base = side.ex.urls["api"][entry.api[0] if isinstance(entry.api, list) else entry.api]
            self._pool(side, split_url(f"{base}/{entry.path}")[0])

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderUpdate:
        side = self._side_for(symbol)
        order = await self._call(side, f"query {client_order_id}", side.ex.fetch_order, None, symbol,
                                 {"origClientOrderId": client_order_id}, cost=side.cost("fetch"),
                                 cid=client_order_id)  # fmt: skip
        return await self._with_fees(side, self._update(order, symbol, client_order_id))

    async def _with_fees(self, side: _Side, update: OrderUpdate, *, scanned: bool = False) -> OrderUpdate:
        """Binance's cancel and query answers carry no fees. A spot buy pays its fee in the base asset, which
        changes what is held (and so what the kill switch unwinds). The fees come from the answers the venue
        already sent: the fill's execution report on the user stream (or the placement's `fills`), recorded
        in the fee ledger. When those do not cover the fill yet, the execution reports are on their way (the
        venue sends them as the trade happens, before it answers a later cancel): wait for them up to
        `fee_wait` while the stream is up; only if none has arrived by then, ask REST for the order's trades,
        and take whichever of the query and the stream tells first."""
        if side.kind is not MarketKind.SPOT or update.side is not Side.BUY or update.filled == 0:
            return update
        market = self._markets[update.symbol]
        key = (update.symbol, update.client_order_id)
        traded, fee_base, fee_quote = self.fees.totals(key, market.base, market.quote)
        if traded < update.filled and not scanned:
            # The reports may be here already, read off the socket but not yet handed over by ccxt.pro.
            self._fees_received(side, market, update.client_order_id)
            traded, fee_base, fee_quote = self.fees.totals(key, market.base, market.quote)
        stream = _stream_live(side) if traded < update.filled else False
        if stream and self.config.fee_wait > 0:
            with trio.move_on_after(self.config.fee_wait):
                while traded < update.filled:
                    await self._fees_seen.wait()
                    traded, fee_base, fee_quote = self.fees.totals(key, market.base, market.quote)
        if traded < update.filled and update.venue_order_id is not None:
            await self._trades_or_stream(side, update, key, stream)
            traded, fee_base, fee_quote = self.fees.totals(key, market.base, market.quote)
        if (fee_base, fee_quote) == (update.fee_base, update.fee_quote):
            return update
        return dataclasses.replace(update, fee_base=fee_base, fee_quote=fee_quote)

    def fees_known(self, symbol: str, client_order_id: str, filled: Decimal) -> tuple[Decimal, Decimal] | None:
        """The fees (base, quote) this venue's answer about an order filled `filled` would carry now (its
        cancel's, its query's): the fee ledger's, once it covers the fill, reading the execution reports
        already received but not yet handed over (`_fees_received`); None while it does not (the answer
        would wait for them). The engine shapes the answer it expects to a cancel with it
        (`PackageCore.provisional_reaction`); a guess, used only when the real answer equals it."""
        market = self._markets.get(symbol)
        side = self._by_symbol.get(symbol)
        if market is None or side is None:
            return None
        key = (symbol, client_order_id)
        traded, fee_base, fee_quote = self.fees.totals(key, market.base, market.quote)
        if traded < filled and side.kind is MarketKind.SPOT:
            self._fees_received(side, market, client_order_id)
            traded, fee_base, fee_quote = self.fees.totals(key, market.base, market.quote)
        return (fee_base, fee_quote) if traded >= filled else None

    def _fees_received(self, side: _Side, market: Market, client_order_id: str) -> None:
        """Record the trades of one spot order from the execution reports this process has already received
        on the user stream but ccxt.pro has not handled yet: the messages aiohttp has read and decoded wait in
        the websocket's buffer (ccxt's `Client.buffer`) until ccxt's receive loop takes them, one per pass of
        the asyncio loop, behind everything else the engine's thread runs. The ledger counts each trade once
        by its id, so ccxt's own handling of the same report later changes nothing. Reads, never consumes: a
        message that is not such a report, or cannot be read, is left to ccxt."""
        for client in list((getattr(side.ex, "clients", None) or {}).values()):
            if side.kind.value not in (getattr(client, "subscriptions", None) or {}):
                continue  # not the user-data connection ("spot" / "linear"): a busy book stream is not read
            try:
                pending = list(client.buffer or ())
            except (AttributeError, TypeError):
                continue  # not connected (or a ccxt without the buffer): nothing received to look at
            for item in pending:
                data = getattr(item[0], "data", None) if isinstance(item, tuple) and item else None
                if not isinstance(data, str) or '"executionReport"' not in data or client_order_id not in data:
                    continue
                if '"TRADE"' not in data and '"CALCULATED"' not in data:
                    # Not a trade (the order's NEW, CANCELED reports): `report_trade_fee` would refuse it
                    # after a json.loads of ~10 µs, on the path of the kill switch's unwind.
                    continue
                try:
                    message = json.loads(data)
                except ValueError:
                    continue
                # The WebSocket API wraps user data as {"subscriptionId", "event"}; a listenKey stream as is.
                report = message.get("event", message) if isinstance(message, dict) else None
                if not isinstance(report, dict) or report.get("e") != "executionReport":
                    continue
                if report.get("c") != client_order_id or report.get("s") != market.venue_symbol:
                    continue
                trade = report_trade_fee(side.ex, report)
                if trade is not None:
                    self.fees.add((market.symbol, client_order_id), *trade)

    async def _trades_or_stream(self, side: _Side, update: OrderUpdate, key: tuple[str, str], stream: bool) -> None:
        """Ask REST for the order's trades, while the stream's reports may still tell first (then the query is
        abandoned). Raises the query's error only when the stream did not tell either."""
        market = self._markets[update.symbol]
        self.fee_queries += 1
        failed: list[VenueError] = []

        async def from_rest() -> None:
            try:
                trades = await self._call(side, f"trades of {update.client_order_id}", side.ex.fetch_order_trades,
                                          update.venue_order_id, update.symbol, cost=side.cost("trades"))  # fmt: skip
                if not isinstance(trades, list):
                    raise MalformedResponse(f"trades of {update.client_order_id}: expected a list")
            except VenueError as exc:
                failed.append(exc)
            else:
                for trade in trades:
                    if isinstance(trade, dict):
                        self.fees.record_trade(key, trade)
            nursery.cancel_scope.cancel()

        async def from_stream() -> None:
            while self.fees.totals(key, market.base, market.quote)[0] < update.filled:
                await self._fees_seen.wait()
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_rest)
            if stream:
                nursery.start_soon(from_stream)
        if failed and self.fees.totals(key, market.base, market.quote)[0] < update.filled:
            raise failed[0]

    async def fetch_open_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        sides = [self._side_for(symbol)] if symbol is not None else [self._spot, self._perp]
        out: list[OrderUpdate] = []

        async def one(side: _Side) -> None:
            params = {"symbol": "x"} if symbol is not None else {}
            orders = await self._call(side, f"open orders {symbol or side.exchange_id}", side.ex.fetch_open_orders,
                                      symbol, cost=side.cost("open", params))  # fmt: skip
            for order in orders:
                sym = order.get("symbol")
                if sym in self._markets:
                    out.append(self._update(order, sym))

        await _concurrently(*(functools.partial(one, side) for side in sides))
        return out

    async def fetch_orders(self, symbol: str) -> list[OrderUpdate]:
        """The symbol's recent orders, open and closed (Binance `allOrders`): recovery looks for fills the
        journal never wrote."""
        side = self._side_for(symbol)
        orders = await self._call(side, f"all orders {symbol}", side.ex.fetch_orders, symbol,
                                  cost=side.cost("all", {"symbol": symbol}))  # fmt: skip
        if not isinstance(orders, list):
            raise MalformedResponse(f"all orders {symbol}: expected a list")
        return [self._update(order, symbol) for order in orders if isinstance(order, dict)]

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> None:
        """USDⓈ-M `countdownCancelAll`, the venue's dead-man's switch: Binance cancels every open order of
        `symbol` unless this is called again within `countdown_ms` milliseconds; 0 disarms it. Spot has none."""
        side = self._side_for(symbol)
        if side.kind is not MarketKind.LINEAR:
            raise VenueError(f"countdownCancelAll: {symbol} is not a USDⓈ-M market (spot has no dead-man's switch)")
        if isinstance(countdown_ms, bool) or not isinstance(countdown_ms, int) or countdown_ms < 0:
            raise ValueError(f"countdown_ms: must be an integer >= 0, got {countdown_ms!r}")
        params = {"symbol": self._markets[symbol].venue_symbol, "countdownTime": countdown_ms}
        # Arming is never refused by the local budget (it has its own share, see WeightBudget); disarming is
        # not urgent (an unneeded timer only cancels what no longer rests) and waits its turn like a query.
        answer = await self._call(side, f"countdownCancelAll {symbol}", side.ex.fapiPrivatePostCountdownCancelAll,
                                  params, cost=side.cost("countdown", params), priority=countdown_ms > 0)  # fmt: skip
        if not isinstance(answer, dict) or str(answer.get("countdownTime")) != str(countdown_ms):
            raise MalformedResponse(f"countdownCancelAll {symbol}: unexpected answer {answer!r:.120}")

    # --- user-data streams --------------------------------------------------------------------------------

    async def watch_orders(self) -> list[OrderUpdate]:
        """The next batch of order updates from either market (ccxt.pro `watch_orders` on both instances:
        spot through Binance's WS-API user-data subscription, futures through a listenKey stream).

        A lost stream raises StreamDisconnected once (updates may have been missed: reconcile by REST). A
        stream the venue closed is opened again at once; one that failed otherwise, at the start of the next
        call (or of this one if it was already down)."""
        self._ensure_pumps()
        item = await self._updates_recv.receive()
        if isinstance(item, _Dropped):
            raise StreamDisconnected(f"{item.kind.value} user-data stream lost: {item.detail}")
        return item

    def _ensure_pumps(self) -> None:
        if self._nursery is None:
            raise RuntimeError("CcxtVenue streams need the venue opened with `open_ccxt_venue`")
        for side in (self._spot, self._perp):
            if not side.pump_running and not self._closed:
                side.pump_running = True
                self._nursery.start_soon(self._pump, side, name=f"{side.exchange_id} user stream")

    async def _pump(self, side: _Side) -> None:
        """Keep one ccxt.pro `watch_orders` pending on the instance: it opens (and after a drop reopens) the
        user-data subscription, and its failure is how a lost stream shows. The updates themselves arrive
        through the order-event tap (`_on_order_event`), one per execution, in wire order."""
        try:
            while True:
                side.loss_reported = False
                try:
                    await trio_asyncio.aio_as_trio(side.ex.watch_orders)()
                except (ccxt.BaseError, asyncio.CancelledError, *PARSE_ERRORS):
                    if side.loss_reported and not self._closed:
                        continue  # the close hook has reported this loss: subscribe again at once
                    raise
        except (ccxt.BaseError, asyncio.CancelledError, *PARSE_ERRORS) as exc:
            error = translate_error(exc, what=f"{side.exchange_id} user stream", secrets=self._secrets)
            log.warning("%s", error)
            self._post(_Dropped(side.kind, str(error)))
        finally:
            side.pump_running = False

    def _on_ws_closed(self, side: _Side, client: Any, code: Any) -> None:
        """The venue closed one of ccxt.pro's websockets (runs inside ccxt: must never raise). If it carried
        this instance's user data, report the stream lost now, whether or not a watch was pending on it."""
        subscriptions = getattr(client, "subscriptions", None) or {}
        if self._closed or side.kind.value not in subscriptions:  # "spot" / "linear": the user-data subscription
            return
        if getattr(client, "legguard_lost", False):
            return  # the second report of the same close (see `_on_close`)
        if getattr(client, "error", None) is not None:
            return  # closed after an error, which failed the pending watch: the pump reports it
        client.legguard_lost = True
        side.loss_reported = True
        detail = f"websocket closed by the venue (code {code})"
        log.warning("%s user stream: %s", side.exchange_id, detail)
        self._post(_Dropped(side.kind, detail))

    def _on_order_event(self, side: _Side, message: Any) -> None:
        """One raw order event (spot executionReport, USDⓈ-M ORDER_TRADE_UPDATE), parsed by ccxt's own
        `parse_ws_order`. Runs inside ccxt's message handler: it must never raise."""
        try:
            event = message.get("e") if isinstance(message, dict) else None
            if event == "ORDER_TRADE_UPDATE":
                raw = message.get("o")
            elif event == "executionReport":
                raw = message
            else:
                return  # conditional (algo) and stock orders: never ours
            if not isinstance(raw, dict):
                raise MalformedResponse(f"{event} without an order")
            order = side.ex.parse_ws_order(raw)
            symbol = order.get("symbol")
            if symbol not in self._markets:
                return  # another market of the same account (margin, options): not ours to track
            self._post([self._update(order, str(symbol))])
            # An answer waiting for an execution's fee (`_with_fees`) looks at the ledger again.
            self._fees_seen.set()
            self._fees_seen = trio.Event()
        except (VenueError, ccxt.BaseError, *PARSE_ERRORS) as exc:
            log.warning("%s user stream: unreadable order event: %s", side.exchange_id, exc)
            self._post(_Dropped(side.kind, f"unreadable order event ({type(exc).__name__})"))

    def _post(self, item: list[OrderUpdate] | _Dropped) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._updates_send.send_nowait(item)

    def user_streams_live(self) -> bool:
        """Whether both user-data streams are connected and subscribed (from ccxt.pro's client state)."""
        return all(_stream_live(side) for side in (self._spot, self._perp))

    async def open_user_streams(self) -> None:
        """Start both user-data streams and return once they are live, so that no fill of an order placed
        afterwards can be missed. Callers bound the wait with a trio deadline."""
        self._ensure_pumps()
        # The state lives in ccxt.pro's clients on the asyncio side, which offers nothing to wait on.
        while not self.user_streams_live():  # noqa: ASYNC110
            await trio.sleep(0.005)

    # --- accounts ---------------------------------------------------------------------------------------

    async def fetch_balance(self) -> Mapping[str, Balance]:
        """Spot balances by asset (`USDT`), the futures wallet under `perp:<asset>` (`perp:USDT`)."""
        out: dict[str, Balance] = {}

        async def one(side: _Side, prefix: str) -> None:
            raw = await self._call(side, f"{side.exchange_id} balance", side.ex.fetch_balance,
                                   cost=side.cost("balance"))  # fmt: skip
            free, used = raw.get("free") or {}, raw.get("used") or {}
            for asset in sorted(set(free) | set(used)):
                f, u = free.get(asset), used.get(asset)
                if f is None and u is None:
                    continue
                out[prefix + asset] = Balance(
                    free=dec(f if f is not None else 0, f"balance {prefix}{asset} free"),
                    locked=dec(u if u is not None else 0, f"balance {prefix}{asset} used"),
                )

        await _concurrently(
            functools.partial(one, self._spot, ""), functools.partial(one, self._perp, PERP_BALANCE_PREFIX)
        )
        return dict(sorted(out.items()))

    async def fetch_positions(self) -> Mapping[str, Decimal]:
        side = self._perp
        positions = await self._call(side, "positions", side.ex.fetch_positions, cost=side.cost("positions"))
        out: dict[str, Decimal] = {}
        for p in positions:
            symbol = p.get("symbol")
            if symbol not in self._markets:
                continue
            info = p.get("info") or {}
            if info.get("positionAmt") is not None:
                # Binance's own signed amount, exact (ccxt's `contracts` is unsigned and a float).
                amount = dec(info["positionAmt"], f"position {symbol}")
            else:
                contracts = dec(p.get("contracts") or 0, f"position {symbol} contracts")
                amount = -contracts if p.get("side") == "short" else contracts
            out[symbol] = out.get(symbol, Decimal(0)) + amount
        return out

    async def transfer(self, asset: str, amount: Decimal, *, to_perp: bool) -> None:
        """Binance's universal transfer (`/sapi/v1/asset/transfer`, MAIN_UMFUTURE / UMFUTURE_MAIN) via ccxt."""
        side = self._spot
        source, destination, kind = ("spot", "linear", "MAIN_UMFUTURE") if to_perp else (
            "linear", "spot", "UMFUTURE_MAIN")  # fmt: skip
        await self._call(side, f"transfer {asset}", side.ex.transfer, asset, str(amount), source, destination,
                         {"type": kind}, cost=side.cost("transfer"))  # fmt: skip

    async def fetch_margin(self) -> MarginAccount:
        """The USDⓈ-M account's totals (`/fapi/v2|v3/account` through ccxt's balance call), Binance's own."""
        side = self._perp
        raw = await self._call(side, "margin", side.ex.fetch_balance, cost=side.cost("balance"))
        info = raw.get("info") or {}

        def field(name: str) -> Decimal:
            return dec(info.get(name, 0), f"margin {name}")

        return MarginAccount(
            wallet=field("totalWalletBalance"),
            margin_balance=field("totalMarginBalance"),
            maint_margin=field("totalMaintMargin"),
            initial_margin=field("totalInitialMargin"),
            available=field("availableBalance"),
        )

    async def fetch_funding(self, since_ms: int | None = None) -> list[FundingPayment]:
        """The account's funding payments (`GET /fapi/v1/income`, incomeType FUNDING_FEE, with its tranId),
        oldest first; only the perps of this venue's markets."""
        side = self._perp
        params: dict[str, Any] = {"incomeType": "FUNDING_FEE", "limit": 1000}
        if since_ms is not None:
            params["startTime"] = int(since_ms)
        rows = await self._call(side, "funding payments", side.ex.fapiPrivateGetIncome, params,
                                cost=side.cost("income"))  # fmt: skip
        by_id = {m.venue_symbol: m.symbol for m in self._markets.values() if m.kind is MarketKind.LINEAR}
        out: list[FundingPayment] = []
        for row in rows or []:
            symbol = by_id.get(str(row.get("symbol", "")))
            if symbol is None or row.get("incomeType") != "FUNDING_FEE":
                continue
            out.append(FundingPayment(symbol, dec(row.get("income"), f"funding income {symbol}"),
                                      int(row.get("time", 0)), str(row.get("tranId"))))  # fmt: skip
        out.sort(key=lambda p: (p.time_ms, p.tran_id))
        return out

    async def fetch_funding_rate(self, symbol: str) -> FundingRate:
        """The perp's funding now (`GET /fapi/v1/premiumIndex`): `lastFundingRate` is the rate the next funding
        time settles at as estimated now; the predicted rate for later intervals is Binance's formula on the
        instantaneous premium (markPrice over indexPrice) and `interestRate`. The interval between funding
        times comes from `fundingIntervalHours` when the answer has it, else from the last two settled rates
        (`GET /fapi/v1/fundingRate`, read once per symbol)."""
        side = self._side_for(symbol)
        market = self._markets.get(symbol)
        if side.kind is not MarketKind.LINEAR or market is None:
            raise VenueError(f"funding rate: {symbol} is not a perp market")
        what = f"funding {symbol}"
        row = await self._call(side, what, side.ex.fapiPublicGetPremiumIndex, {"symbol": market.venue_symbol},
                               cost=side.cost("funding"), reducing=False)  # fmt: skip
        if not isinstance(row, dict):
            raise MalformedResponse(f"{what}: expected an object, got {type(row).__name__}")
        mark, index = dec(row.get("markPrice"), f"{what} markPrice"), dec(row.get("indexPrice"), f"{what} indexPrice")
        interest = dec(row.get("interestRate", "0"), f"{what} interestRate")
        predicted = implied_funding_rate(mark / index - 1, interest) if index > 0 else interest
        hours = row.get("fundingIntervalHours")
        interval = float(hours) * 3600 if hours is not None else await self._funding_interval(side, market)
        nxt = row.get("nextFundingTime")
        # Binance always sends its time; without it, ours (the difference to the next funding time is what counts)
        now_ms = int(row["time"]) if row.get("time") else int(time.time() * 1000)
        return FundingRate(symbol, dec(row.get("lastFundingRate"), f"{what} lastFundingRate"), predicted,
                           int(nxt) if nxt else None, now_ms, interval)  # fmt: skip

    async def _funding_interval(self, side: _Side, market: Market) -> float | None:
        """Seconds between the last two settled funding times (cached: a symbol's interval rarely changes)."""
        if market.symbol in self._funding_intervals:
            return self._funding_intervals[market.symbol]
        rows = await self._call(side, f"funding history {market.symbol}", side.ex.fapiPublicGetFundingRate,
                                {"symbol": market.venue_symbol, "limit": 2}, cost=side.cost("funding_history"),
                                reducing=False)  # fmt: skip
        times = sorted(int(r.get("fundingTime", 0)) for r in rows or [] if isinstance(r, dict))
        interval = (times[-1] - times[-2]) / 1000 if len(times) == 2 and times[-1] > times[-2] else None
        self._funding_intervals[market.symbol] = interval
        return interval

    # --- preflight reads (`legguard.engine.app._preflight.AccountProbe`); nothing here can place an order -------

    async def clock_offset(self) -> float:
        """Seconds the venue's clock is ahead of the one ccxt signs with (negative: ours is ahead); the
        larger of the two markets' offsets, each measured at the middle of its round trip."""
        worst = 0.0
        for side in (self._spot, self._perp):
            before = side.ex.milliseconds()
            server = await self._call(side, f"{side.exchange_id} server time", side.ex.fetch_time, cost=1.0)
            after = side.ex.milliseconds()
            offset = (float(server) - (before + after) / 2) / 1000
            worst = offset if abs(offset) > abs(worst) else worst
        return worst

    async def can_trade(self, kind: MarketKind) -> bool:
        """A signed account read on one market (spot `GET /api/v3/account`, USDⓈ-M `GET /fapi/v2/account`)."""
        side = self._spot if kind is MarketKind.SPOT else self._perp
        fn = side.ex.privateGetAccount if kind is MarketKind.SPOT else side.ex.fapiPrivateV2GetAccount
        params = {"omitZeroBalances": "true"} if kind is MarketKind.SPOT else {}
        answer = await self._call(side, f"{side.exchange_id} account", fn, params, cost=side.cost("balance"))
        if not isinstance(answer, dict) or "canTrade" not in answer:
            raise MalformedResponse(f"{side.exchange_id} account: no canTrade in the answer")
        return answer["canTrade"] in (True, "true")

    async def dual_side_position(self) -> bool:
        """`GET /fapi/v1/positionSide/dual`: True in hedge mode, False in one-way mode."""
        side = self._perp
        answer = await self._call(side, "position mode", side.ex.fapiPrivateGetPositionSideDual, {}, cost=30.0)
        if not isinstance(answer, dict) or "dualSidePosition" not in answer:
            raise MalformedResponse(f"position mode: unexpected answer {answer!r:.120}")
        return answer["dualSidePosition"] in (True, "true")

    async def refill_budgets(self) -> None:
        """Wait until both local request budgets are full again (callers bound the wait): the preflight's
        reads must not leave recovery, the first books and the dead-man's switch short of requests."""
        wait = 0.0
        for side in (self._spot, self._perp):
            budget = side.budget
            budget.take(0.0, reducing=True, what="refill")  # brings the tokens up to date
            wait = max(wait, (budget.burst - budget.tokens) / budget.rate)
        await trio.sleep(wait)

    async def perp_symbol_settings(self, symbols: Sequence[str]) -> Mapping[str, tuple[int, str]]:
        """`GET /fapi/v1/symbolConfig`: (leverage, `cross` | `isolated`) per perp symbol asked for."""
        side = self._perp
        answer = await self._call(side, "symbol config", side.ex.fapiPrivateGetSymbolConfig, {}, cost=5.0)
        if not isinstance(answer, list):
            raise MalformedResponse(f"symbol config: unexpected answer {answer!r:.120}")
        by_venue = {self._markets[s].venue_symbol: s for s in symbols if s in self._markets}
        out: dict[str, tuple[int, str]] = {}
        for entry in answer:
            symbol = by_venue.get(str(entry.get("symbol"))) if isinstance(entry, dict) else None
            if symbol is not None:
                margin = "isolated" if str(entry.get("marginType", "")).upper() == "ISOLATED" else "cross"
                out[symbol] = (int(entry.get("leverage") or 0), margin)
        return out

    # --- lifetime ---------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._updates_send.close()
        for side in (self._spot, self._perp):
            for pool in side.pools.values():
                pool.close()
        for out in self._cancels_out.values():
            if isinstance(out, _CancelOut) and out.conn is not None:
                out.conn.close()
        self._cancels_out.clear()
        for side in (self._spot, self._perp):
            try:
                await trio_asyncio.aio_as_trio(side.ex.close)()
            except (ccxt.BaseError, OSError, asyncio.CancelledError) as exc:
                log.warning("%s close: %s", side.exchange_id, type(exc).__name__)


async def _concurrently(*fns: Callable[[], Awaitable[None]]) -> None:
    """Run the calls together (one per ccxt instance); a venue error comes out as itself, not wrapped in an
    exception group, so callers can catch `VenueError` as the protocol promises."""
    errors: list[VenueError] = []

    async def guarded(fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except VenueError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for fn in fns:
            nursery.start_soon(guarded, fn)
    if errors:
        raise errors[0]


def _stream_live(side: _Side) -> bool:
    """Read ccxt.pro's client state: a connected websocket carrying this instance's user data (spot: the
    WS-API subscription acknowledged; futures: the listenKey stream open)."""
    for client in list((side.ex.clients or {}).values()):
        connected = client.connected
        if not connected.done() or connected.cancelled() or connected.exception() is not None or client.closed():
            continue
        if side.kind is MarketKind.SPOT:
            if "spot" in client.subscriptions and "authenticate:signature:spot" not in client.futures:
                return True
        elif "linear" in client.subscriptions:
            return True
    return False


def _all_urls(tree: Any) -> list[str]:
    """Every URL string in ccxt's nested `urls['api']`."""
    if isinstance(tree, Mapping):
        return [url for value in tree.values() for url in _all_urls(value)]
    return [tree] if isinstance(tree, str) else []


def _is_testnet_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return TESTNET_HOST_RE.match(host) is not None


def _public_view(built: Mapping[str, Any]) -> dict[str, str]:
    """The order parameters as sent (for journals and tests); carries no credentials."""
    return {k: str(v) for k, v in built.items()}


# --- opening ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_ccxt_venue(
    config: CcxtVenueConfig, before_streams: Callable[[CcxtVenue], Awaitable[None]] | None = None
) -> AsyncIterator[CcxtVenue]:
    """Open one trio-asyncio loop, both ccxt instances, their markets and (unless `stream_ready_timeout` is
    0) both user-data streams; close everything on exit, whatever happens in the block. `before_streams`
    runs once the markets are loaded, before any stream is opened (the preflight: it may refuse)."""
    async with trio_asyncio.open_loop() as loop:
        venue = CcxtVenue(config)
        loop.set_exception_handler(functools.partial(_orphaned_error, venue._secrets))
        _REDACTOR.secrets.update(venue._secrets)
        SECRETS.update(s for s in venue._secrets if s)
        try:
            async with trio.open_nursery() as nursery:
                venue._nursery = nursery
                await venue.load_markets()
                if before_streams is not None:
                    await before_streams(venue)
                venue._warm_order_path()
                if config.stream_ready_timeout > 0:
                    with trio.move_on_after(config.stream_ready_timeout) as waited:
                        await venue.open_user_streams()
                    if waited.cancelled_caught:
                        log.warning("user-data streams not live after %.1fs; continuing (fills reconcile by REST)",
                                    config.stream_ready_timeout)  # fmt: skip
                yield venue
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await venue.aclose()
            _REDACTOR.secrets.difference_update(venue._secrets)
            SECRETS.difference_update(venue._secrets)


def _orphaned_error(secrets: tuple[str, str], loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The asyncio loop's exception handler. ccxt.pro resolves futures nobody awaits any more (a watch
    superseded by the reconnect after a drop) and spawns tasks whose failure nobody reads; while the venue is
    unreachable they fail with network errors, which asyncio reports as "Future exception was never
    retrieved". trio-asyncio's default handler re-raises whatever it is given into the loop's nursery, which
    would take the whole engine down with an outage it is built to survive. A ccxt or network error nobody
    waits for has been (or will be) seen by whoever asked, so it is only logged; anything else is a bug and
    still propagates."""
    exc = context.get("exception")
    if isinstance(exc, ccxt.BaseError | OSError | asyncio.CancelledError | asyncio.TimeoutError):
        log.info("%s: %s: %s", context.get("message", "asyncio"), type(exc).__name__, scrub(str(exc), secrets))
        return
    loop.default_exception_handler(context)


class _Credentials(Protocol):
    @property
    def api_key(self) -> str: ...

    @property
    def api_secret(self) -> str: ...


class VenueSettings(Protocol):
    """What `open_ccxt_venue_from_config` needs from the run config's `[venue]` table."""

    @property
    def kind(self) -> str: ...

    @property
    def url(self) -> str | None: ...

    @property
    def testnet(self) -> bool | None: ...

    def credentials(self) -> _Credentials | None: ...


def fetch_emulator_urls(base_url: str, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """`GET <emulator>/_emulator/ccxt-urls`: the `urls['api']` for each exchange id."""
    url = base_url.rstrip("/") + "/_emulator/ccxt-urls"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"venue.url: {base_url!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = json.loads(response.read().decode())
    except (OSError, ValueError) as exc:
        raise VenueError(f"emulator at {base_url}: cannot read {url}: {exc}") from None
    if not isinstance(data, dict):
        raise VenueError(f"emulator at {base_url}: {url} did not answer a JSON object")
    out: dict[str, dict[str, Any]] = {}
    for ident in EXCHANGE_IDS:
        entry = data.get(ident)
        if isinstance(entry, dict) and isinstance(entry.get("urls"), dict):
            entry = entry["urls"].get("api", entry["urls"])
        if not isinstance(entry, dict):
            raise VenueError(f"emulator at {base_url}: {url} has no URLs for {ident!r}")
        out[ident] = entry
    return out


@contextlib.asynccontextmanager
async def open_ccxt_venue_from_config(
    settings: VenueSettings, before_streams: Callable[[CcxtVenue], Awaitable[None]] | None = None
) -> AsyncIterator[CcxtVenue]:
    """The run config's venue: kind `binance` (Binance itself) or `emulator` (URLs asked from the emulator)."""
    credentials = settings.credentials()
    if credentials is None:
        raise ValueError(f"venue.kind: {settings.kind!r} has no credentials for a ccxt venue")
    urls = None
    if settings.kind == "emulator":
        if settings.url is None:
            raise ValueError("venue.url: the emulator's URL is required for kind 'emulator'")
        base = settings.url
        urls = await trio.to_thread.run_sync(fetch_emulator_urls, base)
    elif settings.kind != "binance":
        raise ValueError(f"venue.kind: {settings.kind!r} is not a ccxt venue (binance, emulator)")
    testnet = settings.kind == "binance" and settings.testnet is True
    name = "emulator" if settings.kind == "emulator" else "binance testnet" if testnet else "binance mainnet"
    config = CcxtVenueConfig(api_key=credentials.api_key, secret=credentials.api_secret, urls=urls, testnet=testnet,
                             name=name)  # fmt: skip
    async with open_ccxt_venue(config, before_streams) as venue:
        yield venue
