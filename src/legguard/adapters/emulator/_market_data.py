"""The emulator's public market data, consistent with its own trades: a tape of trades per market (the
simulated participants' prints and our own fills), 1-minute candles (a seeded backfilled history before
the start, then built from the tape), mark and index price candles sampled from the books, 24 h statistics,
open interest, and funding (a rate that follows the simulated premium, settled at each funding time).

Everything here is deterministic from the seed and the emulator's clock; the REST and stream handlers only
format it (`_wire.py` shapes).
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from legguard.domain import ZERO, Market, MarketKind

MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS
BACKFILL_MINUTES = 2 * 24 * 60  # two days of 1m history before the start: a full 24 h window and 1d klines
TRADES_KEPT = 5_000  # per market: what /trades and /aggTrades can reach back to
INTEREST_RATE = Decimal("0.0001")  # Binance's per-interval interest component
FUNDING_CLAMP = Decimal("0.0005")  # F = P + clamp(I - P, -0.05 %, +0.05 %)
FUNDING_CAP = Decimal("0.0075")  # |F| <= 0.75 %, as for most USDⓈ-M symbols
PREMIUM_QUANTUM = Decimal("0.00000001")
FUNDING_HISTORY_BACKFILL = 30  # settled rates before the start (GET /fapi/v1/fundingRate)

# Kline intervals Binance serves, in milliseconds; 1w opens on Monday 00:00 UTC (epoch day 0 is a Thursday).
INTERVALS: Mapping[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": 7 * DAY_MS,
}
_WEEK_OFFSET_MS = 4 * DAY_MS


def bucket_open(t_ms: int, interval_ms: int) -> int:
    offset = _WEEK_OFFSET_MS if interval_ms == INTERVALS["1w"] else 0
    return (t_ms - offset) // interval_ms * interval_ms + offset


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade: `buyer_maker` is Binance's `isBuyerMaker` / `m` (the seller was the taker)."""

    id: int
    price: Decimal
    quantity: Decimal
    time_ms: int
    buyer_maker: bool


@dataclass(slots=True)
class Candle:
    open_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = ZERO
    quote_volume: Decimal = ZERO
    count: int = 0
    taker_buy_volume: Decimal = ZERO
    taker_buy_quote: Decimal = ZERO
    first_id: int = -1
    last_id: int = -1

    def add(self, price: Decimal, quantity: Decimal, *, taker_buy: bool, trade_id: int | None) -> None:
        self.high, self.low, self.close = max(self.high, price), min(self.low, price), price
        self.volume += quantity
        self.quote_volume += price * quantity
        self.count += 1
        if taker_buy:
            self.taker_buy_volume += quantity
            self.taker_buy_quote += price * quantity
        if trade_id is not None:
            if self.first_id < 0:
                self.first_id = trade_id
            self.last_id = trade_id

    def merged(self, other: Candle) -> Candle:
        return Candle(
            self.open_ms,
            self.open,
            max(self.high, other.high),
            min(self.low, other.low),
            other.close,
            self.volume + other.volume,
            self.quote_volume + other.quote_volume,
            self.count + other.count,
            self.taker_buy_volume + other.taker_buy_volume,
            self.taker_buy_quote + other.taker_buy_quote,
            self.first_id if self.first_id >= 0 else other.first_id,
            other.last_id if other.last_id >= 0 else self.last_id,
        )


