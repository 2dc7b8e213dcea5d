"""`SimVenue`: the in-process simulated exchange (spot and USDⓈ-M perp of one venue) behind the `Venue`
protocol — the matching engine fed by the market generator, one-way latency with seeded jitter, and fault
injection. All time is trio's, so a whole session runs deterministically under `MockClock`.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import trio

from legguard.adapters._venue import ArmedOrder, FundingPayment, FundingRate
from legguard.adapters.market._generator import (
    RECORDED_DEPTH_DIR,
    DepthReplay,
    GeneratorConfig,
    MarketGenerator,
    TradePrint,
)
from legguard.adapters.market._matching import MSG_BALANCE, MSG_MARGIN, MSG_POST_ONLY, MatchingEngine
from legguard.domain import (
    Balance,
    BookSnapshot,
    MarginAccount,
    Market,
    MarketKind,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
    OutcomeUnknown,
    RejectReason,
    StreamDisconnected,
    VenueError,
)

# fault name -> the keyword parameters it accepts (besides `symbol` and `count`)
FAULTS: Mapping[str, frozenset[str]] = {
    "reject": frozenset({"reason", "detail"}),
    "postonly_cross": frozenset(),
    "partial_fill": frozenset({"fraction"}),
    "ack_timeout": frozenset(),
    "stream_drop": frozenset({"seconds"}),
    "price_jump": frozenset({"pct"}),
    "liquidation": frozenset({"quantity", "adl"}),
    "stream_lag": frozenset({"seconds", "duration"}),
    "late_landing": frozenset({"seconds"}),
    "outage": frozenset({"seconds"}),
}
# Faults that act once, at once (or at the next tick): `count` makes no sense for them.
_SINGLE_SHOT = frozenset({"stream_drop", "price_jump", "liquidation", "stream_lag", "outage"})

REPLAYED_SYMBOL = "BTC/USDT:USDT"  # the recorded depth is Binance's BTCUSDT perpetual


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that shapes a simulated session; the same config gives the same session."""

    seed: int = 0
    latency_ms: float = 2.0  # one-way mean; 0 = no sleeping at all
    jitter_ms: float = 1.0  # standard deviation of the one-way latency
    tick_interval: float = 0.1  # seconds between market steps
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    markets: Mapping[str, Market] | None = None
    balances: Mapping[str, Decimal] | None = None
    perp_wallet: Decimal = Decimal(1_000_000)
    leverage: int = 5
    # Seed the BTC perp from the recorded Binance depth: its first book is the replayed one, and generated
    # books keep its shape around the moving mid. A directory of depth csv files, or True for the fixtures.
    replay_depth: Path | bool = False
    name: str = "sim"
    # How long after it was sent a request can still be accepted (Binance: the signed timestamp plus
    # recvWindow); a `late_landing` request arriving later is refused. Engines on the sim use this as
    # `deadlines.recv_window`.
    recv_window: float = 2.0
    # Funding: every `funding_interval` seconds (None: never) each perp position pays or receives
    # `position x mark x rate`, the rate being the perp's premium over its spot mid, capped at +-funding_cap.
    funding_interval: float | None = None
    funding_cap: Decimal = Decimal("0.0075")

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SimConfig.{name}: must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.tick_interval, int | float) and 0 < self.tick_interval < math.inf):
            raise ValueError(f"SimConfig.tick_interval: must be > 0 seconds, got {self.tick_interval!r}")
        if self.leverage < 1:
            raise ValueError(f"SimConfig.leverage: must be >= 1, got {self.leverage!r}")


@dataclass(slots=True)
class _Pending:
    name: str
    symbol: str | None  # None: any symbol
    count: int
    params: dict[str, Any]


_DISCONNECT = None  # what the stream channel carries to make `watch_orders` raise StreamDisconnected


