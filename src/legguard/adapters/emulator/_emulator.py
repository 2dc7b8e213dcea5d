"""The Binance-wire emulator: the shared matching engine served over Binance's spot and USDⓈ-M REST and
websocket protocols on loopback, so an unmodified ccxt / ccxt.pro client trades against it offline.

This module holds the state (engine, order metadata, books' update ids, timers, faults, the market driver)
and the listeners' lifecycle; `_rest.py` speaks REST, `_ws.py` the websockets, `_wire.py` the JSON shapes
and error codes, and `_server.py` puts them together (`serve_emulator`).

Why a second, TLS listener: ccxt picks Binance's market-specific exception table (where -2019 "Margin is
insufficient." becomes InsufficientFunds and -5022 becomes OrderNotFillable) only for URLs starting with
`https://fapi.<hostname>/` (resp. `https://api.`, `https://dapi.`, ...); a plain `http://127.0.0.1` URL
gets only the generic table and those futures codes surface as a bare ExchangeError. `ccxt_config()` sets
ccxt's `hostname` to `legguard-emulator@127.0.0.1:<tls port>` and its URLs to
`https://fapi.legguard-emulator@127.0.0.1:<tls port>/fapi/v1`: the `fapi.legguard-emulator` part is URL
userinfo, so the request goes to loopback while the prefix check matches, and ccxt verifies the emulator's
self-signed certificate through its `cafile` option.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import math
import random
import shutil
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from legguard.adapters.market._generator import GeneratorConfig, MarketGenerator, MarketTick, TradePrint
from legguard.adapters.market._matching import Fill, MatchingEngine
from legguard.domain import (
    ZERO,
    DuplicateOrder,
    Market,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    RejectReason,
    Side,
)

from . import _wire as w
from ._market_data import INTERVALS, Candle, MarketData, Trade, bucket_open
from ._ws import Hub

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# Documented defaults so a local client needs no setup; they protect nothing (loopback, fake money).
DEFAULT_API_KEY = "legguard-emulator-key"
DEFAULT_API_SECRET = "legguard-emulator-secret"
# URL userinfo that makes emulator URLs pass ccxt's Binance URL classification (see the module docstring).
URL_LABEL = "legguard-emulator"

# Where the books start: prices of the recorded fixtures (BTC: http_spot_market_depth.json,
# ETH: http_futures_account_trades.json).
START_PRICES: Mapping[str, Decimal] = {"BTC": Decimal("60650.00"), "ETH": Decimal("2778.35")}
FUNDING_INTERVAL = 8 * 3600.0  # seconds between funding times (Binance's default for most symbols)
LISTEN_KEY_TTL = 3600.0  # seconds without keepalive before a futures listenKey expires

FAULT_KINDS = frozenset(
    {"reject", "delay", "ack_timeout", "http_error", "malformed_response", "ws_drop", "partial_fill", "outage"}
)


# --- time ---------------------------------------------------------------------------------------------


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class _Scheduler:
    """Timers on the emulator's own clock: real time when `autoclock`, else moved only by `advance`, so
    tests drive countdowns, listenKey expiry, delays and the market driver without sleeping."""

    def __init__(self, autoclock: bool) -> None:
        self.autoclock = autoclock
        self._heap: list[_Timer] = []
        self._seq = itertools.count()
        self._virtual = 0.0
        self._origin = time.monotonic()
        self.wakeup: asyncio.Event | None = None  # set by the autoclock loop

    def elapsed(self) -> float:
        if self.autoclock:
            return time.monotonic() - self._origin
        return self._virtual

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer(self.elapsed() + max(0.0, delay), next(self._seq), fn)
        heapq.heappush(self._heap, timer)
        if self.wakeup is not None:
            self.wakeup.set()
        return timer

    def next_due(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def run_due(self) -> None:
        """Run every timer due by now (autoclock)."""
        now = self.elapsed()
        while (due := self.next_due()) is not None and due <= now:
            timer = heapq.heappop(self._heap)
            timer.fn()

    def advance(self, seconds: float) -> None:
        """Manual clock: move time forward, running each timer at its own due time, in order."""
        if self.autoclock:
            raise RuntimeError("advance() needs an emulator started with autoclock=False")
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"advance: seconds must be a finite number >= 0, got {seconds}")
        target = self._virtual + seconds
        while (due := self.next_due()) is not None and due <= target:
            timer = heapq.heappop(self._heap)
            self._virtual = max(self._virtual, timer.when)
            timer.fn()
        self._virtual = target


# --- the other participants ---------------------------------------------------------------------------


class MarketDriver:
    """The other participants, from the project's seeded MarketGenerator (the simulated venue's market):
    each step replaces every book and prints trades at the touch, which fill our resting orders as they
    would on Binance. The control API's `move` shifts one market's generated book by a whole number of
    ticks; the shift persists, so the market keeps moving from where it was put."""

    def __init__(self, engine: MatchingEngine, seed: int, config: GeneratorConfig | None = None) -> None:
        self.engine = engine
        prices = {m.base: float(START_PRICES.get(m.base, Decimal(100))) for m in engine.markets.values()}
        self.generator = MarketGenerator(engine.markets, config or GeneratorConfig(prices=prices), seed)
        self.offsets: dict[str, int] = {}  # unified symbol -> ticks the book is shifted by
        self._last: dict[str, MarketTick] = {}
        # The hook through which every print of the wider market reaches the engine (and the emulator's tape).
        self.printer: Callable[[str, Side, Decimal, Decimal, float], object] = engine.print_trade

    def step(self, dt: float, now: float) -> list[tuple[float, Callable[[float], None]]]:
        """Move every book; returns the step's trade flow as (seconds from now, print) for the caller to
        schedule between this step and the next, so resting orders see trades arrive, not one burst."""
        flow: list[tuple[float, Callable[[float], None]]] = []
        for tick in self.generator.step(dt):
            self._last[tick.symbol] = tick
            self._apply(tick, now)
            for trade in tick.trades:
                flow.append((trade.offset * dt, functools.partial(self._print, tick.symbol, trade)))
        flow.sort(key=lambda item: item[0])
        return flow

    def _print(self, symbol: str, trade: TradePrint, now: float) -> None:
        """Someone else trades at the touch (shifted like the book); our orders keep their queue position."""
        price = trade.price + self.engine.markets[symbol].tick_size * self.offsets.get(symbol, 0)
        if price > 0:
            self.printer(symbol, trade.aggressor, price, trade.quantity, now)

    def _apply(self, tick: MarketTick, now: float) -> None:
        market = self.engine.markets[tick.symbol]
        shift = market.tick_size * self.offsets.get(tick.symbol, 0)
        bids = [(p + shift, q) for p, q in tick.bids if p + shift > 0]
        asks = [(p + shift, q) for p, q in tick.asks if p + shift > 0]
        self.engine.set_book(tick.symbol, bids, asks, now)

    def mid_of(self, market: Market) -> Decimal:
        """The market's current mid (its book as last generated, shifted)."""
        mid = self.engine.mid(market.symbol)
        if mid is None:
            raise ValueError(f"{market.symbol}: the book has an empty side, it has no mid")
        return mid

    def move(self, market: Market, price: Decimal, now: float, *, both: bool = False) -> None:
        """Put one market's mid at `price` (to the tick); with `both`, shift the other market of the same
        base asset by the same amount, keeping the basis."""
        if not price > 0:
            raise ValueError(f"price: must be > 0, got {price}")
        delta = price - self.mid_of(market)
        targets = [market]
        if both:
            targets += [m for m in self.engine.markets.values() if m.base == market.base and m is not market]
        for m in targets:
            self.offsets[m.symbol] = self.offsets.get(m.symbol, 0) + int(
                (delta / m.tick_size).to_integral_value(ROUND_HALF_UP)
            )
            last = self._last.get(m.symbol)
            if last is not None:
                self._apply(last, now)