@dataclass(slots=True)
class CandleSeries:
    """1-minute candles by open time; a minute without data is a flat candle at the previous close."""

    minutes: dict[int, Candle] = field(default_factory=dict)
    first_ms: int | None = None
    last_close: Decimal | None = None

    def update(self, t_ms: int, price: Decimal, quantity: Decimal, *, taker_buy: bool, trade_id: int | None) -> None:
        minute = bucket_open(t_ms, MINUTE_MS)
        candle = self.minutes.get(minute)
        if candle is None:
            candle = self.minutes[minute] = Candle(minute, price, price, price, price)
            if self.first_ms is None:
                self.first_ms = minute
        candle.add(price, quantity, taker_buy=taker_buy, trade_id=trade_id)
        self.last_close = price

    def put(self, candle: Candle) -> None:
        self.minutes[candle.open_ms] = candle
        self.first_ms = candle.open_ms if self.first_ms is None else min(self.first_ms, candle.open_ms)
        self.last_close = candle.close

    def one_minute(self, start_ms: int, end_ms: int) -> Iterator[Candle]:
        """Every minute with open time in [start_ms, end_ms], gaps filled flat at the previous close."""
        if self.first_ms is None:
            return
        minute = max(bucket_open(start_ms, MINUTE_MS), self.first_ms)
        previous: Decimal | None = None
        for earlier in range(minute - MINUTE_MS, self.first_ms - 1, -MINUTE_MS):  # the close before the window
            if earlier in self.minutes:
                previous = self.minutes[earlier].close
                break
        while minute <= end_ms:
            candle = self.minutes.get(minute)
            if candle is None:
                if previous is None:
                    minute += MINUTE_MS
                    continue
                candle = Candle(minute, previous, previous, previous, previous)
            previous = candle.close
            yield candle
            minute += MINUTE_MS

    def klines(self, interval: str, start_ms: int | None, end_ms: int | None, limit: int, now_ms: int) -> list[Candle]:
        """Binance's selection: from startTime forward, else the `limit` candles ending at endTime (or now)."""
        step = INTERVALS[interval]
        if self.first_ms is None:
            return []
        last_open = bucket_open(min(end_ms if end_ms is not None else now_ms, now_ms), step)
        if start_ms is not None:
            first_open = bucket_open(max(start_ms, self.first_ms), step)
            if first_open < start_ms:
                first_open += step
            last_open = min(last_open, first_open + (limit - 1) * step)
        else:
            first_open = max(bucket_open(self.first_ms, step), last_open - (limit - 1) * step)
        out: list[Candle] = []
        current: Candle | None = None
        for candle in self.one_minute(first_open, last_open + step - 1):
            opened = bucket_open(candle.open_ms, step)
            if current is not None and current.open_ms == opened:
                current = current.merged(candle)
                out[-1] = current
                continue
            current = Candle(
                opened,
                candle.open,
                candle.high,
                candle.low,
                candle.close,
                candle.volume,
                candle.quote_volume,
                candle.count,
                candle.taker_buy_volume,
                candle.taker_buy_quote,
                candle.first_id,
                candle.last_id,
            )
            out.append(current)
        return out[-limit:]

    def window(self, start_ms: int, end_ms: int) -> Candle | None:
        """All of [start_ms, end_ms] folded into one candle (24 h statistics)."""
        folded: Candle | None = None
        for candle in self.one_minute(start_ms, end_ms):
            folded = candle if folded is None else folded.merged(candle)
        return folded

    def close_before(self, t_ms: int) -> Decimal | None:
        if self.first_ms is None:
            return None
        for minute in range(bucket_open(t_ms, MINUTE_MS) - MINUTE_MS, self.first_ms - 1, -MINUTE_MS):
            if minute in self.minutes:
                return self.minutes[minute].close
        return None


@dataclass(slots=True)
class Tape:
    """One market's public trades and candles."""

    market: Market
    trades: deque[Trade] = field(default_factory=lambda: deque(maxlen=TRADES_KEPT))
    candles: CandleSeries = field(default_factory=CandleSeries)
    next_id: int = 1


@dataclass(frozen=True, slots=True)
class FundingEvent:
    symbol: str  # unified
    rate: Decimal
    time_ms: int
    mark: Decimal