class SimVenue:
    """The simulated venue. Create it with `open_sim_venue`, which runs the market in the background."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.name = self.config.name
        cfg = self.config
        self.engine = MatchingEngine(
            cfg.markets, balances=cfg.balances, perp_wallet=cfg.perp_wallet, leverage=cfg.leverage
        )
        gen_config, self._replay = self._with_replay(cfg.generator)
        self.generator = MarketGenerator(self.engine.markets, gen_config, cfg.seed)
        self.faults_injected: Counter[str] = Counter()
        self._latency_rng = random.Random(f"{cfg.seed}:latency")
        self._pending: list[_Pending] = []
        self._jumps: list[tuple[str, float]] = []
        self._flow: list[tuple[str, TradePrint]] = []  # prints priced at the current books, due before the next move
        self._drop_until = -math.inf
        self._lag_until = -math.inf  # stream_lag: the order stream runs `_lag` seconds behind REST until then
        self._lag = 0.0
        self._outage_until = -math.inf  # the venue answers nothing before this (its market goes on)
        self._last_delivery = -math.inf
        self._book_changed = trio.Event()
        self.funding_paid: list[FundingPayment] = []  # every payment booked, oldest first (`fetch_funding`)
        self._next_funding = self.config.funding_interval if self.config.funding_interval else math.inf
        self._pipe_send, self._pipe_recv = trio.open_memory_channel[tuple[float, list[OrderUpdate]]](math.inf)
        self._stream_send, self._stream_recv = trio.open_memory_channel[list[OrderUpdate] | None](math.inf)
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    def _with_replay(self, gen: GeneratorConfig) -> tuple[GeneratorConfig, DepthReplay | None]:
        source = self.config.replay_depth
        if source is False or REPLAYED_SYMBOL not in self.engine.markets:
            return gen, None
        directory = RECORDED_DEPTH_DIR if source is True else Path(source)
        replay = DepthReplay.recorded(directory).replay_all()
        mid = replay.mid()
        if mid is None:
            raise ValueError(f"SimConfig.replay_depth: the depth in {directory} has an empty side")
        tick = self.engine.markets[REPLAYED_SYMBOL].tick_size
        prices = {**gen.prices, "BTC": float(mid) / (1 + gen.basis_mean)}
        shapes = {**gen.shapes, REPLAYED_SYMBOL: replay.shape(tick, levels=gen.levels)}
        return replace(gen, prices=prices, shapes=shapes), replay

    # --- lifecycle --------------------------------------------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self.config.funding_interval:
                # The first funding time is one interval after the venue opens, on whatever clock runs it (a
                # real trio clock does not start at 0: counted from 0, every tick was a funding time).
                self._next_funding = trio.current_time() + self.config.funding_interval
            self._step(0.0)  # books exist before the first caller looks
            if self._replay is not None:
                bids, asks = self._replay.levels()
                if bids and asks and bids[0][0] < asks[0][0]:
                    self.engine.set_book(REPLAYED_SYMBOL, bids, asks, trio.current_time())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._drive)
                nursery.start_soon(self._deliver)
                task_status.started()

    async def aclose(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        await trio.lowlevel.checkpoint()

    async def _drive(self) -> None:
        interval = self.config.tick_interval
        deadline = trio.current_time()
        while True:
            deadline += interval  # sleep_until, so the market does not drift with scheduling delays
            await trio.sleep_until(deadline)
            self._step(interval)

    def _step(self, dt: float) -> None:
        now = trio.current_time()
        for base, pct in self._jumps:
            self.generator.jump(base, pct)
            self.faults_injected["price_jump"] += 1
        self._jumps.clear()
        # The trade flow of the interval that just ended, against the book that stood during it, then the move.
        # Our resting orders keep their queue position: they fill once the volume ahead of them has traded.
        for symbol, trade in self._flow:
            self.engine.print_trade(symbol, trade.aggressor, trade.price, trade.quantity, now)
        self._flow = []
        for tick in self.generator.step(dt):
            self.engine.set_book(tick.symbol, tick.bids, tick.asks, now)
            self._flow.extend((tick.symbol, trade) for trade in tick.trades)
        self._publish(self.engine.drain_updates())
        if now >= self._next_funding and self.config.funding_interval:
            self._next_funding += self.config.funding_interval
            self.settle_funding()
        self._book_changed.set()
        self._book_changed = trio.Event()

    # --- funding ------------------------------------------------------------------------------------------

    def funding_rate(self, symbol: str) -> Decimal:
        """The perp's rate now: its mark's premium over the spot mid of the same base, capped."""
        perp = self.engine.markets[symbol]
        spot = next((m.symbol for m in self.engine.markets.values()
                     if m.kind is MarketKind.SPOT and m.base == perp.base), None)  # fmt: skip
        mark, index = self.engine.mark_price(symbol), self.engine.mid(spot) if spot else None
        if mark is None or not index:
            return Decimal(0)
        cap = self.config.funding_cap
        return max(-cap, min(cap, ((mark - index) / index).quantize(Decimal("0.00000001"))))

    def settle_funding(self, rates: Mapping[str, Decimal] | None = None) -> list[FundingPayment]:
        """A funding time now: every perp position pays or receives at `rates` (default: `funding_rate`)."""
        time_ms = int(trio.current_time() * 1000)
        paid: list[FundingPayment] = []
        for symbol, market in self.engine.markets.items():
            if market.kind is not MarketKind.LINEAR:
                continue
            rate = rates[symbol] if rates is not None and symbol in rates else self.funding_rate(symbol)
            amount = self.engine.settle_funding(symbol, rate)
            if amount != 0:
                paid.append(FundingPayment(symbol, amount, time_ms, f"sim-funding-{len(self.funding_paid) + 1}"))
                self.funding_paid.append(paid[-1])
        return paid

    async def fetch_funding_rate(self, symbol: str) -> FundingRate:
        """The perp's rate now (`funding_rate`), which is also what the sim predicts for later intervals (its
        rate has no averaging), and the next funding time in trio milliseconds (None: funding is off)."""
        await self._reach("funding")
        market = self.engine.markets.get(symbol)
        if market is None or market.kind is not MarketKind.LINEAR:
            raise VenueError(f"funding rate: {symbol} is not a perp market")
        rate = self.funding_rate(symbol)
        interval = self.config.funding_interval
        nxt = None if not interval or math.isinf(self._next_funding) else round(self._next_funding * 1000)
        out = FundingRate(symbol, rate, rate, nxt, round(trio.current_time() * 1000), interval or None)
        await self._one_way()
        return out

    async def fetch_funding(self, since_ms: int | None = None) -> list[FundingPayment]:
        await self._reach("funding")
        out = [p for p in self.funding_paid if since_ms is None or p.time_ms >= since_ms]
        await self._one_way()
        return out

    # --- latency and the order stream ---------------------------------------------------------------------

    def _latency(self) -> float:
        cfg = self.config
        if cfg.latency_ms == 0:
            return 0.0
        return max(0.0, self._latency_rng.gauss(cfg.latency_ms, cfg.jitter_ms)) / 1000

    async def _one_way(self) -> None:
        delay = self._latency()
        if delay > 0:
            await trio.sleep(delay)

    @property
    def down(self) -> bool:
        """Inside an `outage`: no request reaches the venue and its streams refuse to connect."""
        return trio.current_time() < self._outage_until

    async def _reach(self, what: str) -> None:
        """One way to the venue; raise as a refused connection does if it is down (nothing reaches it)."""
        await self._one_way()
        if self.down:
            await self._one_way()
            raise OutcomeUnknown(f"{what}: cannot connect to the simulated venue (outage)")

    def _publish(self, batch: list[OrderUpdate]) -> None:
        """Send order updates down the user-data stream: they arrive one latency later, in order."""
        if not batch:
            return
        now = trio.current_time()
        delay = self._latency()
        if now < self._lag_until:
            delay += self._lag
        if delay == 0 and self._last_delivery <= now:
            self._arrive(batch)
            return
        # A stream is ordered: a batch never overtakes the previous one, whatever its own jitter.
        self._last_delivery = max(self._last_delivery, now + delay)
        self._pipe_send.send_nowait((self._last_delivery, batch))

    def _arrive(self, batch: list[OrderUpdate]) -> None:
        if trio.current_time() < self._drop_until:
            return  # the stream is down: lost (fetch_order still tells the truth)
        self._stream_send.send_nowait(batch)

    async def _deliver(self) -> None:
        async for at, batch in self._pipe_recv:
            await trio.sleep_until(at)
            self._arrive(batch)

    # --- Venue: market data ---------------------------------------------------------------------------

    async def load_markets(self) -> Mapping[str, Market]:
        await self._reach("markets")
        markets = dict(self.engine.markets)
        await self._one_way()
        return markets

    async def fetch_order_book(self, symbol: str, limit: int = 20) -> BookSnapshot:
        self._known(symbol)
        await self._reach(f"book {symbol}")
        snap = self.engine.book(symbol, limit)
        await self._one_way()
        return snap

    async def watch_order_book(self, symbol: str) -> BookSnapshot:
        """The book as of the next market step, one latency later."""
        self._known(symbol)
        await self._book_changed.wait()
        if self.down:
            await self._one_way()
            raise StreamDisconnected(f"book stream {symbol}: the simulated venue is down (outage)")
        snap = self.engine.book(symbol)
        await self._one_way()
        return snap

    # --- Venue: orders --------------------------------------------------------------------------------

    def arm(self, request: OrderRequest) -> ArmedOrder:
        """Filter checks only (symbol, tick, step, min qty, min notional): cheap, no state touched."""
        self.engine.validate(request)
        return ArmedOrder(request)

    def release(self, armed: Sequence[ArmedOrder]) -> None:
        """Take the armed orders now, back to back and without yielding, as `CcxtVenue.release` writes them on
        the wire: each one's arrival at the matching engine (one way later) is set here, from the moment it
        left, so `fire` only awaits the answer. Matching and the venue's faults happen at that arrival, in
        `fire`, as before."""
        now = trio.current_time()
        for a in armed:
            if a.payload is None:
                a.payload = now + self._latency()  # trio time it reaches the venue (a float: the sim's payload)

    async def fire(self, armed: ArmedOrder) -> OrderUpdate:
        request = armed.request
        cid, symbol = request.client_order_id, request.symbol
        arrival = armed.payload if type(armed.payload) is float else None  # released: it left already
        if self.config.latency_ms == 0:
            # Nothing else yields at zero latency: the request still leaves its caller before the venue matches
            # it, so an order released with it (the package's other leg) reaches the venue first, as on a wire,
            # instead of waiting for this one's matching and for its answer to be stepped.
            await trio.lowlevel.checkpoint()
        late = self._take("late_landing", symbol)
        if late is not None:
            # The request reaches the matching engine only after the client has given up on it: the client
            # sees a gateway error at once, the order is placed `seconds` later (inside its recvWindow).
            self.faults_injected["late_landing"] += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._land_late, request, float(late.params.get("seconds", 1.5)))
            await self._one_way()
            raise VenueError(f"{cid}: simulated gateway timeout; the request may still be executed")
        if arrival is None:
            await self._reach(f"place {cid}")
        else:
            if arrival > trio.current_time():
                await trio.sleep_until(arrival)
            if self.down:
                await self._one_way()
                raise OutcomeUnknown(f"place {cid}: cannot connect to the simulated venue (outage)")
        now = trio.current_time()
        reject = self._take("reject", symbol)
        if reject is not None:
            self.faults_injected["reject"] += 1
            reason = RejectReason(reject.params.get("reason", RejectReason.INSUFFICIENT_FUNDS))
            detail = reject.params.get("detail") or self._reject_detail(symbol, reason)
            await self._one_way()
            raise OrderRejected(cid, reason, detail)
        if request.post_only and self._take("postonly_cross", symbol) is not None:
            self.faults_injected["postonly_cross"] += 1
            await self._one_way()
            raise OrderRejected(cid, RejectReason.POST_ONLY_CROSS, MSG_POST_ONLY)
        try:
            ack = self.engine.place(request, now)
        except VenueError:
            await self._one_way()
            raise
        if ack.status is OrderStatus.OPEN:
            self._maybe_cap(ack)
        self._publish(self.engine.drain_updates())
        if self._take("ack_timeout", symbol) is not None:
            self.faults_injected["ack_timeout"] += 1
            await trio.sleep_forever()  # the order lives; its acknowledgement never comes back
        await self._one_way()
        return ack

    async def _land_late(self, request: OrderRequest, seconds: float) -> None:
        await trio.sleep(seconds)
        if seconds > self.config.recv_window:
            return  # outside its recvWindow: refused (-1021), and nobody is listening for the answer
        try:
            ack = self.engine.place(request, trio.current_time())
        except VenueError:
            return  # refused when it finally arrived: as if it never had
        if ack.status is OrderStatus.OPEN:
            self._maybe_cap(ack)
        self._publish(self.engine.drain_updates())

    def _reject_detail(self, symbol: str, reason: RejectReason) -> str:
        if reason is RejectReason.INSUFFICIENT_FUNDS:
            kind = self.engine.markets[symbol].kind if symbol in self.engine.markets else MarketKind.LINEAR
            return MSG_MARGIN if kind is MarketKind.LINEAR else MSG_BALANCE
        return f"simulated rejection ({reason})"

    def _maybe_cap(self, ack: OrderUpdate) -> None:
        pending = self._take("partial_fill", ack.symbol, peek=True)
        if pending is None:
            return
        step = self.engine.markets[ack.symbol].step_size
        fraction = Decimal(str(pending.params.get("fraction", 0.4)))
        cap = max(step, (ack.amount * fraction / step).to_integral_value(ROUND_DOWN) * step, ack.filled)
        if cap >= ack.amount:
            return  # an order of one step cannot fill partially: wait for the next resting order
        self._take("partial_fill", ack.symbol)
        self.engine.cap_fills(ack.symbol, ack.client_order_id, cap)
        self.faults_injected["partial_fill"] += 1

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderUpdate:
        await self._reach(f"cancel {client_order_id}")
        try:
            update = self.engine.cancel(symbol, client_order_id, trio.current_time())
        except OrderNotFound:
            await self._one_way()
            raise
        self._publish(self.engine.drain_updates())
        await self._one_way()
        return update

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderUpdate:
        await self._reach(f"query {client_order_id}")
        try:
            update = self.engine.get(symbol, client_order_id)
        except OrderNotFound:
            await self._one_way()
            raise
        await self._one_way()
        return update

    async def fetch_open_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        await self._reach("open orders")
        orders = self.engine.open_orders(symbol)
        await self._one_way()
        return orders

    async def fetch_orders(self, symbol: str) -> list[OrderUpdate]:
        """Every order of `symbol` the venue knows, open and closed (recovery looks for unjournaled fills)."""
        await self._reach(f"orders {symbol}")
        orders = self.engine.all_orders(symbol)
        await self._one_way()
        return orders

    async def watch_orders(self) -> list[OrderUpdate]:
        """The next non-empty batch of order updates: ours, and the venue's own (liquidation, ADL)."""
        if self.down:
            # Reconnecting fails for as long as the venue is down, a little later each time.
            await trio.sleep(min(0.5, self._outage_until - trio.current_time()))
            raise StreamDisconnected("simulated user-data stream: cannot reconnect (outage)")
        batch = await self._stream_recv.receive()
        if batch is None:  # _DISCONNECT
            raise StreamDisconnected("simulated user-data stream dropped; updates may have been missed")
        return batch

    async def fetch_balance(self) -> Mapping[str, Balance]:
        await self._reach("balance")
        balances = self.engine.balances()
        await self._one_way()
        return balances

    async def fetch_positions(self) -> Mapping[str, Decimal]:
        await self._reach("positions")
        positions = self.engine.positions()
        await self._one_way()
        return positions

    async def transfer(self, asset: str, amount: Decimal, *, to_perp: bool) -> None:
        await self._one_way()
        try:
            self.engine.transfer(asset, amount, to_perp=to_perp)
        except ValueError as exc:
            raise VenueError(f"transfer refused: {exc}") from None
        await self._one_way()

    async def fetch_margin(self) -> MarginAccount:
        await self._one_way()
        account = self.engine.margin_account()
        await self._one_way()
        return account

    # --- fault injection --------------------------------------------------------------------------------

    def inject(self, fault: str, *, symbol: str | None = None, count: int = 1, **params: Any) -> None:
        """Arrange for something to go wrong; see FAULTS for the names and their parameters.

        reject          next `count` orders [on symbol] are rejected (default INSUFFICIENT_FUNDS; `reason`,
                        `detail` override)
        postonly_cross  next `count` post-only orders [on symbol] are rejected POST_ONLY_CROSS
        partial_fill    next `count` resting orders [on symbol] fill only `fraction` (0.4), then no more
        ack_timeout     next `count` orders [on symbol] are placed but `fire` never returns
        stream_drop     watch_orders raises StreamDisconnected once; updates for `seconds` (0.5) are lost
        price_jump      spot and perp of symbol's base jump by `pct` percent (0.5, signed) at the next tick
        liquidation     the venue closes `quantity` (default all) of the perp position on symbol, now;
                        `adl=True` for an auto-deleverage instead
        stream_lag      the order stream runs `seconds` (0.3) behind REST for `duration` (5.0) seconds:
                        positions and fetch_order show what the stream reports only later
        late_landing    next `count` orders [on symbol] answer a gateway error at once but reach the
                        matching engine `seconds` (1.5) later and are placed then (inside recvWindow)
        outage          for `seconds` (10) nothing reaches the venue: every request fails as a refused
                        connection does (OutcomeUnknown, nothing placed), the order stream drops now and
                        cannot reconnect, updates meanwhile are lost; the venue keeps its books, orders and
                        balances, and its market goes on (resting orders can fill meanwhile)
        """
        if fault not in FAULTS:
            raise ValueError(f"inject: unknown fault {fault!r}; valid: {', '.join(sorted(FAULTS))}")
        unknown = set(params) - FAULTS[fault]
        if unknown:
            allowed = ", ".join(sorted(FAULTS[fault])) or "none"
            raise ValueError(f"inject({fault!r}): unknown parameter(s) {sorted(unknown)}; allowed: {allowed}")
        if symbol is not None:
            self._known(symbol)
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"inject({fault!r}): count must be an int >= 1, got {count!r}")
        if fault in _SINGLE_SHOT and count != 1:
            raise ValueError(f"inject({fault!r}): acts once; count must be 1, got {count!r}")
        now = trio.current_time()
        if fault == "reject" and "reason" in params:
            try:
                params["reason"] = RejectReason(params["reason"])
            except ValueError:
                valid = ", ".join(r.value for r in RejectReason)
                raise ValueError(f"inject('reject'): reason {params['reason']!r} is not one of {valid}") from None
        if fault == "partial_fill":
            fraction = float(params.get("fraction", 0.4))
            if not 0 < fraction < 1:
                raise ValueError(f"inject('partial_fill'): fraction must be in (0, 1), got {fraction!r}")
        if fault == "stream_drop":
            seconds = float(params.get("seconds", 0.5))
            if not 0 <= seconds < math.inf:
                raise ValueError(f"inject('stream_drop'): seconds must be >= 0, got {seconds!r}")
            self._drop_until = max(self._drop_until, now + seconds)
            self._stream_send.send_nowait(_DISCONNECT)
            self.faults_injected["stream_drop"] += 1
        elif fault == "outage":
            seconds = float(params.get("seconds", 10.0))
            if not 0 < seconds < math.inf:
                raise ValueError(f"inject('outage'): seconds must be > 0, got {seconds!r}")
            self._outage_until = max(self._outage_until, now + seconds)
            self._drop_until = max(self._drop_until, self._outage_until)
            self._stream_send.send_nowait(_DISCONNECT)
            self.faults_injected["outage"] += 1
        elif fault == "price_jump":
            base = self._base_of(fault, symbol)
            pct = float(params.get("pct", 0.5))
            if not -50 < pct < 100:
                raise ValueError(f"inject('price_jump'): pct is a percentage in (-50, 100), got {pct!r}")
            self._jumps.append((base, pct))
        elif fault == "liquidation":
            self._liquidate(symbol, params, now)
        elif fault == "stream_lag":
            lag, duration = float(params.get("seconds", 0.3)), float(params.get("duration", 5.0))
            if not (0 <= lag < math.inf and 0 <= duration < math.inf):
                raise ValueError(f"inject('stream_lag'): seconds and duration must be >= 0, got {lag!r}, {duration!r}")
            self._lag, self._lag_until = lag, now + duration
            self.faults_injected["stream_lag"] += 1
        else:
            self._pending.append(_Pending(fault, symbol, count, params))

    def _liquidate(self, symbol: str | None, params: dict[str, Any], now: float) -> None:
        if symbol is None or self.engine.markets[symbol].kind is not MarketKind.LINEAR:
            raise ValueError(f"inject('liquidation'): symbol must be a perp market, got {symbol!r}")
        position = self.engine.positions()[symbol]
        if position == 0:
            return  # nothing to liquidate: no effect, not counted
        quantity = Decimal(str(params["quantity"])) if "quantity" in params else abs(position)
        if not quantity > 0:
            raise ValueError(f"inject('liquidation'): quantity must be > 0, got {quantity!r}")
        origin = OrderOrigin.ADL if params.get("adl") else OrderOrigin.LIQUIDATION
        self.engine.liquidate(symbol, quantity, now, origin)
        self._publish(self.engine.drain_updates())
        self.faults_injected["liquidation"] += 1

    def _base_of(self, fault: str, symbol: str | None) -> str:
        if symbol is None:
            raise ValueError(f"inject({fault!r}): needs symbol=")
        base = self.engine.markets[symbol].base
        if base not in self.generator.bases:
            raise ValueError(f"inject({fault!r}): {base} is not simulated; simulated: {self.generator.bases}")
        return base

    def _take(self, name: str, symbol: str, *, peek: bool = False) -> _Pending | None:
        """The first pending fault `name` that applies to `symbol`, consuming one of its count."""
        for pending in self._pending:
            if pending.name == name and pending.symbol in (None, symbol):
                if not peek:
                    pending.count -= 1
                    if pending.count == 0:
                        self._pending.remove(pending)
                return pending
        return None

    def _known(self, symbol: str) -> None:
        if symbol not in self.engine.markets:
            raise ValueError(f"symbol {symbol!r} is not a market of this venue: {sorted(self.engine.markets)}")


@asynccontextmanager
async def open_sim_venue(config: SimConfig | None = None) -> AsyncIterator[SimVenue]:
    """A running simulated venue: the market moves every tick_interval until the block exits."""
    venue = SimVenue(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(venue._run)
        try:
            yield venue
        finally:
            nursery.cancel_scope.cancel()