# --- faults -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Fault:
    """One injected misbehaviour, consumed by the next `count` matching requests (-1: until cleared)."""

    market: str  # "spot", "linear" or "all"
    fault: str
    count: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # only requests whose path contains this
    method: str | None = None  # only this HTTP method
    order_type: str | None = None  # only requests whose `type` parameter is this (an order's: MARKET, LIMIT...)

    def applies(self, kind: MarketKind, method: str, path: str, order_type: str | None = None) -> bool:
        return (
            self.count != 0
            and self.market in ("all", kind.value)
            and (self.path is None or self.path in path)
            and (self.method is None or self.method.upper() == method)
            and (self.order_type is None or self.order_type == order_type)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "market": self.market,
            "fault": self.fault,
            "count": self.count,
            "path": self.path,
            "method": self.method,
            **({"order_type": self.order_type} if self.order_type is not None else {}),
            **self.params,
        }


def parse_fault(spec: Mapping[str, Any]) -> Fault:
    """A fault from its JSON spec; a bad spec raises ValueError naming the field and the value."""
    kind = spec.get("fault")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault: {kind!r} is not one of {sorted(FAULT_KINDS)}")
    market = spec.get("market", "all")
    if market not in ("spot", "linear", "all"):
        raise ValueError(f"market: {market!r} is not one of ['all', 'linear', 'spot']")
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        raise ValueError(f"count: {count!r} must be a positive integer or -1 (until cleared)")
    params = {k: v for k, v in spec.items() if k not in ("fault", "market", "count", "path", "method", "order_type")}
    if kind == "reject":
        code = params.get("code")
        if not isinstance(code, int) or isinstance(code, bool) or code >= 0:
            raise ValueError(f"code: a reject fault needs a negative Binance error code, got {code!r}")
    if kind == "delay":
        delay = params.get("delay_ms")
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise ValueError(f"delay_ms: a delay fault needs a number of milliseconds >= 0, got {delay!r}")
    if kind == "http_error":
        status = params.get("status", 503)
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"status: an http_error fault needs an HTTP status 400-599, got {status!r}")
    if kind == "outage":
        seconds = params.get("seconds", 10)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds < math.inf:
            raise ValueError(f"seconds: an outage fault needs a number of seconds > 0, got {seconds!r}")
    if kind == "partial_fill":
        ratio = params.get("ratio", 0.5)
        if not isinstance(ratio, int | float) or not 0 < ratio < 1:
            raise ValueError(f"ratio: a partial_fill fault needs 0 < ratio < 1, got {ratio!r}")
    path, method = spec.get("path"), spec.get("method")
    if path is not None and not isinstance(path, str):
        raise ValueError(f"path: must be a string, got {path!r}")
    if method is not None and not isinstance(method, str):
        raise ValueError(f"method: must be a string, got {method!r}")
    order_type = spec.get("order_type")
    if order_type is not None and not (isinstance(order_type, str) and order_type.strip()):
        raise ValueError(f"order_type: must be a Binance order type such as 'MARKET', got {order_type!r}")
    return Fault(market=market, fault=kind, count=count, params=params, path=path, method=method,
                 order_type=None if order_type is None else order_type.strip().upper())  # fmt: skip


# --- depth feeds --------------------------------------------------------------------------------------