class MarketData:
    """Tapes for every market, mark / index candles for every perp, open interest and funding."""

    def __init__(self, markets: Iterable[Market], seed: int, funding_interval: float) -> None:
        if not funding_interval > 0:
            raise ValueError(f"funding_interval: must be > 0 seconds, got {funding_interval}")
        self.seed = seed
        self.funding_interval_ms = round(funding_interval * 1000)
        # Live trade ids of each market start here; the backfill numbers its trades just below.
        markets = list(markets)
        self._tapes: dict[str, Tape] = {m.symbol: Tape(m, next_id=_first_live_id(m)) for m in markets}
        self._marks: dict[str, CandleSeries] = {}  # perp symbol -> mark price candles
        self._indexes: dict[str, CandleSeries] = {}  # perp symbol -> index price candles
        self._premium_index: dict[str, CandleSeries] = {}  # perp symbol -> (mark - index) / index candles
        self.premiums: dict[str, list[Decimal]] = {}  # perp symbol -> premium samples this funding interval
        self.funding_override: dict[str, Decimal] = {}  # perp symbol -> the rate settled at the next times
        self._funding_history: list[FundingEvent] = []
        self._base_open_interest: dict[str, Decimal] = {}
        for m in markets:
            if m.kind is MarketKind.LINEAR:
                self.premiums[m.symbol] = []
        self._pending: tuple[int, Mapping[str, Decimal], Mapping[str, Decimal]] | None = None

    # --- what the REST and stream handlers read (the history is generated on first use) ---

    @property
    def tapes(self) -> dict[str, Tape]:
        self._ensure()
        return self._tapes

    @property
    def marks(self) -> dict[str, CandleSeries]:
        self._ensure()
        return self._marks

    @property
    def indexes(self) -> dict[str, CandleSeries]:
        self._ensure()
        return self._indexes

    @property
    def premium_index(self) -> dict[str, CandleSeries]:
        self._ensure()
        return self._premium_index

    @property
    def funding_history(self) -> list[FundingEvent]:
        self._ensure()
        return self._funding_history

    def _ensure(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._backfill(*pending)

    # --- start ---

    def backfill(self, start_ms: int, mids: Mapping[str, Decimal], premiums: Mapping[str, Decimal]) -> None:
        """Seeded history before `start_ms`: one random walk per base asset ending at today's spot mid, the
        perp at the current premium; candle volumes and trade counts drawn, trade ids numbered up to the live
        ones. Generated on first use (most emulators in tests never ask), identical whenever that is."""
        self._pending = (start_ms, dict(mids), dict(premiums))

    def _backfill(self, start_ms: int, mids: Mapping[str, Decimal], premiums: Mapping[str, Decimal]) -> None:
        start_minute = bucket_open(start_ms, MINUTE_MS)
        by_base: dict[str, list[Market]] = {}
        for tape in self._tapes.values():
            by_base.setdefault(tape.market.base, []).append(tape.market)
        for base, markets in sorted(by_base.items()):
            rng = random.Random(self.seed * 1_000_003 + zlib.crc32(base.encode()))
            spot = next((m for m in markets if m.kind is MarketKind.SPOT), None)
            anchor = mids.get(spot.symbol) if spot is not None else None
            if anchor is None:
                anchor = next((mids[m.symbol] for m in markets if m.symbol in mids), Decimal(100))
            # A walk backwards from the anchor: closes[i] is the close of minute start - (i + 1).
            path = [float(anchor)]
            for _ in range(BACKFILL_MINUTES):
                path.append(path[-1] * math.exp(rng.gauss(0.0, 0.0006)))
            path.reverse()  # path[0] = oldest open, path[-1] = anchor
            for market in markets:
                premium = float(premiums.get(market.symbol, ZERO)) if market.kind is MarketKind.LINEAR else 0.0
                tape = self._tapes[market.symbol]
                usd_per_minute = 2_000_000.0 if market.kind is MarketKind.LINEAR else 600_000.0
                candles: list[Candle] = []
                for i in range(BACKFILL_MINUTES):
                    o, c = path[i] * (1 + premium), path[i + 1] * (1 + premium)
                    wick = abs(rng.gauss(0.0, 0.0003))
                    h, lo = max(o, c) * (1 + wick), min(o, c) * (1 - abs(rng.gauss(0.0, 0.0003)))
                    count = max(1, int(rng.lognormvariate(math.log(300), 0.5)))
                    volume = Decimal(str(rng.lognormvariate(math.log(usd_per_minute), 0.6) / c))
                    volume = volume.quantize(market.step_size, ROUND_HALF_UP)
                    price = [_on_grid(x, market.tick_size) for x in (o, h, lo, c)]
                    vwap = (price[0] + price[3]) / 2
                    buy = (volume * Decimal(str(rng.uniform(0.35, 0.65)))).quantize(market.step_size)
                    candle = Candle(
                        start_minute - (BACKFILL_MINUTES - i) * MINUTE_MS,
                        price[0],
                        max(price),
                        min(price),
                        price[3],
                        volume,
                        (volume * vwap).quantize(Decimal("0.00000001")),
                        count,
                        buy,
                        (buy * vwap).quantize(Decimal("0.00000001")),
                    )
                    candles.append(candle)
                    if market.kind is MarketKind.LINEAR:
                        flat = Candle(candle.open_ms, candle.open, candle.high, candle.low, candle.close, count=60)
                        self._marks.setdefault(market.symbol, CandleSeries()).put(flat)
                        index = [_on_grid(x / (1 + premium), market.tick_size) for x in (o, h, lo, c)]
                        self._indexes.setdefault(market.symbol, CandleSeries()).put(
                            Candle(candle.open_ms, index[0], max(index), min(index), index[3], count=60)
                        )
                        prem = [
                            (p / i - 1).quantize(PREMIUM_QUANTUM, ROUND_HALF_UP)
                            for p, i in zip(price, index, strict=True)
                            if i > 0
                        ] or [ZERO]
                        self._premium_index.setdefault(market.symbol, CandleSeries()).put(
                            Candle(candle.open_ms, prem[0], max(prem), min(prem), prem[-1], count=60)
                        )
                last_id = _first_live_id(market) - 1  # the live trades continue the numbering
                for candle in reversed(candles):
                    candle.first_id, candle.last_id = last_id - candle.count + 1, last_id
                    last_id -= candle.count
                for candle in candles:
                    tape.candles.put(candle)
                if market.kind is MarketKind.LINEAR:
                    self._base_open_interest[market.symbol] = Decimal(
                        str(round(rng.uniform(40_000_000, 90_000_000) / path[-1], 3))
                    ).quantize(market.step_size)
        first_time = self.next_funding_ms(start_ms) - self.funding_interval_ms
        for i in range(FUNDING_HISTORY_BACKFILL, 0, -1):
            when = first_time - (i - 1) * self.funding_interval_ms
            if when >= start_ms:
                continue
            for symbol in sorted(self.premiums):
                rng = random.Random(self.seed * 7 + when + zlib.crc32(symbol.encode()))
                rate = INTEREST_RATE if rng.random() < 0.7 else Decimal(str(round(rng.uniform(-0.0003, 0.0006), 6)))
                mark = self._marks[symbol].close_before(when) or ZERO
                self._funding_history.append(FundingEvent(symbol, rate, when, mark))
        self._funding_history.sort(key=lambda e: (e.time_ms, e.symbol))  # before any settled live

    # --- flow ---

    def record_trade(self, symbol: str, price: Decimal, quantity: Decimal, t_ms: int, *, buyer_maker: bool) -> Trade:
        tape = self._tapes[symbol]
        trade = Trade(tape.next_id, price, quantity, t_ms, buyer_maker)
        tape.next_id += 1
        tape.trades.append(trade)
        tape.candles.update(t_ms, price, quantity, taker_buy=not buyer_maker, trade_id=trade.id)
        return trade

    def sample(self, symbol: str, t_ms: int, mark: Decimal, index: Decimal) -> None:
        """One mark / index observation of a perp (each market step); the premium feeds the funding rate."""
        self._marks.setdefault(symbol, CandleSeries()).update(t_ms, mark, ZERO, taker_buy=False, trade_id=None)
        self._indexes.setdefault(symbol, CandleSeries()).update(t_ms, index, ZERO, taker_buy=False, trade_id=None)
        if index > 0:
            premium = (mark - index) / index
            self.premiums.setdefault(symbol, []).append(premium)
            self._premium_index.setdefault(symbol, CandleSeries()).update(
                t_ms, premium.quantize(PREMIUM_QUANTUM, ROUND_HALF_UP), ZERO, taker_buy=False, trade_id=None
            )

    # --- funding ---

    def next_funding_ms(self, now_ms: int) -> int:
        return (now_ms // self.funding_interval_ms + 1) * self.funding_interval_ms

    def predicted_rate(self, symbol: str) -> Decimal:
        """The rate the next funding time settles at: an override if set, else Binance's formula on the
        average premium observed since the last funding time."""
        if symbol in self.funding_override:
            return self.funding_override[symbol]
        samples = self.premiums.get(symbol) or []
        if not samples:
            return INTEREST_RATE
        premium = sum(samples, ZERO) / len(samples)
        rate = premium + max(-FUNDING_CLAMP, min(FUNDING_CLAMP, INTEREST_RATE - premium))
        rate = max(-FUNDING_CAP, min(FUNDING_CAP, rate))
        return rate.quantize(Decimal("0.00000001"), ROUND_HALF_UP)

    def settle(self, symbol: str, time_ms: int, mark: Decimal) -> FundingEvent:
        event = FundingEvent(symbol, self.predicted_rate(symbol), time_ms, mark)
        self._funding_history.append(event)
        self.premiums[symbol] = []
        return event

    # --- queries ---

    def ticker_window(self, symbol: str, now_ms: int) -> tuple[int, Candle | None, Decimal | None]:
        """The rolling 24 h window (whole minutes: from the first minute starting within the last 24 h): its
        open time, the window as one candle, and the close before it."""
        self._ensure()
        series = self._tapes[symbol].candles
        start = -(-(now_ms - DAY_MS) // MINUTE_MS) * MINUTE_MS
        return start, series.window(start, now_ms), series.close_before(start)

    def last_trade(self, symbol: str) -> Trade | None:
        self._ensure()
        tape = self._tapes[symbol]
        return tape.trades[-1] if tape.trades else None

    def open_interest(self, symbol: str, t_ms: int, position: Decimal) -> Decimal:
        """Everyone's open contracts: a seeded level swinging slowly (a few % over hours) plus our position."""
        self._ensure()
        base = self._base_open_interest.get(symbol, ZERO)
        phase = (zlib.crc32(symbol.encode()) % 1000) / 1000 * 2 * math.pi
        swing = Decimal(str(round(1 + 0.03 * math.sin(t_ms / 3_600_000 + phase), 6)))
        market = self._tapes[symbol].market
        return (base * swing + abs(position)).quantize(market.step_size, ROUND_HALF_UP)


def _first_live_id(m: Market) -> int:
    return 10_000_000 * (1 + zlib.crc32(m.symbol.encode()) % 900)


def _on_grid(value: float, tick: Decimal) -> Decimal:
    return Decimal(round(value / float(tick))) * tick