@dataclass(slots=True)
class DepthFeed:
    """The last published state of one book and its update id.

    Invariant: between events, `bids`/`asks` equal the engine's book for the symbol, so a REST snapshot
    served from here with `lastUpdateId = update_id` is exactly consistent with the diff stream.
    """

    market: Market
    update_id: int
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)

    def refresh(self, engine: MatchingEngine, now_ms: int) -> dict[str, Any] | None:
        snap = engine.book(self.market.symbol, depth=100_000)
        bids, asks = dict(snap.bids), dict(snap.asks)
        db, da = _diff(self.bids, bids), _diff(self.asks, asks)
        if not db and not da:
            return None
        prev = self.update_id
        self.update_id += 1
        self.bids, self.asks = bids, asks
        m = self.market
        event: dict[str, Any] = {"e": "depthUpdate", "E": now_ms}
        if m.kind is MarketKind.LINEAR:
            event["T"] = now_ms
        event.update({"s": m.venue_symbol, "U": self.update_id, "u": self.update_id})
        if m.kind is MarketKind.LINEAR:
            event["pu"] = prev
        event["b"] = w.levels(m, db)
        event["a"] = w.levels(m, da)
        return event

    def snapshot(self, limit: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return bids, asks


def _diff(old: Mapping[Decimal, Decimal], new: Mapping[Decimal, Decimal]) -> list[tuple[Decimal, Decimal]]:
    changes = [(p, q) for p, q in new.items() if old.get(p) != q]
    changes += [(p, ZERO) for p in old if p not in new]
    return sorted(changes)


# --- the emulator -------------------------------------------------------------------------------------


class Emulator:
    """Binance spot + USDⓈ-M over loopback, backed by the shared MatchingEngine.

    Use `serve_emulator(...)`; with `autoclock=False` nothing moves until `advance(seconds)` (tests).
    """

    # USDⓈ-M position mode: hedge (True: stored and reported, new orders refused -4061) or one-way (the default)
    dual_side_position: bool = False

    def __init__(
        self,
        *,
        seed: int = 0,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        engine: MatchingEngine | None = None,
        autoclock: bool = True,
        tick_seconds: float = 1.0,
        market: GeneratorConfig | None = None,
        funding_interval: float = FUNDING_INTERVAL,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("api_key and api_secret must be non-empty")
        if not tick_seconds > 0:
            raise ValueError(f"tick_seconds must be > 0, got {tick_seconds}")
        self.seed = seed
        self.api_key = api_key
        self._secret = api_secret
        self.engine = engine if engine is not None else MatchingEngine()
        self.scheduler = _Scheduler(autoclock)
        self.tick_seconds = tick_seconds
        self._epoch0 = time.time()
        self._rng = random.Random(seed ^ 0x5EED)
        self.driver = MarketDriver(self.engine, seed, market)
        self.hub = Hub(self)
        self.faults: list[Fault] = []
        self.data = MarketData(self.engine.markets.values(), seed, funding_interval)
        self.user_stream_lag = 0.0  # seconds user-data events trail the REST view (scenarios)
        self.scenario_log: list[dict[str, Any]] = []  # events a scenario (`_scenario.py`) has played
        perps = [s for s, m in sorted(self.engine.markets.items()) if m.kind is MarketKind.LINEAR]
        self.leverage: dict[str, int] = dict.fromkeys(perps, self.engine.leverage)  # unified symbol -> leverage
        self.margin_type: dict[str, str] = dict.fromkeys(perps, "CROSSED")  # CROSSED | ISOLATED
        self.income: list[dict[str, Any]] = []  # TRANSFER and FUNDING_FEE rows of /fapi/v1/income
        self.transfers: list[dict[str, Any]] = []  # rows of GET /sapi/v1/asset/transfer
        self._tran_ids = itertools.count(9_689_322_392)
        self._taped: set[int] = set()  # engine trade ids of our fills already on the public tape
        self._tops: dict[str, tuple[tuple[Decimal, Decimal], tuple[Decimal, Decimal]]] = {}
        self._stream_ticks = 0
        self._kline_open: dict[str, int] = {}  # kline stream -> open time of the candle last pushed
        self.driver.printer = self._print
        self.meta: dict[tuple[str, str], w.WireOrder] = {}  # (unified symbol, client id) -> metadata
        self._by_order_id: dict[int, tuple[str, str]] = {}
        self._progress: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}  # published (filled, cost)
        self._cancel_ids: dict[tuple[str, str], str] = {}
        self.retired: list[tuple[w.WireOrder, OrderUpdate]] = []  # closed orders whose client id was reused
        self._fill_cursor = 0
        # Distinct id ranges per book, like Binance's (large, unrelated) update ids.
        self.feeds = {
            s: DepthFeed(self.engine.markets[s], 1_000_000 * (i + 1)) for i, s in enumerate(sorted(self.engine.markets))
        }
        self.countdowns: dict[str, _Timer] = {}  # venue symbol -> armed countdownCancelAll
        self.listen_key: str | None = None
        self._listen_key_timer: _Timer | None = None
        self._weights: dict[MarketKind, tuple[int, int]] = {}  # kind -> (minute, used weight)
        self.closing = asyncio.Event()
        self.held = 0  # requests currently held by a delay / ack_timeout fault
        self.late_requests: set[asyncio.Future[Any]] = set()  # delayed requests running past their client
        self.outage_until = -math.inf  # emulator clock (`scheduler.elapsed`): every API request fails before it
        self._activity = asyncio.Event()
        self.host = DEFAULT_HOST
        self.port = 0
        self.tls_port: int | None = None
        self.cafile: Path | None = None
        self._runner: web.AppRunner | None = None
        self._tmpdir: Path | None = None
        self._ticker: asyncio.Task[None] | None = None
        gen = self.driver.generator
        mids, premiums = {}, {}
        for m in self.engine.markets.values():
            spot_mid = Decimal(str(gen.spot_mid(m.base)))
            mids[m.symbol] = spot_mid if m.kind is MarketKind.SPOT else Decimal(str(gen.perp_mid(m.base)))
            premiums[m.symbol] = mids[m.symbol] / spot_mid - 1
        self.data.backfill(self.now_ms(), mids, premiums)
        self._epoch0 = time.time()  # the emulator's clock starts now, not before the backfill (~0.3 s)
        self.driver.step(0.0, self.now())  # books exist before the first request (no flow in no time)
        self.pump()
        self._schedule_tick()
        self._schedule_streams()
        self._schedule_funding()

    def __repr__(self) -> str:  # never the secret
        return f"Emulator(http://{self.host}:{self.port}, api_key={self.api_key!r}, seed={self.seed})"

    # --- credentials ---

    def secret_matches(self, signature: str, payload: bytes) -> bool:
        if not signature.isascii():  # compare_digest refuses non-ASCII text; it cannot match anyway
            return False
        expected = hmac.new(self._secret.encode(), payload, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature.lower())

    # --- time ---

    def now(self) -> float:
        """Emulator time in epoch seconds (the engine's `now`, message timestamps)."""
        return self._epoch0 + self.scheduler.elapsed()

    def now_ms(self) -> int:
        return w.ms(self.now())

    async def sleep(self, seconds: float) -> None:
        """Sleep on the emulator's clock (virtual under autoclock=False); returns early at shutdown."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        timer = self.scheduler.call_later(seconds, wake)
        closing: asyncio.Future[None] = asyncio.ensure_future(self._wait_closing())
        try:
            await asyncio.wait({done, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            closing.cancel()

    def notify(self) -> None:
        """Something observable changed (connections, subscriptions, held requests): wake `wait_until`."""
        self._activity.set()
        self._activity = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait, without polling, until `predicate()` holds (tests: "the client has subscribed"); callers
        bound it with their own timeout."""
        while not predicate():
            await self._activity.wait()

    async def _wait_closing(self) -> None:
        await self.closing.wait()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn` after `delay` seconds of emulator time."""
        self.scheduler.call_later(delay, fn)

    def advance(self, seconds: float) -> None:
        """Manual clock (autoclock=False): run every timer falling within the next `seconds`."""
        self.scheduler.advance(seconds)

    def _schedule_tick(self) -> None:
        def tick() -> None:
            flow = self.driver.step(self.tick_seconds, self.now())
            self.pump()
            for delay, trade in flow:
                self.scheduler.call_later(delay, functools.partial(print_one, trade))
            self._schedule_tick()

        def print_one(trade: Callable[[float], None]) -> None:
            trade(self.now())
            self.pump()

        self.scheduler.call_later(self.tick_seconds, tick)

    async def _autoclock_loop(self) -> None:
        wakeup = self.scheduler.wakeup = asyncio.Event()
        while True:
            self.scheduler.run_due()
            due = self.scheduler.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.0, due - self.scheduler.elapsed()))
            wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=wait)

    # --- public market data (the tape; `_emulator_market.py`) ---

    def _print(self, symbol: str, aggressor: Side, price: Decimal, quantity: Decimal, now: float) -> None:
        """A print of the wider market: the engine fills our resting orders it reaches (those fills are
        trades on the tape at our price), the rest of the print is a trade of the others."""
        before = len(self.engine.fills(symbol))
        self.engine.print_trade(symbol, aggressor, price, quantity, now)
        t_ms, left = w.ms(now), quantity
        for fill in self.engine.fills(symbol)[before:]:
            self._taped.add(fill.trade_id)
            self._tape(symbol, fill.price, fill.quantity, t_ms, buyer_maker=fill.side is Side.BUY)
            left -= fill.quantity
        if left > 0:
            self._tape(symbol, price, left, t_ms, buyer_maker=aggressor is Side.SELL)

    def _tape(self, symbol: str, price: Decimal, quantity: Decimal, t_ms: int, *, buyer_maker: bool) -> Trade:
        trade = self.data.record_trade(symbol, price, quantity, t_ms, buyer_maker=buyer_maker)
        m = self.engine.markets[symbol]
        subscribed = self.hub.subscribed(m.kind)
        if subscribed:
            name = m.venue_symbol.lower()
            if f"{name}@trade" in subscribed:
                self.hub.publish(m.kind, f"{name}@trade", w.stream_trade(m, trade, self.now_ms()))
            if f"{name}@aggTrade" in subscribed:
                self.hub.publish(m.kind, f"{name}@aggTrade", w.stream_agg_trade(m, trade, self.now_ms()))
        return trade

    def index_price(self, m: Market) -> Decimal:
        """A perp's index: the spot mid of its base asset here (the mark price if there is no spot book)."""
        spot = next((s for s in self.markets(MarketKind.SPOT) if s.base == m.base), None)
        mid = self.engine.mid(spot.symbol) if spot is not None else None
        if mid is None:
            return self.engine.mark_price(m.symbol) or ZERO
        return mid.quantize(m.tick_size, ROUND_HALF_UP)

    def stats(self, m: Market) -> w.Stats24h:
        now_ms = self.now_ms()
        open_ms, window, prev_close = self.data.ticker_window(m.symbol, now_ms)
        last = self.data.last_trade(m.symbol)
        bids, asks = self.feeds[m.symbol].snapshot(1)
        bid, ask = (bids[0] if bids else (ZERO, ZERO)), (asks[0] if asks else (ZERO, ZERO))
        last_price = last.price if last is not None else (window.close if window is not None else ZERO)
        if window is None:
            window = _flat(now_ms, last_price)
        return w.Stats24h(
            market=m,
            open=window.open,
            high=window.high,
            low=window.low,
            last=last_price,
            last_qty=last.quantity if last is not None else ZERO,
            prev_close=prev_close if prev_close is not None else window.open,
            volume=window.volume,
            quote_volume=window.quote_volume,
            open_ms=open_ms,
            close_ms=now_ms,
            first_id=window.first_id,
            last_id=window.last_id,
            count=window.count,
            bid=bid,
            ask=ask,
        )

    def _schedule_streams(self) -> None:
        def tick() -> None:
            self._stream_tick()
            self._schedule_streams()

        self.scheduler.call_later(1.0, tick)

    def _stream_tick(self) -> None:
        """Once a second of emulator time: sample mark and index, push tickers, klines and mark prices."""
        now_ms = self.now_ms()
        self._stream_ticks += 1
        for m in self.markets(MarketKind.LINEAR):
            mark = self.engine.mark_price(m.symbol)
            if mark is not None:
                self.data.sample(m.symbol, now_ms, mark, self.index_price(m))
        for kind in (MarketKind.SPOT, MarketKind.LINEAR):
            subscribed = self.hub.subscribed(kind)
            if subscribed:
                self._push_streams(kind, subscribed, now_ms)

    def _push_streams(self, kind: MarketKind, subscribed: set[str], now_ms: int) -> None:
        arrays: dict[str, list[Any]] = {"!miniTicker@arr": [], "!ticker@arr": [], "!markPrice@arr": []}
        every_3s = self._stream_ticks % 3 == 0
        for m in self.markets(kind):
            name = m.venue_symbol.lower()
            mine = {s for s in subscribed if s.startswith(name + "@")}
            if (
                mine & {f"{name}@ticker", f"{name}@miniTicker"}
                or "!ticker@arr" in subscribed
                or ("!miniTicker@arr" in subscribed)
            ):
                stats = self.stats(m)
                ticker, mini = w.stream_ticker(stats, now_ms), w.stream_mini_ticker(stats, now_ms)
                self.hub.publish(kind, f"{name}@ticker", ticker)
                self.hub.publish(kind, f"{name}@miniTicker", mini)
                arrays["!ticker@arr"].append(ticker)
                arrays["!miniTicker@arr"].append(mini)
            for stream in mine:
                _, _, channel = stream.partition("@")
                family, _, interval = channel.partition("_")
                if family == "kline" and interval in INTERVALS:
                    self._push_kline(m, stream, interval, now_ms)
            if kind is MarketKind.LINEAR:
                mark = self.engine.mark_price(m.symbol) or ZERO
                event = w.mark_price_update(
                    m,
                    mark,
                    self.index_price(m),
                    self.data.predicted_rate(m.symbol),
                    self.data.next_funding_ms(now_ms),
                    now_ms,
                )
                self.hub.publish(kind, f"{name}@markPrice@1s", event)
                if every_3s:
                    self.hub.publish(kind, f"{name}@markPrice", event)
                arrays["!markPrice@arr"].append(event)
        for stream, events in arrays.items():
            if not events:
                continue
            if stream == "!markPrice@arr":
                self.hub.publish(kind, "!markPrice@arr@1s", events)
                if not every_3s:
                    continue
            self.hub.publish(kind, stream, events)

    def _push_kline(self, m: Market, stream: str, interval: str, now_ms: int) -> None:
        """The candle in progress; first, when a new one has begun, the final state of the one that closed."""
        step, series = INTERVALS[interval], self.data.tapes[m.symbol].candles
        current, last = bucket_open(now_ms, step), self._kline_open.get(stream)
        self._kline_open[stream] = current
        start = last if last is not None and last < current else current
        for candle in series.klines(interval, start, None, 2, now_ms):
            self.hub.publish(m.kind, stream, w.stream_kline(m, candle, interval, step, now_ms))

    def _book_ticker(self, market: Market, update_id: int, now_ms: int) -> None:
        stream = market.venue_symbol.lower() + "@bookTicker"
        if stream not in self.hub.subscribed(market.kind):
            return
        bids, asks = self.feeds[market.symbol].snapshot(1)
        top = (bids[0] if bids else (ZERO, ZERO), asks[0] if asks else (ZERO, ZERO))
        if self._tops.get(market.symbol) != top:
            self._tops[market.symbol] = top
            self.hub.publish(market.kind, stream, w.stream_book_ticker(market, update_id, top[0], top[1], now_ms))

    # --- funding ---

    def _schedule_funding(self) -> None:
        now_ms = self.now_ms()
        due = self.data.next_funding_ms(now_ms)
        self.scheduler.call_later((due - now_ms) / 1000, lambda: self._settle_funding(due))

    def _settle_funding(self, time_ms: int) -> None:
        """A funding time: every perp's rate is settled; positions pay or receive `position x mark x rate`
        (longs pay a positive rate), booked as income FUNDING_FEE and told by ACCOUNT_UPDATE FUNDING_FEE."""
        paid: set[str] = set()
        for m in self.markets(MarketKind.LINEAR):
            mark = self.engine.mark_price(m.symbol) or ZERO
            event = self.data.settle(m.symbol, time_ms, mark)
            position = self.engine.positions()[m.symbol]
            if position == 0:
                continue
            amount = (-position * mark * event.rate).quantize(Decimal("0.00000001"), ROUND_HALF_UP)
            self.engine.credit_perp_wallet(amount)
            self._book_income(m.venue_symbol, "FUNDING_FEE", amount, time_ms)
            paid.add(m.symbol)
        if paid:
            self.hub.perp_user(self._account_update(paid, self.now_ms(), reason="FUNDING_FEE"))
        self._schedule_funding()

    def _book_income(self, venue_symbol: str, kind: str, amount: Decimal, time_ms: int, trade_id: str = "") -> None:
        self.income.append(
            {
                "symbol": venue_symbol,
                "incomeType": kind,
                "income": w.fixed(amount, 8),
                "asset": "USDT",
                "info": kind,
                "time": time_ms,
                "tranId": next(self._tran_ids),
                "tradeId": trade_id,
            }
        )

    # --- account settings and transfers ---

    def set_leverage(self, m: Market, leverage: int) -> None:
        if not 1 <= leverage <= w.BRACKETS[0][0]:
            raise w.WireError(400, -4028, f"Leverage {leverage} is not valid")
        self.leverage[m.symbol] = leverage
        # The engine's own (single) check stays the looser one; `check_margin` applies each symbol's.
        self.engine.leverage = max(self.leverage.values())
        now_ms = self.now_ms()
        self.hub.perp_user(
            {"e": "ACCOUNT_CONFIG_UPDATE", "E": now_ms, "T": now_ms, "ac": {"s": m.venue_symbol, "l": leverage}}
        )

    def set_margin_type(self, m: Market, margin_type: str) -> None:
        if margin_type not in ("ISOLATED", "CROSSED"):
            raise w.WireError(400, -4044, "The margin type is invalid.")
        if self.margin_type[m.symbol] == margin_type:
            raise w.WireError(400, -4046, "No need to change margin type.")
        if self.engine.open_orders(m.symbol):
            raise w.WireError(400, -4047, "Margin type cannot be changed if there exists open orders.")
        if self.engine.positions()[m.symbol]:
            raise w.WireError(400, -4048, "Margin type cannot be changed if there exists position.")
        self.margin_type[m.symbol] = margin_type

    def set_position_mode(self, dual: bool) -> None:
        if dual == self.dual_side_position:
            raise w.WireError(400, -4059, "No need to change position side.")
        if any(m.kind is MarketKind.LINEAR for m in (self.engine.markets[o.symbol] for o in self.engine.open_orders())):
            raise w.WireError(400, -4067, "Position side cannot be changed if there exists open orders.")
        if any(self.engine.positions().values()):
            raise w.WireError(400, -4068, "Position side cannot be changed if there exists position.")
        self.dual_side_position = dual

    def check_margin(self, m: Market, notional: Decimal) -> None:
        """Initial margin with each symbol's own leverage: positions at mark and open non-reduce-only orders
        at their price, plus the new order, must fit in the wallet; else -2019."""
        required = notional / self.leverage[m.symbol]
        positions = self.engine.positions()
        for perp in self.markets(MarketKind.LINEAR):
            exposure = abs(positions[perp.symbol]) * (self.engine.mark_price(perp.symbol) or ZERO)
            for o in self.engine.open_orders(perp.symbol):
                meta = self.meta.get((perp.symbol, o.client_order_id))
                if meta is not None and not meta.reduce_only:
                    exposure += (meta.price or self.engine.mark_price(perp.symbol) or ZERO) * o.remaining
            required += exposure / self.leverage[perp.symbol]
        if required > self.engine.perp_wallet():
            raise w.PERP_MARGIN

    def transfer(self, transfer_type: str, asset: str, amount: Decimal) -> int:
        """Universal transfer between the spot wallet and the USDⓈ-M wallet (USDT only: the perp wallet is
        USDT); the user streams of both sides hear of it."""
        if transfer_type not in ("MAIN_UMFUTURE", "UMFUTURE_MAIN"):
            # Binance knows more types (margin, funding, COIN-M, options); the emulator has only these wallets.
            raise w.WireError(
                400,
                -1100,
                f"Illegal characters found in parameter 'type' ({transfer_type}); served: MAIN_UMFUTURE, UMFUTURE_MAIN",
            )
        if asset != "USDT":
            raise w.WireError(400, -5011, f"Asset {asset} cannot be transferred to or from the USDⓈ-M wallet here.")
        if amount <= 0:
            raise w.WireError(400, -1100, "Illegal characters found in parameter 'amount'.")
        now_ms = self.now_ms()
        to_perp = transfer_type == "MAIN_UMFUTURE"
        if to_perp:
            if self.engine.balances().get(asset, None) is None or self.engine.balances()[asset].free < amount:
                raise w.WireError(400, -5013, "Asset transfer failed: insufficient balance")
            self.engine.credit_spot(asset, -amount)
            self.engine.credit_perp_wallet(amount)
        else:
            if self._perp_available() < amount:
                raise w.WireError(400, -5013, "Asset transfer failed: insufficient balance")
            self.engine.credit_perp_wallet(-amount)
            self.engine.credit_spot(asset, amount)
        tran_id = next(self._tran_ids)
        self.transfers.append(
            {
                "asset": asset,
                "amount": w.fixed(amount, 8),
                "type": transfer_type,
                "status": "CONFIRMED",
                "tranId": tran_id,
                "timestamp": now_ms,
            }
        )
        self._book_income("", "TRANSFER", amount if to_perp else -amount, now_ms)
        self.income[-1]["tranId"] = tran_id
        delta = amount if not to_perp else -amount
        self.hub.spot_user({"e": "balanceUpdate", "E": now_ms, "a": asset, "d": w.fixed(delta, 8), "T": now_ms})
        self.hub.spot_user(self._account_position({asset}, now_ms))
        self.hub.perp_user(self._account_update(set(), now_ms, reason="DEPOSIT" if to_perp else "WITHDRAW"))
        return tran_id

    def _perp_available(self) -> Decimal:
        used = ZERO
        positions = self.engine.positions()
        for perp in self.markets(MarketKind.LINEAR):
            exposure = abs(positions[perp.symbol]) * (self.engine.mark_price(perp.symbol) or ZERO)
            for o in self.engine.open_orders(perp.symbol):
                meta = self.meta.get((perp.symbol, o.client_order_id))
                if meta is not None and not meta.reduce_only:
                    exposure += (meta.price or ZERO) * o.remaining
            used += exposure / self.leverage[perp.symbol]
        upnl = sum((self.engine.unrealized_pnl(p.symbol) for p in self.markets(MarketKind.LINEAR)), ZERO)
        return self.engine.perp_wallet() + min(upnl, ZERO) - used

    # --- markets ---

    def market(self, kind: MarketKind, venue_symbol: str | None) -> Market:
        if not venue_symbol:
            raise w.missing_param("symbol")
        try:
            return self.engine.market_by_id(venue_symbol, kind)
        except KeyError:
            raise w.INVALID_SYMBOL from None

    def markets(self, kind: MarketKind) -> list[Market]:
        return [m for s, m in sorted(self.engine.markets.items()) if m.kind is kind]

    # --- orders ---

    def client_order_id(self) -> str:
        """An id for orders sent without one, shaped like Binance's own (22 alphanumerics)."""
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(self._rng.choice(alphabet) for _ in range(22))

    def place(self, request: OrderRequest, meta: w.WireOrder) -> tuple[OrderUpdate, list[Fill]]:
        """Send one order to the engine; returns its state after the immediate matching and its fills."""
        market, key = meta.market, (request.symbol, request.client_order_id)
        # Binance keeps client ids unique among OPEN orders only: a closed order's id is taken again, as a
        # new order (the earlier one stays in the state dump, under the same id).
        earlier = self.meta.get(key)
        if earlier is not None and self.engine.get(*key).status is OrderStatus.OPEN:
            raise self._duplicate(market.kind)
        closed = self.wire_update(key) if earlier is not None else None
        self.meta[key] = meta
        try:
            self.engine.place(request, self.now())
        except BaseException as exc:
            if earlier is None:
                del self.meta[key]
            else:
                self.meta[key] = earlier
            if isinstance(exc, DuplicateOrder):
                raise self._duplicate(market.kind) from None
            if isinstance(exc, OrderRejected):
                raise reject_error(market, exc) from None
            raise
        if closed is not None:
            self._retire(key, closed)
        if meta.time_in_force == "IOC" and self.engine.get(*key).status is OrderStatus.OPEN:
            # Before the next pump: the unfilled rest of an IOC order never shows in the published book.
            self._cancel_ids[key] = ""
            self.engine.cancel(*key, self.now())  # wire status EXPIRED, see `wire_update`
        fills = self.pump().get(key, [])
        update = self.engine.get(*key)
        if update.status is OrderStatus.OPEN and meta.order_type != "MARKET":
            self._partial_fill_fault(market, request, update, meta.order_type)
        return update, fills

    def _retire(self, key: tuple[str, str], closed: tuple[w.WireOrder, OrderUpdate]) -> None:
        """The closed order whose id a new order just took: kept for the state dump only (queries by client
        id now find the new order; by its old venue order id, nothing)."""
        self.retired.append(closed)
        self._progress.pop(key, None)
        self._cancel_ids.pop(key, None)
        if closed[1].venue_order_id is not None:
            self._by_order_id.pop(int(closed[1].venue_order_id), None)

    def _partial_fill_fault(self, market: Market, request: OrderRequest, update: OrderUpdate, order_type: str) -> None:
        fault = self.take_fault(market.kind, "POST", "order", only="partial_fill", order_type=order_type)
        if fault is None or request.price is None:
            return
        ratio = Decimal(str(fault.params.get("ratio", 0.5)))
        qty = (update.remaining * ratio).quantize(market.step_size, ROUND_DOWN)
        qty = min(max(qty, market.step_size), update.remaining)
        # The rest never fills: a leg stuck partially filled until someone cancels it.
        self.engine.trade_through(market.symbol, request.side.opposite, request.price, qty, self.now())
        self.engine.cap_fills(
            market.symbol, request.client_order_id, self.engine.get(market.symbol, request.client_order_id).filled
        )
        self.pump()

    def _duplicate(self, kind: MarketKind) -> w.WireError:
        return w.SPOT_DUPLICATE if kind is MarketKind.SPOT else w.PERP_DUPLICATE

    def find(self, market: Market, order_id: str | None, client_id: str | None) -> tuple[str, str]:
        """(unified symbol, client id) of an order named by orderId or origClientOrderId (orderId wins when
        both are sent, as on Binance); -2013 if none."""
        if not order_id:
            key = (market.symbol, client_id or "")
            if client_id and key in self.meta:
                return key
            raise w.UNKNOWN_ORDER_QUERY
        try:
            key = self._by_order_id[int(order_id)]
        except (ValueError, KeyError):
            raise w.UNKNOWN_ORDER_QUERY from None
        if key[0] != market.symbol:
            raise w.UNKNOWN_ORDER_QUERY
        return key

    def cancel(self, key: tuple[str, str], cancel_client_id: str = "") -> OrderUpdate:
        self._cancel_ids[key] = cancel_client_id
        try:
            self.engine.cancel(*key, self.now())
        except OrderNotFound:
            raise w.UNKNOWN_ORDER_CANCEL from None
        self.pump()
        return self.engine.get(*key)

    def cancel_all(self, market: Market) -> list[OrderUpdate]:
        done = []
        for update in self.engine.open_orders(market.symbol):
            key = (market.symbol, update.client_order_id)
            self._cancel_ids[key] = ""
            self.engine.cancel(*key, self.now())
            done.append(key)
        self.pump()
        return [self.engine.get(*k) for k in done]

    def wire_update(self, key: tuple[str, str]) -> tuple[w.WireOrder, OrderUpdate]:
        meta, update = self.meta[key], self.engine.get(*key)
        if meta.time_in_force == "IOC" and update.status is OrderStatus.CANCELED:
            # An IOC order's unfilled rest expires on Binance; the engine only knows cancels.
            update = _with_status(update, OrderStatus.EXPIRED)
        return meta, update

    # --- countdownCancelAll ---

    def arm_countdown(self, market: Market, countdown_ms: int) -> None:
        """Binance's dead-man switch: cancel the symbol's open orders unless re-armed within the time."""
        old = self.countdowns.pop(market.venue_symbol, None)
        if old is not None:
            old.cancel()
        if countdown_ms == 0:
            return

        def fire() -> None:
            self.countdowns.pop(market.venue_symbol, None)
            self.cancel_all(market)

        self.countdowns[market.venue_symbol] = self.scheduler.call_later(countdown_ms / 1000, fire)

    # --- listen key (USDⓈ-M user data) ---

    def new_listen_key(self) -> str:
        if self.listen_key is None:
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            self.listen_key = "".join(self._rng.choice(alphabet) for _ in range(64))
        self.keepalive_listen_key()
        return self.listen_key

    def keepalive_listen_key(self) -> str:
        if self.listen_key is None:
            raise w.INVALID_LISTEN_KEY
        if self._listen_key_timer is not None:
            self._listen_key_timer.cancel()
        self._listen_key_timer = self.scheduler.call_later(LISTEN_KEY_TTL, self._expire_listen_key)
        return self.listen_key

    def close_listen_key(self) -> None:
        if self._listen_key_timer is not None:
            self._listen_key_timer.cancel()
        key, self.listen_key = self.listen_key, None
        if key is not None:
            self.hub.close_user_streams(key)

    def _expire_listen_key(self) -> None:
        key, self.listen_key = self.listen_key, None
        if key is not None:
            self.hub.perp_user({"e": "listenKeyExpired", "E": self.now_ms(), "listenKey": key}, key)
            self.hub.close_user_streams(key)

    # --- events ---

    def pump(self) -> dict[tuple[str, str], list[Fill]]:
        """Turn what the engine did since the last call into user-data events and book diffs.

        Called synchronously after every engine call, so no REST handler ever sees a book that the diff
        stream has not yet described. Returns the new fills per order.
        """
        updates = self.engine.drain_updates()
        all_fills = self.engine.fills()
        new_fills, self._fill_cursor = all_fills[self._fill_cursor :], len(all_fills)
        pending: dict[tuple[str, str], deque[Fill]] = {}
        by_order: dict[tuple[str, str], list[Fill]] = {}
        for fill in new_fills:
            if fill.trade_id in self._taped:
                self._taped.discard(fill.trade_id)
            else:  # taker fills, and maker fills of a book that moved through our price
                buyer_maker = (fill.side is Side.BUY) == fill.maker
                self._tape(fill.symbol, fill.price, fill.quantity, w.ms(fill.timestamp), buyer_maker=buyer_maker)
            key = (fill.symbol, fill.client_order_id)
            pending.setdefault(key, deque()).append(fill)
            by_order.setdefault(key, []).append(fill)
        now_ms = self.now_ms()
        spot_assets: set[str] = set()
        perp_symbols: set[str] = set()
        for update in updates:
            key = (update.symbol, update.client_order_id)
            meta = self.meta.get(key)
            if meta is None:  # the venue's own order (liquidation, ADL)
                market = self.engine.markets[update.symbol]
                meta = w.WireOrder(
                    market, update.client_order_id, "MARKET", "GTC", None, w.ms(update.timestamp), origin=update.origin
                )
                self.meta[key] = meta
            assert update.venue_order_id is not None
            self._by_order_id[int(update.venue_order_id)] = key
            for execution in self._executions(meta, update, pending.get(key, deque())):
                if meta.market.kind is MarketKind.SPOT:
                    self.hub.spot_user(w.spot_execution_report(execution, now_ms))
                else:
                    self.hub.perp_user(w.perp_order_trade_update(execution, now_ms))
            if meta.market.kind is MarketKind.SPOT:
                spot_assets |= {meta.market.base, meta.market.quote}
            elif key in by_order:
                perp_symbols.add(update.symbol)
        if spot_assets:
            self.hub.spot_user(self._account_position(spot_assets, now_ms))
        if perp_symbols:
            self.hub.perp_user(self._account_update(perp_symbols, now_ms))
        for feed in self.feeds.values():
            event = feed.refresh(self.engine, now_ms)
            if event is not None:
                self.hub.depth(feed.market, event)
                self._book_ticker(feed.market, feed.update_id, now_ms)
        return by_order

    def _executions(self, meta: w.WireOrder, update: OrderUpdate, fills: deque[Fill]) -> list[w.Execution]:
        key = (update.symbol, update.client_order_id)
        first = key not in self._progress
        filled, cost = self._progress.get(key, (ZERO, ZERO))
        out: list[w.Execution] = []
        venue_own = meta.origin is not OrderOrigin.OURS
        if first and not venue_own:
            out.append(w.Execution(meta, update, "NEW", "NEW", ZERO, ZERO))
        while filled < update.filled and fills:
            fill = fills.popleft()
            filled += fill.quantity
            cost += fill.price * fill.quantity
            status = "FILLED" if filled >= update.amount else "PARTIALLY_FILLED"
            out.append(w.Execution(meta, update, "CALCULATED" if venue_own else "TRADE", status, filled, cost, fill))
        if update.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED):
            ioc = meta.time_in_force == "IOC" and update.status is OrderStatus.CANCELED
            kind = "EXPIRED" if ioc or update.status is OrderStatus.EXPIRED else "CANCELED"
            out.append(w.Execution(meta, update, kind, kind, filled, cost, None, self._cancel_ids.pop(key, None)))
        self._progress[key] = (filled, cost)
        return out

    def _account_position(self, assets: set[str], now_ms: int) -> dict[str, Any]:
        balances = self.engine.balances()
        return {
            "e": "outboundAccountPosition",
            "E": now_ms,
            "u": now_ms,
            "B": [
                {"a": a, "f": w.fixed(balances[a].free, 8), "l": w.fixed(balances[a].locked, 8)}
                for a in sorted(assets)
                if a in balances
            ],
        }

    def _account_update(self, symbols: set[str], now_ms: int, reason: str = "ORDER") -> dict[str, Any]:
        wallet = self.engine.perp_wallet()
        positions = self.engine.positions()
        return {
            "e": "ACCOUNT_UPDATE",
            "E": now_ms,
            "T": now_ms,
            "a": {
                "m": reason,
                "B": [{"a": "USDT", "wb": w.fixed(wallet, 8), "cw": w.fixed(wallet, 8), "bc": "0"}],
                "P": [
                    {
                        "s": self.engine.markets[s].venue_symbol,
                        "pa": w.fmt_qty(self.engine.markets[s], positions[s]),
                        "ep": w.fixed(self.engine.position_entry_price(s) or ZERO, 8),
                        "bep": w.fixed(self.engine.position_entry_price(s) or ZERO, 8),
                        "cr": "0",
                        "up": w.fixed(self.engine.unrealized_pnl(s), 8),
                        "mt": "isolated" if self.margin_type[s] == "ISOLATED" else "cross",
                        "iw": "0",
                        "ps": "BOTH",
                    }
                    for s in sorted(symbols)
                ],
            },
        }

    # --- rate limits and faults ---

    WEIGHT_LIMITS: Mapping[MarketKind, int] = {MarketKind.SPOT: 1200, MarketKind.LINEAR: 6000}

    def charge_weight(self, kind: MarketKind, weight: int) -> int:
        """Binance's REQUEST_WEIGHT per minute (the limits exchangeInfo advertises); -1003 when exceeded."""
        minute = int(time.time() // 60)
        start, used = self._weights.get(kind, (minute, 0))
        if start != minute:
            used = 0
        used += weight
        self._weights[kind] = (minute, used)
        limit = self.WEIGHT_LIMITS.get(kind, 6000)
        if used > limit:
            raise w.rate_limited(limit, kind)
        return used

    @property
    def faults_by_order_type(self) -> bool:
        """Whether a fault waits for an order of one type (a request's `type` must then be read first)."""
        return any(f.order_type is not None for f in self.faults)

    def take_fault(
        self, kind: MarketKind, method: str, path: str, *, only: str | None = None, order_type: str | None = None
    ) -> Fault | None:
        for fault in self.faults:
            if (only is None) == (fault.fault == "partial_fill"):
                continue  # partial fills act on placed orders, not on requests
            if (only is None or fault.fault == only) and fault.applies(kind, method, path, order_type):
                if fault.count > 0:
                    fault.count -= 1
                self.faults = [f for f in self.faults if f.count != 0]
                return fault
        return None

    @property
    def down(self) -> bool:
        """Inside an `outage`: every REST request and websocket handshake is answered 503."""
        return self.scheduler.elapsed() < self.outage_until

    def begin_outage(self, seconds: float) -> None:
        """The venue goes away for `seconds` of emulator time, as a real one does: every connection is dropped,
        every request and handshake meanwhile gets 503, and updates meanwhile are lost; books, orders, balances
        and positions are kept, and the market goes on (resting orders can fill)."""
        self.outage_until = max(self.outage_until, self.scheduler.elapsed() + seconds)
        for kind in (MarketKind.SPOT, MarketKind.LINEAR):
            self.hub.drop(kind)
        self.notify()

    def end_outage(self) -> None:
        self.outage_until = -math.inf
        self.notify()

    def clear_faults(self) -> None:
        """Every pending fault removed, and an outage ended now."""
        self.faults.clear()
        self.end_outage()

    def add_fault(self, spec: Mapping[str, Any]) -> Fault:
        fault = parse_fault(spec)
        if fault.fault == "outage":
            self.begin_outage(float(fault.params.get("seconds", 10)))
            return fault  # acts once, now, for a while
        if fault.fault == "ws_drop":
            kinds = [MarketKind.SPOT, MarketKind.LINEAR] if fault.market == "all" else [MarketKind(fault.market)]
            for kind in kinds:
                self.hub.drop(kind)
            return fault  # acts once, now
        self.faults.append(fault)
        return fault

    # --- control ---

    def move(self, market: Market, price: Decimal, *, both: bool = False) -> None:
        self.driver.move(market, price, self.now(), both=both)
        self.pump()

    def trade(self, market: Market, aggressor: Side, price: Decimal, quantity: Decimal) -> None:
        self.engine.trade_through(market.symbol, aggressor, price, quantity, self.now())
        self.pump()

    def liquidate(self, market: Market, quantity: Decimal, origin: OrderOrigin) -> OrderUpdate:
        update = self.engine.liquidate(market.symbol, quantity, self.now(), origin)
        self.pump()
        return update

    def state(self) -> dict[str, Any]:
        balances = self.engine.balances()
        spot_orders, perp_orders = [], []
        for meta, update in [*self.retired, *(self.wire_update(key) for key in self.meta)]:
            if meta.market.kind is MarketKind.SPOT:
                spot_orders.append(w.spot_order(meta, update))
            else:
                perp_orders.append(w.perp_order(meta, update, for_query=True))
        return {
            "spot": {
                "balances": {a: {"free": _s(b.free), "locked": _s(b.locked)} for a, b in balances.items()},
                "orders": spot_orders,
            },
            "linear": {
                "positions": {
                    self.engine.markets[s].venue_symbol: _s(q) for s, q in sorted(self.engine.positions().items())
                },
                "wallet": _s(self.engine.perp_wallet()),
                "orders": perp_orders,
            },
            "faults": [f.to_json() for f in self.faults],
            "countdowns": sorted(self.countdowns),
            "scenario": list(self.scenario_log),
            "outage_seconds_left": round(max(0.0, self.outage_until - self.scheduler.elapsed()), 3),
        }

    # --- ccxt ---

    def _authority(self, port: int) -> str:
        # Listening on every interface still means connecting over loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def ccxt_urls(self, exchange_id: str, *, tls: bool = False) -> dict[str, Any]:
        """`exchange.urls['api']` for ccxt's `binance` / `binanceusdm` (ccxt.pro's `ws` included).

        Every API group ccxt knows points here, so a misrouted call fails locally instead of reaching the
        real exchange with emulator credentials. Plain http URLs work with nothing else changed; `tls=True`
        URLs also need `hostname` and `cafile` from `ccxt_config` (then ccxt's Binance exception tables
        apply exactly as against Binance).
        """
        if exchange_id not in ("binance", "binanceusdm"):
            raise ValueError(f"exchange_id: {exchange_id!r} is not one of ['binance', 'binanceusdm']")
        if tls and self.tls_port is None:
            raise RuntimeError("this emulator serves no TLS listener (tls_port=None)")

        def rest(group: str, path: str) -> str:
            if tls:
                assert self.tls_port is not None
                return f"https://{group}.{URL_LABEL}@{self._authority(self.tls_port)}{path}"
            return f"http://{self._authority(self.port)}{path}"

        ws = f"ws://{self._authority(self.port)}"
        return {
            "public": rest("api", "/api/v3"),
            "private": rest("api", "/api/v3"),
            "v1": rest("api", "/api/v1"),
            "sapi": rest("api", "/sapi/v1"),
            "sapiV2": rest("api", "/sapi/v2"),
            "sapiV3": rest("api", "/sapi/v3"),
            "sapiV4": rest("api", "/sapi/v4"),
            "fapiPublic": rest("fapi", "/fapi/v1"),
            "fapiPublicV2": rest("fapi", "/fapi/v2"),
            "fapiPublicV3": rest("fapi", "/fapi/v3"),
            "fapiPrivate": rest("fapi", "/fapi/v1"),
            "fapiPrivateV2": rest("fapi", "/fapi/v2"),
            "fapiPrivateV3": rest("fapi", "/fapi/v3"),
            "fapiData": rest("fapi", "/futures/data"),
            "dapiPublic": rest("dapi", "/dapi/v1"),
            "dapiPrivate": rest("dapi", "/dapi/v1"),
            "dapiPrivateV2": rest("dapi", "/dapi/v2"),
            "dapiData": rest("dapi", "/futures/data"),
            "eapiPublic": rest("eapi", "/eapi/v1"),
            "eapiPrivate": rest("eapi", "/eapi/v1"),
            "papi": rest("papi", "/papi/v1"),
            "papiV2": rest("papi", "/papi/v2"),
            # ccxt.pro tells spot from futures streams by "/stream" in the URL (is_spot_url), and rewrites a
            # linear URL ending in "/ws" to ".../public/ws" and ".../private/ws?listenKey=".
            "ws": {
                "spot": f"{ws}/stream/ws",
                "margin": f"{ws}/stream/ws",
                "linear": f"{ws}/fstream/ws",
                "inverse": f"{ws}/dstream/ws",
                "stock": f"{ws}/nbstream/equity/ws",
                "option": f"{ws}/eoptions/public/ws",
                "optionMarket": f"{ws}/eoptions/market/ws",
                "optionPrivate": f"{ws}/eoptions/private/ws",
                "papi": f"{ws}/pm/ws",
                "ws-api": {
                    "spot": f"{ws}/ws-api/v3",
                    "linear": f"{ws}/ws-fapi/v1",
                    "inverse": f"{ws}/ws-dapi/v1",
                },
            },
        }

    def ccxt_config(self, exchange_id: str, *, credentials: bool = False) -> dict[str, Any]:
        """Constructor config for ccxt's `binance` / `binanceusdm` against this emulator, over TLS so that
        ccxt raises exactly the exceptions it raises against Binance. Credentials only if asked (in-process
        use); the HTTP control endpoint never includes the secret."""
        if self.tls_port is None or self.cafile is None:
            raise RuntimeError("ccxt_config needs the TLS listener (serve_emulator(..., tls_port=0))")
        config: dict[str, Any] = {
            "urls": {"api": self.ccxt_urls(exchange_id, tls=True)},
            "hostname": f"{URL_LABEL}@{self._authority(self.tls_port)}",
            "cafile": str(self.cafile),
            "options": {"fetchCurrencies": False, "fetchMargins": False},
        }
        if credentials:
            config["apiKey"] = self.api_key
            config["secret"] = self._secret
        return config

    # --- lifecycle ---

    async def start(
        self, app: web.Application, host: str = DEFAULT_HOST, port: int = 0, tls_port: int | None = 0
    ) -> None:
        """Serve `app` (the REST and websocket routes `_server.py` built for this emulator)."""
        self.host = host
        self.closing.clear()
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        self.port = _bound_port(site)
        if tls_port is not None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="legguard-emulator-"))
            cert, key = write_self_signed_cert(self._tmpdir, host)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            tls_site = web.TCPSite(runner, host, tls_port, ssl_context=context)
            await tls_site.start()
            self.tls_port = _bound_port(tls_site)
            self.cafile = cert
        if self.scheduler.autoclock:
            self._ticker = asyncio.create_task(self._autoclock_loop())

    async def aclose(self) -> None:
        self.closing.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with suppress(asyncio.CancelledError):
                await self._ticker
        await self.hub.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


# --- helpers ------------------------------------------------------------------------------------------


def reject_error(market: Market, exc: OrderRejected) -> w.WireError:
    """The Binance error for an engine rejection, per market (spot and USDⓈ-M use different codes)."""
    spot = market.kind is MarketKind.SPOT
    if exc.reason is RejectReason.POST_ONLY_CROSS:
        return w.SPOT_POST_ONLY if spot else w.PERP_POST_ONLY
    if exc.reason is RejectReason.INSUFFICIENT_FUNDS:
        return w.SPOT_BALANCE if spot else w.PERP_MARGIN
    if exc.reason is RejectReason.REDUCE_ONLY_REJECTED:
        return w.SPOT_REDUCE_ONLY if spot else w.PERP_REDUCE_ONLY
    detail = exc.detail
    if exc.reason is RejectReason.INVALID_ORDER:
        if "tick size" in detail or ("price" in detail and "> 0" in detail):
            return w.SPOT_PRICE_FILTER if spot else w.PERP_TICK
        if "step size" in detail:
            return w.SPOT_LOT_SIZE if spot else w.PERP_STEP
        if "min qty" in detail:
            return w.SPOT_LOT_SIZE if spot else w.PERP_MIN_QTY
        if "min notional" in detail:
            return w.SPOT_MIN_NOTIONAL if spot else w.perp_min_notional(market.min_notional)
        if "reduce_only" in detail:
            return w.SPOT_REDUCE_ONLY
    return w.INTERNAL


def _with_status(update: OrderUpdate, status: OrderStatus) -> OrderUpdate:
    import dataclasses

    return dataclasses.replace(update, status=status)


def _flat(now_ms: int, price: Decimal) -> Candle:
    return Candle(now_ms, price, price, price, price)


def _s(value: Decimal) -> str:
    return format(value, "f")


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound port only here when port=0
    assert server is not None and hasattr(server, "sockets")
    port: int = server.sockets[0].getsockname()[1]
    return port


def write_self_signed_cert(directory: Path, host: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for `host` (plus localhost / 127.0.0.1 / ::1): cert and key paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legguard emulator")])
    alt: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) not in ("127.0.0.1", "::1"):
            alt.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "emulator-cert.pem", directory / "emulator-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path
